"""The feedback language, rule by rule: parse_feedback (tolerant) and validate_feedback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from taskwatcher.grammar import Diagnostic, language, parse_feedback, validate_feedback
from tests.helpers import SPEC_EXAMPLE, SPEC_OUTPUT


def test_spec_example_gives_the_spec_json_in_the_spec_order() -> None:
    values = parse_feedback(SPEC_EXAMPLE)
    assert values == SPEC_OUTPUT
    assert list(values) == list(SPEC_OUTPUT)
    assert orjson.loads(orjson.dumps(values)) == SPEC_OUTPUT
    assert validate_feedback(SPEC_EXAMPLE) == []


# --- the spec's syntax list, one rule at a time ---------------------------------------------


def test_a_line_is_a_keyword_in_brackets_then_its_value() -> None:
    assert parse_feedback("[progress]12\n") == {"progress": "12"}


def test_values_stay_strings() -> None:
    assert parse_feedback("[progress]12\n[ratio]0.5\n[done]true\n") == {
        "progress": "12",
        "ratio": "0.5",
        "done": "true",
    }


def test_a_line_must_start_with_the_bracketed_keyword() -> None:
    text = "note [progress]12\n"
    assert parse_feedback(text) == {}
    assert validate_feedback(text) == [
        Diagnostic(
            1, 1, "a line must start with '[' or '#': found 'n', expected '[', '#' or end of line"
        )
    ]


@pytest.mark.parametrize(
    "keyword", ["a", "progress", "testcase_id", "status-code", "_x", "-x", "A9"]
)
def test_keywords_are_letters_digits_underscores_and_dashes(keyword: str) -> None:
    assert parse_feedback(f"[{keyword}]v") == {keyword: "v"}


def test_a_keyword_holds_no_spaces() -> None:
    text = "[my key]value\n"
    assert parse_feedback(text) == {}
    (diagnostic,) = validate_feedback(text)
    assert (diagnostic.line, diagnostic.column) == (1, 4)
    assert diagnostic.message == "keyword must not contain spaces: found a space, expected ']'"


def test_a_keyword_does_not_start_with_a_digit() -> None:
    text = "[1st]value\n"
    assert parse_feedback(text) == {}
    (diagnostic,) = validate_feedback(text)
    assert (diagnostic.line, diagnostic.column) == (1, 2)
    assert diagnostic.message.startswith("keyword must not start with a digit")
    assert "expected a keyword or ']'" in diagnostic.message


@pytest.mark.parametrize("keyword", ["a.b", "é", "a/b", "a:b"])
def test_other_characters_in_a_keyword_are_invalid(keyword: str) -> None:
    text = f"[{keyword}]v\n"
    assert parse_feedback(text) == {}
    (diagnostic,) = validate_feedback(text)
    assert diagnostic.message.startswith("keyword may only hold ASCII letters, digits")


def test_a_missing_closing_bracket_says_what_was_expected() -> None:
    (diagnostic,) = validate_feedback("[progress\n")
    assert diagnostic == Diagnostic(1, 10, "found end of line, expected ']'")


def test_the_value_immediately_follows_the_keyword_spaces_included() -> None:
    assert parse_feedback("[name] Setting up\n") == {"name": " Setting up"}


def test_comment_lines_are_ignored() -> None:
    assert parse_feedback("# [progress]12\n#\n[a]1\n# [a]\n") == {"a": "1"}


def test_empty_lines_are_ignored() -> None:
    assert parse_feedback("\n\n[a]1\n\n\n[b]2\n\n") == {"a": "1", "b": "2"}


def test_a_keyword_without_value_clears_it() -> None:
    assert parse_feedback("[info]Starting\n[other]x\n[info]\n") == {"other": "x"}


def test_clearing_an_unknown_keyword_is_harmless() -> None:
    assert parse_feedback("[a]1\n[heartbeat]\n") == {"a": "1"}


def test_empty_brackets_clear_everything_collected_so_far() -> None:
    assert parse_feedback("[a]1\n[b]2\n[]\n") == {}


def test_new_keys_after_a_clear_all_are_kept() -> None:
    assert parse_feedback("[a]1\n[b]2\n[]\n[c]3\n[a]4\n") == {"c": "3", "a": "4"}


def test_clear_all_takes_no_value() -> None:
    text = "[a]1\n[]x\n"
    assert parse_feedback(text) == {"a": "1"}
    assert validate_feedback(text) == [
        Diagnostic(2, 3, "'[]' takes no value: found 'x', expected end of line")
    ]


def test_the_last_value_of_a_keyword_wins() -> None:
    assert parse_feedback("[p]12\n[p]15\n[p]10\n") == {"p": "10"}


def test_keys_keep_the_order_of_their_first_appearance_even_when_cleared_meanwhile() -> None:
    values = parse_feedback("[a]1\n[b]2\n[a]\n[c]3\n[a]5\n")
    assert list(values.items()) == [("a", "5"), ("b", "2"), ("c", "3")]


# --- line endings and whitespace -------------------------------------------------------------


def test_crlf_line_endings_are_accepted() -> None:
    text = SPEC_EXAMPLE.replace("\n", "\r\n")
    assert parse_feedback(text) == SPEC_OUTPUT
    assert validate_feedback(text) == []


def test_the_last_line_needs_no_newline() -> None:
    assert parse_feedback("[a]1\n[b]2") == {"a": "1", "b": "2"}
    assert parse_feedback("[a]1\r\n[b]2\r") == {"a": "1", "b": "2"}


def test_spaces_and_tabs_before_a_statement_or_comment_are_ignored() -> None:
    text = "  [a]1\n\t[b]2\n \t# note\n   []\n  [c]3\n"
    assert parse_feedback(text) == {"c": "3"}
    assert validate_feedback(text) == []


def test_a_line_of_spaces_and_tabs_is_empty() -> None:
    text = "[a]1\n   \n\t\n \t \r\n"
    assert parse_feedback(text) == {"a": "1"}
    assert validate_feedback(text) == []


def test_trailing_spaces_belong_to_the_value() -> None:
    assert parse_feedback("[a]1  \n[b]  \n") == {"a": "1  ", "b": "  "}


def test_no_space_inside_the_brackets() -> None:
    text = "[ a]1\n[a ]1\n[ ]\n"
    assert parse_feedback(text) == {}
    assert [diagnostic.line for diagnostic in validate_feedback(text)] == [1, 2, 3]


def test_a_carriage_return_inside_a_line_is_invalid() -> None:
    text = "[a]x\ry\n"
    assert parse_feedback(text) == {}
    assert validate_feedback(text) == [
        Diagnostic(1, 6, "a carriage return may only end a line: found 'y', expected end of line")
    ]


# --- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "Setting up topology",
        "[nested]value",
        "a ] b [ c",
        "# not a comment",
        "[]",
        '{"json": [1, 2, {"k": "v"}], "ok": true}',
        "tabs\tand unicode: é ✓",
        "nul\x00byte",
    ],
)
def test_a_value_is_kept_verbatim(value: str) -> None:
    text = f"[key]{value}\n"
    assert parse_feedback(text) == {"key": value}
    assert validate_feedback(text) == []


# --- tolerance -------------------------------------------------------------------------------


def test_invalid_lines_are_skipped_and_the_rest_still_counts() -> None:
    text = "[a]1\ngarbage\n[2x]y\n[b\n[b]2\n[a]"
    assert parse_feedback(text) == {"b": "2"}
    assert [diagnostic.line for diagnostic in validate_feedback(text)] == [2, 3, 4]


def test_a_half_written_line_is_simply_skipped() -> None:
    assert parse_feedback("[a]1\n[progr") == {"a": "1"}


def test_diagnostics_print_as_line_column_message() -> None:
    (diagnostic,) = validate_feedback("ok\n")
    assert str(diagnostic).startswith("1:1: a line must start with '[' or '#'")


def test_empty_text_gives_nothing() -> None:
    assert parse_feedback("") == {}
    assert validate_feedback("") == []


def test_the_shipped_terminals_are_what_lark_compiles_from_the_grammar() -> None:
    shipped = language.shipped_patterns(Path(language.__file__).with_name(language.TERMINALS_FILE))
    assert shipped == language.lark_patterns(), (
        "the grammar changed: run python -m taskwatcher.grammar.language"
    )


def test_reading_feedback_never_needs_lark() -> None:
    script = (
        "import sys\n"
        "from taskwatcher.grammar import parse_feedback\n"
        "assert parse_feedback('[k]v\\n[progress]5\\n') == {'k': 'v', 'progress': '5'}\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'lark'))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout == "[]\n"


@pytest.mark.parametrize(
    "damage",
    [
        b"{not json",
        b'{"grammar": "0000", "terminals": {"KEYWORD": "x"}}',  # from another grammar
        b'{"terminals": {"KEYWORD": "x"}}',
        '{{"grammar": "{digest}", "terminals": {{"KEYWORD": 5}}}}',
        '{{"grammar": "{digest}", "terminals": []}}',
    ],
)
def test_shipped_terminals_that_do_not_fit_the_grammar_are_not_used(
    tmp_path: Path, damage: bytes | str
) -> None:
    path = tmp_path / "terminals.json"
    text = damage if isinstance(damage, bytes) else damage.format(digest=language.grammar_digest())
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert language.shipped_patterns(path) is None
