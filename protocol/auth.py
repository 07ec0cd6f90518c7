"""Shared-secret authentication by HMAC challenge-response: the secret never crosses the wire.

1. The client's ``hello`` names its key: ``key = key_id(secret)``, a one-way digest
   that lets the server find the secret in its tokens file without learning it from
   the client.
2. The server answers ``hello`` with a fresh random ``challenge``.
3. The client sends ``auth {mac}``, ``mac = HMAC-SHA256(secret, challenge, key)``.
4. The server recomputes it with the secret it holds for that key (compare in
   constant time) and binds the session to the user that token maps to.

A tokens file has one token per line, optionally followed by the user it stands
for (``SECRET ann``); ``#`` starts a comment. A token with a user pins every task
of the session to that user, so one user cannot submit as another.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

MIN_SECRET_LEN = 16


class AuthConfigError(ValueError):
    """The tokens file or secret is unusable; the message names the file and line."""


def key_id(secret: str) -> str:
    return hashlib.sha256(b"taskmill-key-id|" + secret.encode()).hexdigest()[:32]


def new_challenge() -> str:
    return os.urandom(16).hex()


def prove(secret: str, challenge: str, key: str) -> str:
    message = f"taskmill-auth|{challenge}|{key}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Identity:
    key: str
    user: str | None  # None: a shared secret that may act for any user


class TokenBook:
    """The secrets a scheduler accepts, by key id."""

    def __init__(self, entries: dict[str, tuple[str, str | None]] | None = None) -> None:
        self._by_key = entries or {}

    def __bool__(self) -> bool:
        return bool(self._by_key)

    @classmethod
    def load(cls, *, token: str = "", token_file: str = "") -> TokenBook:
        entries: dict[str, tuple[str, str | None]] = {}
        if token:
            _check_secret(token, "TASKMILL_TOKEN")
            entries[key_id(token)] = (token, None)
        if token_file:
            path = Path(token_file).expanduser()
            try:
                lines = path.read_text().splitlines()
            except OSError as exc:
                raise AuthConfigError(f"cannot read token file {path}: {exc.strerror}") from exc
            for number, line in enumerate(lines, 1):
                text = line.split("#", 1)[0].strip()
                if not text:
                    continue
                fields = text.split()
                if len(fields) > 2:
                    raise AuthConfigError(f"{path}: line {number}: expected 'TOKEN [USER]'")
                _check_secret(fields[0], f"{path}: line {number}")
                entries[key_id(fields[0])] = (fields[0], fields[1] if len(fields) == 2 else None)
        return cls(entries)

    def verify(self, key: str, challenge: str, mac: str) -> Identity | None:
        entry = self._by_key.get(key)
        if entry is None:
            # Spend the same work as a real check, so timing does not reveal valid keys.
            hmac.compare_digest(prove("x" * MIN_SECRET_LEN, challenge, key), mac)
            return None
        secret, user = entry
        if not hmac.compare_digest(prove(secret, challenge, key), mac):
            return None
        return Identity(key=key, user=user)


def _check_secret(secret: str, where: str) -> None:
    if len(secret) < MIN_SECRET_LEN:
        raise AuthConfigError(f"{where}: a token must be at least {MIN_SECRET_LEN} characters")
