"""Who may connect: tokens, TLS, and the refusal to serve the network unauthenticated."""

from __future__ import annotations

import ipaddress
import ssl

from protocol.auth import AuthConfigError, TokenBook
from scheduler.errors import SchedulerError
from scheduler.settings import SchedulerSettings


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name, or "" (all interfaces): reachable from outside


def load_tokens(settings: SchedulerSettings) -> TokenBook:
    """The accepted tokens; refuses to be a remote shell for anyone on the network."""
    try:
        tokens = TokenBook.load(token=settings.token, token_file=settings.token_file)
    except AuthConfigError as exc:
        raise SchedulerError(str(exc)) from exc
    if not tokens and not settings.insecure and not is_loopback(settings.host):
        raise SchedulerError(
            f"refusing to listen on {settings.host or 'all interfaces'} without a token: anyone "
            "who can connect could run commands as this user. Give --token-file (or "
            "TASKMILL_TOKEN), or --insecure if the network is trusted"
        )
    return tokens


def tls_context(settings: SchedulerSettings) -> ssl.SSLContext | None:
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key or None)
    except (OSError, ssl.SSLError) as exc:
        raise SchedulerError(f"cannot load the TLS certificate {settings.tls_cert}: {exc}") from exc
    return context
