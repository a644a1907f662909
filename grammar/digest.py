"""SHA-256 without hashlib: hashlib loads OpenSSL's libcrypto (some 3 ms of every command)
for the few short digests a command takes (a task's token, its wake address, the grammar's
digest); CPython's own implementation computes the same digest."""

from __future__ import annotations

try:
    from _sha256 import sha256  # Python 3.11
except ImportError:  # pragma: no cover - Python 3.12 and later name it _sha2
    try:
        from _sha2 import sha256
    except ImportError:  # an interpreter built without it
        from hashlib import sha256


def sha256_hex(data: bytes) -> str:
    """The SHA-256 digest of data, in hex."""
    return sha256(data).hexdigest()
