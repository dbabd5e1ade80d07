"""API keys: format, entropy, parsing of garbage, hashing and verification."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from stealproof.serve.security import (
    DUMMY_HASH,
    generate_key,
    hash_key,
    parse_key,
    verify_key,
)

KEY_RE = re.compile(r"sp_[0-9a-f]{8}_[A-Za-z0-9_-]{43}")


def test_generated_key_format_and_parts() -> None:
    new = generate_key()
    assert KEY_RE.fullmatch(new.key)
    assert new.key.startswith(f"sp_{new.key_id}_")
    assert len(new.key_id) == 8
    assert new.key_hash == hash_key(new.key)
    assert parse_key(new.key) == (new.key_id, new.key)


def test_secret_has_at_least_32_bytes_of_entropy() -> None:
    secret = generate_key().key.split("_", 2)[2]
    # 43 URL-safe base64 characters carry 6 bits each: 258 bits >= 256.
    assert len(secret) * 6 >= 256


def test_keys_are_distinct() -> None:
    keys = [generate_key() for _ in range(200)]
    assert len({k.key for k in keys}) == 200
    assert len({k.key_id for k in keys}) == 200  # 32-bit ids: a collision here is ~5e-6


def test_repr_never_shows_the_secret() -> None:
    new = generate_key()
    assert new.key not in repr(new)
    assert new.key_id in repr(new)


def test_verify_true_false() -> None:
    a, b = generate_key(), generate_key()
    assert verify_key(a.key, a.key_hash)
    assert not verify_key(b.key, a.key_hash)
    assert not verify_key(a.key, DUMMY_HASH)
    assert not verify_key(a.key, "")
    assert not verify_key(a.key, "é" * 64)  # a corrupt stored hash is a mismatch, not a crash


def test_hash_is_sha256_hex_and_never_the_key() -> None:
    new = generate_key()
    assert re.fullmatch(r"[0-9a-f]{64}", new.key_hash)
    assert new.key_hash != new.key
    assert new.key not in new.key_hash
    assert new.key.split("_", 2)[2] not in new.key_hash


def test_parse_refuses_near_misses() -> None:
    key = generate_key().key
    assert parse_key(key) is not None
    for bad in (
        "",
        key[:-1],
        key + "A",
        " " + key,
        key + "\n",
        key.replace("sp_", "xx_", 1),
        key.upper(),
        "Bearer " + key,
        key[:11] + "." + key[12:],
        key[:3] + "ABCDEF12" + key[11:],  # key id must be lowercase hex
    ):
        assert parse_key(bad) is None, bad


@given(st.text(max_size=120))
def test_parse_of_any_text_never_raises(text: str) -> None:
    out = parse_key(text)
    assert out is None or (KEY_RE.fullmatch(text) and out == (text[3:11], text))


@given(st.from_regex(KEY_RE, fullmatch=True))
def test_parse_accepts_every_well_formed_key(text: str) -> None:
    assert parse_key(text) == (text[3:11], text)


@given(st.one_of(st.none(), st.integers(), st.binary(max_size=60)))
def test_parse_of_non_strings_is_none(value: object) -> None:
    assert parse_key(value) is None  # type: ignore[arg-type]


@given(st.text(max_size=80))
def test_verify_never_raises_on_odd_text(text: str) -> None:
    assert verify_key(text, hash_key(text))
    assert not verify_key(text + "x", hash_key(text))
