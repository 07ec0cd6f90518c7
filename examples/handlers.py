"""Handlers for the demo workload (`make demo`): register with ``@handler``."""

from __future__ import annotations

import hashlib

from worker import handler


@handler
def add(a: int, b: int) -> int:
    return a + b


@handler("HELLO")
def hello(firstName: str, lastName: str) -> str:
    return f"Hello {firstName} {lastName} !"


@handler
def sha256(text: str, rounds: int = 1000) -> str:
    """A little CPU work: hash ``text`` ``rounds`` times."""
    digest = text.encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()
