"""API key format and hashing. PURE apart from ``secrets`` for generation.

A key reads ``sk-sluice-<id>-<secret>``: the prefix makes leaked keys recognisable to secret
scanners, ``<id>`` (12 hex chars) is the lookup handle and may be shown and logged, ``<secret>``
(43 url-safe chars, 256 bits) is shown once and never stored: the store keeps a per-key random
salt and ``HMAC-SHA256(salt, secret)``. A slow KDF would add nothing for 256-bit random secrets
and would cost the hot path dearly. Comparison is constant-time.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "sk-sluice-"
_ID_LEN = 12
_KEY_RE = re.compile(r"^sk-sluice-([0-9a-f]{12})-([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class NewKey:
    key_id: str
    plaintext: str  # shown once to the caller, never stored
    salt: bytes
    digest: bytes

    @property
    def display(self) -> str:
        """What may be shown and logged: the prefix and id, never the secret."""
        return display(self.key_id)


def display(key_id: str) -> str:
    return f"{PREFIX}{key_id}-…"


def generate() -> NewKey:
    key_id = secrets.token_hex(_ID_LEN // 2)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    return NewKey(key_id, f"{PREFIX}{key_id}-{secret}", salt, digest(salt, secret))


def parse(token: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    m = _KEY_RE.match(token)
    if m is None:
        return None
    return m.group(1), m.group(2)


def looks_like_key(token: str) -> bool:
    return token.startswith(PREFIX)


def digest(salt: bytes, secret: str) -> bytes:
    return hmac.digest(salt, secret.encode(), "sha256")  # one-shot C HMAC-SHA256


def verify(salt: bytes, stored: bytes, secret: str) -> bool:
    return hmac.compare_digest(digest(salt, secret), stored)


# Used for unknown ids so that every 401 path does the same hashing work.
DUMMY_SALT = secrets.token_bytes(16)
DUMMY_DIGEST = digest(DUMMY_SALT, secrets.token_urlsafe(32))
