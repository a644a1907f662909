"""Whole-text line matchers composed from feedback.lark's terminals, and the values they yield.

Lark parses a million lines in tens of seconds; one regular expression scanning a whole
chunk does it in a fraction of a second. The expressions below are not a second grammar:
each piece is a terminal exactly as Lark loaded it from feedback.lark, and the composition
mirrors the `line` and `statement` rules. The property tests check that the two paths agree.

The matchers work on *framed* text: "\n" followed by the lines, so that every line, the
first included, starts right after an LF.
"""

from __future__ import annotations

import functools
import re
from itertools import chain, count, pairwise

from taskwatcher.grammar.datatype import datatype

from .language import terminal_patterns
from .semantics import CLEARED

# A framed text is cut into blocks of about this many characters; keys are collected for
# every block, values only for the few blocks that hold the last word on some keyword.
BLOCK_CHARS = 8192


@datatype(frozen=True)
class Matchers:
    """The compiled expressions, built once per process."""

    keywords: re.Pattern[str]  # every set/clear/clear-all line: its keyword, "" for `[]`
    entries: re.Pattern[str]  # the same lines: (keyword, value), ("", "") for `[]`
    invalid: re.Pattern[str]  # the LF in front of each line the grammar rejects
    keyword: re.Pattern[str]  # the KEYWORD terminal alone
    value: re.Pattern[str]  # the VALUE terminal alone
    comment: re.Pattern[str]  # the COMMENT terminal alone


@functools.cache
def matchers() -> Matchers:
    """Compose the line expressions from the grammar's terminals, mirroring its rules."""
    try:
        return _compose(terminal_patterns())
    except (KeyError, re.error):  # a damaged terminals file: ask Lark itself again
        return _compose(terminal_patterns(from_lark=True))


def _compose(patterns: dict[str, str]) -> Matchers:
    term = {name: f"(?:{regexp})" for name, regexp in patterns.items()}
    line_end = f"{term['_CR']}?(?={term['_LF']}|\\Z)"

    def statement_with(value: str) -> str:
        # assignment | clear_keyword | clear_all, keyword captured, value as the caller asks
        return f"{term['LSQB']}(?:({term['KEYWORD']}){term['RSQB']}{value}|{term['RSQB']})"

    entry_line = f"{term['_LF']}{term['_BLANK']}?{{}}{line_end}"
    any_statement = f"(?:{statement_with(term['VALUE'] + '?')}|{term['COMMENT']})"
    return Matchers(
        keywords=re.compile(entry_line.format(statement_with(term["VALUE"] + "?"))),
        entries=re.compile(entry_line.format(statement_with(f"({term['VALUE']})?"))),
        invalid=re.compile(f"{term['_LF']}(?!{term['_BLANK']}?{any_statement}?{line_end})"),
        keyword=re.compile(term["KEYWORD"]),
        value=re.compile(term["VALUE"]),
        comment=re.compile(term["COMMENT"]),
    )


def frame(text: str) -> str:
    """Put the LF in front of the first line that the matchers expect in front of every line."""
    return "\n" + text


def _block_spans(framed: str, block_chars: int) -> list[tuple[int, int]]:
    """Cut the framed text at LFs into spans of about block_chars; each span starts at an LF."""
    starts = [0]
    while (cut := framed.find("\n", starts[-1] + block_chars)) >= 0:
        starts.append(cut)
    return list(pairwise([*starts, len(framed)]))


def apply_framed(
    values: dict[str, str],
    recency: dict[str, int],
    framed: str,
    *,
    serial: int = 0,
    block_chars: int = BLOCK_CHARS,
) -> None:
    """Apply every line of a framed text to `values`, as if one statement at a time, and
    rank in `recency` each keyword it sets or clears by its last statement: `serial` for the
    earliest, counting up. That takes fewer numbers than the text has lines, so a caller
    numbering text after text from its line count keeps later statements above earlier ones.

    Only the last statement about each keyword after the last `[]` matters, so the keywords
    of every line are collected cheaply, and values are captured only in the blocks where
    some keyword is seen for the last time, walking backwards.
    """
    found = matchers()
    spans = _block_spans(framed, block_chars)
    keywords_by_block = [found.keywords.findall(framed, start, end) for start, end in spans]
    first_entry = 0
    if last_clear_all := _after_last_clear_all(keywords_by_block):
        first_block, first_entry = last_clear_all
        spans = spans[first_block:]
        keywords_by_block = keywords_by_block[first_block:]
        keywords_by_block[0] = keywords_by_block[0][first_entry:]
        values.clear()
        recency.clear()
    in_order = dict.fromkeys(chain.from_iterable(keywords_by_block))
    last_word = _last_words(framed, spans, keywords_by_block, first_entry, set(in_order))
    for keyword in in_order:
        values[keyword] = last_word[keyword] or CLEARED
    recency.update(zip(reversed(last_word), count(serial)))


def _last_words(
    framed: str,
    spans: list[tuple[int, int]],
    keywords_by_block: list[list[str]],
    first_entry: int,
    unresolved: set[str],
) -> dict[str, str]:
    """The last word ('' for a clear) on each unresolved keyword, latest statement first.

    The entries of the first block start at `first_entry` (after a `[]`).
    """
    entries_pattern = matchers().entries
    last_word: dict[str, str] = {}
    for index in reversed(range(len(spans))):
        if not unresolved:
            break
        keywords = keywords_by_block[index]
        if unresolved.isdisjoint(keywords):
            continue
        entries = entries_pattern.findall(framed, *spans[index])
        block_values = dict(entries[first_entry:] if index == 0 else entries)
        last_place = dict(zip(keywords, count()))
        settled = sorted(unresolved.intersection(keywords), key=last_place.__getitem__)
        last_word.update((keyword, block_values[keyword]) for keyword in reversed(settled))
        unresolved.difference_update(settled)
    return last_word


def _after_last_clear_all(keywords_by_block: list[list[str]]) -> tuple[int, int] | None:
    """Block and entry index just after the last `[]`, or None when there is none."""
    for index in reversed(range(len(keywords_by_block))):
        keywords = keywords_by_block[index]
        if "" in keywords:
            return index, len(keywords) - keywords[::-1].index("")
    return None
