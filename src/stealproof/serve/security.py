"""API keys: generation, parsing, hashing and constant-time verification.

A key reads ``sp_<key_id>_<secret>``: ``key_id`` (8 lowercase hex characters) is stored in
clear so a key can be found and named; only the SHA-256 of the whole key is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

KEY_PREFIX = "sp"
KEY_ID_LENGTH = 8
SECRET_BYTES = 32
# token_urlsafe(32) is always 43 characters of the URL-safe base64 alphabet (no padding).
_SECRET_LENGTH = 43
_KEY_RE = re.compile(
    rf"{KEY_PREFIX}_(?P<key_id>[0-9a-f]{{{KEY_ID_LENGTH}}})_[A-Za-z0-9_-]{{{_SECRET_LENGTH}}}"
)
_KEY_LENGTH = len(KEY_PREFIX) + 2 + KEY_ID_LENGTH + _SECRET_LENGTH


@dataclass(frozen=True)
class NewKey:
    """A freshly generated key: ``key`` is shown to its owner once and never stored."""

    key: str = field(repr=False)
    key_id: str
    key_hash: str


def hash_key(key: str) -> str:
    """SHA-256 hex digest of the full key.

    A fast hash is right here (unlike for passwords): keys carry 256 random bits, so there is
    nothing to guess, and a slow hash would only make every request slower.
    """
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def verify_key(key: str, key_hash: str) -> bool:
    """True when ``key`` hashes to ``key_hash``; compared in constant time."""
    return hmac.compare_digest(
        hash_key(key).encode("ascii"), key_hash.encode("utf-8", "surrogatepass")
    )


def generate_key() -> NewKey:
    """A new random key with its visible id and stored hash."""
    key_id = secrets.token_hex(KEY_ID_LENGTH // 2)
    key = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(SECRET_BYTES)}"
    return NewKey(key=key, key_id=key_id, key_hash=hash_key(key))


def parse_key(text: str) -> tuple[str, str] | None:
    """``(key_id, full key)`` for a well-formed key, ``None`` for anything else (never raises)."""
    if not isinstance(text, str) or len(text) != _KEY_LENGTH:
        return None
    m = _KEY_RE.fullmatch(text)
    if m is None:
        return None
    return m.group("key_id"), text


# Hash of a key nobody holds: an unknown key_id is verified against it, so a miss costs the
# same hash-and-compare as a hit and response times do not tell which key ids exist.
DUMMY_HASH = hash_key(f"{KEY_PREFIX}_{'0' * KEY_ID_LENGTH}_{'A' * _SECRET_LENGTH}")
