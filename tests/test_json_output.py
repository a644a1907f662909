"""The commands' JSON output: orjson's bytes (its encoder is the reference here), written with
the standard library unless a stream is long enough for orjson's import to pay."""

from __future__ import annotations

import subprocess
import sys

import orjson
from hypothesis import given
from hypothesis import strategies as st

from taskwatcher.cli.render import ORJSON_AFTER, json_bytes, json_items

TEXT_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def escaped_c1(data: bytes) -> bytes:
    """What the output did with orjson alone: C1 controls escaped after encoding."""
    for code in range(0x80, 0xA0):
        data = data.replace(chr(code).encode(), b"\\u%04x" % code)
    return data


@given(TEXT_VALUES, st.booleans())
def test_a_document_is_what_orjson_wrote(value, pretty):
    option = orjson.OPT_INDENT_2 if pretty else 0
    assert json_bytes(value, pretty=pretty) == escaped_c1(orjson.dumps(value, option=option))


def test_a_c1_control_never_reaches_the_terminal_raw():
    assert json_bytes({"k": "a\u009b[2Jb"}) == b'{"k":"a\\u009b[2Jb"}'


def test_a_long_stream_writes_the_same_bytes_after_it_takes_orjson():
    values = [
        {"line": f"{index} caf\u00e9 \u009b", "timer": index * 1.5e-7}
        for index in range(ORJSON_AFTER + 50)
    ]
    assert list(json_items(values)) == [json_bytes(value) for value in values]


STREAM = """\
import sys
from taskwatcher.cli.render import json_items
items = json_items(range(int(sys.argv[1])))
for _ in items:
    pass
print("orjson" in sys.modules)
"""


def test_orjson_is_imported_only_for_a_long_stream():
    def imported(count: int) -> bool:
        ran = subprocess.run(
            [sys.executable, "-c", STREAM, str(count)], capture_output=True, text=True, check=True
        )
        return ran.stdout.strip() == "True"

    assert not imported(ORJSON_AFTER)
    assert imported(ORJSON_AFTER + 1)
