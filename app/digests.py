"""Secrets compared and hashed: constant-time equality, and what the tokens file keeps of a token.

A leaf module: access control (auth), sign-in sessions and links all compare secrets,
and auth asks sessions whether a value is a session cookie.
"""
from __future__ import annotations

import hashlib
import hmac


def same_secret(given: str, expected: str) -> bool:
    """Constant-time equality of two secrets, whatever characters a client sent (compare_digest
    refuses non-ASCII text, so both are compared as UTF-8 bytes)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def hash_token(token: str) -> str:
    """What the tokens file keeps of a token (tokens are 256 random bits: SHA-256 is enough)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
