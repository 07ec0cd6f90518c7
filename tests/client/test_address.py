from __future__ import annotations

import pytest

from client.address import AddressError, parse_address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7070", ("127.0.0.1", 7070)),
        ("scheduler.example.com:80", ("scheduler.example.com", 80)),
        ("localhost", ("localhost", 7070)),
        (":9000", ("127.0.0.1", 9000)),
        ("9000", ("127.0.0.1", 9000)),
        ("[::1]:7071", ("::1", 7071)),
        ("[::1]", ("::1", 7070)),
        ("  10.0.0.5:65535 ", ("10.0.0.5", 65535)),
    ],
)
def test_good_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "give HOST:PORT"),
        ("host:", "port '' is not a number"),
        ("host:http", "port 'http' is not a number"),
        ("host:0", "not between 1 and 65535"),
        ("host:70000", "not between 1 and 65535"),
        ("host:-1", "is not a number"),
        ("::1:7070", "[ADDR]:PORT"),
        ("[::1", "missing ']'"),
        ("[::1]7070", "expected ':' after ']'"),
        ("[]:7070", "empty IPv6 host"),
        ("my host:7070", "is not a host name"),
        ("http://host:7070", "[ADDR]:PORT"),
    ],
)
def test_bad_addresses_say_why(text: str, reason: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(text)
    message = str(info.value)
    assert reason in message
    assert message.startswith(f"bad scheduler address {text.strip()!r}")


def test_default_port_can_be_changed() -> None:
    assert parse_address("h", default_port=1234) == ("h", 1234)
