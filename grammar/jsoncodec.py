"""JSON as the records keep it (feedback, argv, a reader's state), through the standard
library: importing orjson also imports dataclasses, inspect, uuid, platform and datetime,
some 20 ms of every twrun, for values of a few hundred bytes.

The bytes written are orjson's: compact UTF-8, floats spelled as orjson spells them (NaN,
which orjson writes as null, is refused). What is read is held to what orjson
reads: UTF-8 only, no NaN or Infinity, no number beyond a float, integers beyond 64 bits as
floats, no unpaired surrogate, nesting only as deep as the interpreter's recursion limit
allows (orjson's limit, 1,024, is a little deeper). Anything else raises ValueError, and a
value that is not text TypeError. The tests check both directions against orjson itself.
"""

from __future__ import annotations

import json
import math
import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: orjson's integers: it reads one beyond them as a float.
INTEGERS = range(-(2**63), 2**64)

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_INDENTED = json.JSONEncoder(ensure_ascii=False, indent=2, allow_nan=False)  # orjson's OPT_INDENT_2
#: A surrogate written as an escape: only then can a decoded string hold an unpaired one.
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def dumps(value: Any, *, pretty: bool = False) -> bytes:
    """`value` as compact JSON in UTF-8, or indented by two spaces (ValueError for NaN or an
    unpaired surrogate)."""
    text = (_INDENTED if pretty else _ENCODER).encode(value)
    if "e-0" in text:  # a float of exponent -5 to -9 perhaps (or text that reads alike)
        text = _FLOAT_OR_STRING.sub(_as_orjson_spells, text)
    return text.encode("utf-8")


#: A string (left as it is), or a float as Python's repr writes it with an exponent of -5
#: to -9: the only floats orjson spells otherwise (0.00001 for 1e-05, 2.5e-6 for 2.5e-06).
_FLOAT_OR_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|(-?)(\d)(?:\.(\d+))?e-0([5-9])')


def _as_orjson_spells(match: re.Match[str]) -> str:
    sign, first, rest, exponent = match.groups()
    if first is None:  # a string
        return match[0]
    if exponent == "5":
        return f"{sign}0.0000{first}{rest or ''}"
    return f"{sign}{first}{'.' + rest if rest else ''}e-{exponent}"


def loads(data: bytes | str) -> Any:
    """The value JSON text holds, as orjson would read it (ValueError if it would not)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        text = bytes(data).decode("utf-8")
    elif isinstance(data, str):
        text = data
    else:
        raise TypeError(f"JSON must be text, not {type(data).__name__}")
    try:
        value = _read(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if "\\u" in text and _ESCAPED_SURROGATE.search(text):
        _check_text(value)
    return value


def _read(text: str) -> Any:
    """The decoder's scanner straight away where the text is one value and nothing else (a
    stored column is), else the decoder itself: it skips white space and words its errors."""
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        end = -1
    return value if end == len(text) else _DECODER.decode(text)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _integer(digits: str) -> int | float:
    number = int(digits)
    return number if number in INTEGERS else _real(digits)


def _real(digits: str) -> float:
    number = float(digits)
    if math.isinf(number):
        raise ValueError(f"number {digits[:20]} out of range")
    return number


def _check_text(value: Any) -> None:
    """Every string in the value encodes as UTF-8 (an unpaired surrogate does not)."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, list):
        for item in value:
            _check_text(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_text(item)


#: One decoder for every read (json.loads given options makes a new one each time).
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_int=_integer, parse_float=_real)
_SCAN = _DECODER.scan_once
