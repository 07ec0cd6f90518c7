"""``HOST:PORT`` parsing for ``-s``: the one place that knows the address syntax."""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7070


class AddressError(ValueError):
    """A scheduler address that cannot be used; the message quotes it and says why."""


def _port(text: str, address: str) -> int:
    if not text.isdigit():
        raise AddressError(
            f"bad scheduler address {address!r}: port {text!r} is not a number (use HOST:PORT)"
        )
    port = int(text)
    if not 1 <= port <= 65535:
        raise AddressError(
            f"bad scheduler address {address!r}: port {port} is not between 1 and 65535"
        )
    return port


def parse_address(address: str, *, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Split ``HOST:PORT`` into ``(host, port)``.

    Accepted: ``host:port``, ``host`` (default port), ``:port`` and a bare ``port``
    (local host), ``[v6]:port`` and ``[v6]``. Anything else raises :class:`AddressError`.
    """
    text = address.strip()
    if not text:
        raise AddressError("bad scheduler address '': give HOST:PORT")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise AddressError(f"bad scheduler address {address!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if not host:
            raise AddressError(f"bad scheduler address {address!r}: empty IPv6 host")
        if not rest:
            return host, default_port
        if not rest.startswith(":"):
            raise AddressError(f"bad scheduler address {address!r}: expected ':' after ']'")
        return host, _port(rest[1:], address)
    if text.isdigit():
        return DEFAULT_HOST, _port(text, address)
    if text.count(":") > 1:
        raise AddressError(
            f"bad scheduler address {address!r}: write an IPv6 address as [ADDR]:PORT"
        )
    host, sep, port_text = text.partition(":")
    if any(c.isspace() for c in host) or "/" in host:
        raise AddressError(f"bad scheduler address {address!r}: {host!r} is not a host name")
    if not sep:
        return host, default_port
    return host or DEFAULT_HOST, _port(port_text, address)
