"""The package's SHA-256 is hashlib's: the digests stored in rows and wake addresses must
not change with the implementation that computes them."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from taskwatcher.grammar.digest import sha256_hex


@given(st.binary(max_size=4096))
def test_the_digest_is_hashlibs(data):
    assert sha256_hex(data) == hashlib.sha256(data).hexdigest()
