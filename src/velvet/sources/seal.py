"""Seals: which of the store's saved texts this Velvet wrote itself, after validating what they hold.

A seal is a keyed BLAKE2b of a text, keyed with a digest of the model's code (its decoders,
validation rules, encoders and types: every module of `velvet.model`), Velvet's version and
Python's. A text whose seal matches was written by this code and has not changed since, so the
store reads it back without validating it again (`model.decode_stored`); a text edited by hand,
damaged, or written by another Velvet (a rule tightened, a field added) has no matching seal and
is validated in full, as before. It guards against accidents, not against someone who can write the
state directory (root, who can equally write a matching seal).
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

import velvet.model
from velvet import durable

SEAL_CHARS = 32  # hex digits of a seal


@cache
def code_digest() -> bytes:
    """The digest of what decides how a saved text is read and what is valid: the model's code."""
    return durable.code_digest(sorted(Path(str(velvet.model.__file__)).parent.glob("*.py")))


def seal(text: bytes | bytearray | memoryview) -> bytes:
    """The seal of `text` by this code, as SEAL_CHARS ASCII hex digits."""
    return hashlib.blake2b(text, key=code_digest(), digest_size=SEAL_CHARS // 2).hexdigest().encode()
