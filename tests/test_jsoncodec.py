"""The records' JSON writes what orjson writes and reads only what orjson reads: orjson is
the reference each case is checked against."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskwatcher.grammar import jsoncodec

STORED = st.one_of(  # what records hold (a duration, a timer, a time are floats)
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),  # any code point but surrogates, control characters included
)
#: Where Python's float repr and orjson's part: exponents -5 to -9, and text that looks alike.
FLOATS_SPELLED_OTHERWISE = [
    1e-05, -5.17135033381102e-05, 4.591653704649832e-05, 2.5e-06, -1.5e-07, 1.234e-09,
    9.999999999999999e-06, 1e-10, 0.0001, 1e16, 1.2345678901234568e17, 5e-324, -0.0, 0.1,
    "1e-05", {"2.5e-06": [1e-05, "\\", '"1e-07"', 1.5e-07]},
]  # fmt: skip


def nested(scalars):
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    )


VALUES = nested(STORED)


@given(nested(STORED))
def test_writes_the_bytes_orjson_writes(value):
    assert jsoncodec.dumps(value) == orjson.dumps(value)


@given(VALUES)
def test_reads_what_orjson_writes(value):
    assert jsoncodec.loads(orjson.dumps(value)) == value


@pytest.mark.parametrize("value", [*FLOATS_SPELLED_OTHERWISE, FLOATS_SPELLED_OTHERWISE])
def test_writes_floats_with_orjsons_digits(value):
    assert jsoncodec.dumps(value) == orjson.dumps(value)
    assert jsoncodec.dumps(value, pretty=True) == orjson.dumps(value, option=orjson.OPT_INDENT_2)


@given(nested(STORED))
def test_indents_as_orjson_does(value):
    assert jsoncodec.dumps(value, pretty=True) == orjson.dumps(value, option=orjson.OPT_INDENT_2)


@given(st.dictionaries(st.text(), st.text()), st.booleans())
def test_reads_text_and_bytes_alike(feedback, as_text):
    stored = orjson.dumps(feedback)
    assert jsoncodec.loads(stored.decode() if as_text else stored) == feedback


def outcome(read, data):
    try:
        return "read", read(data)
    except (ValueError, TypeError):
        return "refused", None


@pytest.mark.parametrize(
    "data",
    [
        b"NaN",
        b"[Infinity]",
        b"-Infinity",
        b"18446744073709551616",  # 2**64
        b"-9223372036854775809",  # -2**63 - 1
        b"18446744073709551615",
        b'"\\ud800"',  # an unpaired surrogate, escaped
        b'{"k": "\\udfff x"}',
        b'"\\ud83d\\ude00"',  # a pair: one character
        b'"caf\xe9"',  # not UTF-8
        '"ok"'.encode("utf-16"),
        b"\xef\xbb\xbf1",  # a byte order mark
        b"[1,]",
        b"",
        b" [1] ",
        b"[" * 5000 + b"]" * 5000,
        b'{"a":1,"a":2}',
        b"1e400",
    ],
)
def test_refuses_what_orjson_refuses(data):
    assert outcome(jsoncodec.loads, data) == outcome(orjson.loads, data)


def test_refuses_what_is_not_text():
    with pytest.raises(TypeError):
        jsoncodec.loads(None)


@pytest.mark.parametrize("value", [{"k": "\udc80"}, ["\ud800"]])
def test_will_not_write_what_is_not_json(value):
    with pytest.raises(ValueError):
        jsoncodec.dumps(value)
    with pytest.raises(TypeError):
        orjson.dumps(value)


def test_refuses_to_write_nan_which_orjson_writes_as_null():
    with pytest.raises(ValueError):
        jsoncodec.dumps({"x": float("nan")})
