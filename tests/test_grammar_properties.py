"""Properties: the fast path agrees with the pure-Lark path, and nothing random makes it raise."""

from __future__ import annotations

from itertools import pairwise

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from taskwatcher.grammar import parse_feedback, validate_feedback
from taskwatcher.grammar.fastpath import BLOCK_CHARS, apply_framed, frame
from taskwatcher.grammar.reference import collect_with_lark, parse_with_lark
from taskwatcher.grammar.semantics import visible
from taskwatcher.grammar.stream import FeedbackStream

# Few keywords, so that sets, clears and overrides of the same keyword meet often.
keywords = st.sampled_from(["a", "b", "progress", "test-case_1", "_x"])
values = st.text(st.sampled_from(list('xy [#]{}"\t é\x00')), min_size=1, max_size=8)
blanks = st.sampled_from(["", "", " ", "\t", " \t "])

statements = st.one_of(
    st.builds("[{}]{}".format, keywords, values),
    st.builds("[{}]".format, keywords),
    st.just("[]"),
    st.builds("#{}".format, values),
    st.just(""),
)
valid_lines = st.builds("{}{}".format, blanks, statements)
# Near misses of the language, and plain noise: may be valid by chance, which is fine.
invalid_lines = st.one_of(
    st.builds("[{}]{}".format, st.sampled_from(["1a", "a b", "a ", " a", "é", "a.b", ""]), values),
    st.builds("{}{}".format, values, statements),
    st.builds("{}\r{}".format, statements, st.sampled_from(["", *"\rx "])),
    st.builds("[{}".format, keywords),
    st.text(st.sampled_from(list("[]#ab1-_ \t\r\x00é")), max_size=12),
)
line_endings = st.sampled_from(["\n", "\r\n"])
texts = st.builds(
    "".join,
    st.lists(
        st.builds("{}{}".format, st.one_of(valid_lines, invalid_lines), line_endings),
        max_size=25,
    ),
).flatmap(lambda text: st.sampled_from([text, text.rstrip("\r\n")]))


@settings(max_examples=400, deadline=None)
@given(texts)
def test_fast_path_and_lark_agree_on_values_order_recency_and_invalid_lines(text: str) -> None:
    lark_values, lark_diagnostics = parse_with_lark(text)
    assert list(parse_feedback(text).items()) == list(lark_values.items())
    assert validate_feedback(text) == lark_diagnostics
    all_values, recency, _ = collect_with_lark(text)
    assert _collected(text) == (all_values, _ranked(recency))


@settings(max_examples=200, deadline=None)
@given(texts, st.integers(min_value=1, max_value=40))
def test_the_block_size_of_the_fast_path_changes_nothing(text: str, block_chars: int) -> None:
    values, recency = _collected(text, block_chars)
    assert visible(values) == parse_feedback(text)
    assert list(visible(values)) == list(parse_feedback(text))
    assert recency == _collected(text)[1]


@settings(max_examples=200, deadline=None)
@given(texts, st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_reading_in_pieces_gives_what_parsing_the_whole_text_gives(
    text: str, cuts: list[int]
) -> None:
    data = text.encode()
    values_stream = FeedbackStream()
    check_stream = FeedbackStream(check=True)
    for piece in _pieces(data, cuts):
        values_stream.feed(piece)
        check_stream.feed(piece)
    values_stream.finish()
    check_stream.finish()
    assert list(values_stream.current().items()) == list(parse_feedback(text).items())
    assert _ranked(values_stream.recency) == _collected(text)[1]
    assert check_stream.diagnostics == validate_feedback(text)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_parses_without_raising(text: str) -> None:
    assert isinstance(parse_feedback(text), dict)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(min_value=0, max_value=600), max_size=5))
def test_any_bytes_read_without_raising_into_printable_json(data: bytes, cuts: list[int]) -> None:
    tolerant = FeedbackStream()
    checking = FeedbackStream(check=True)
    for piece in _pieces(data, cuts):
        tolerant.feed(piece)
        checking.feed(piece)
    tolerant.finish()
    checking.finish()
    assert orjson.loads(orjson.dumps(tolerant.current())) == tolerant.current()
    assert checking.current() == tolerant.current()


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(min(cut, len(data)) for cut in cuts), len(data)]
    return [data[start:end] for start, end in pairwise(bounds)]


def _collected(text: str, block_chars: int = BLOCK_CHARS) -> tuple[dict[str, str], list[str]]:
    """The values of a text on the fast path, and its keywords ranked by last statement."""
    values: dict[str, str] = {}
    recency: dict[str, int] = {}
    apply_framed(values, recency, frame(text), block_chars=block_chars)
    assert recency.keys() == values.keys()
    return values, _ranked(recency)


def _ranked(recency: dict[str, int]) -> list[str]:
    return sorted(recency, key=recency.__getitem__)
