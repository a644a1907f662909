"""twparse: print a feedback file as one JSON object, or check files against the grammar.

Exit status: 0 success, 1 validation errors (--check), 2 usage error or unreadable input.
Lines skipped for not being text (binary data) are counted in a warning; under --check they
are validation errors.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from functools import partial

from taskwatcher.cli import interruptible
from taskwatcher.cli.helpformat import HelpFormatter, add_version_option
from taskwatcher.cli.render import json_bytes, silence_stdout
from taskwatcher.grammar import READ_CHUNK, FeedbackStream, open_regular

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_UNREADABLE = 2
STDIN = "-"

log = logging.getLogger("taskwatcher.twparse")


def build_parser() -> argparse.ArgumentParser:
    """The command line; `--feedback FILE` and `--debug` keep the taskwatcher 1.x spellings."""
    parser = argparse.ArgumentParser(
        prog="twparse",
        formatter_class=HelpFormatter,
        description="Print a feedback file as a JSON object, or check feedback files.",
    )
    parser.add_argument(
        "files", nargs="*", metavar="FILE", help=f"feedback file ('{STDIN}': standard input)"
    )
    parser.add_argument("--feedback", metavar="FILE", help="feedback file (same as FILE)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="report every invalid line as FILE:LINE:COLUMN: message; exit 1 if any",
    )
    parser.add_argument("--pretty", action="store_true", help="indent the JSON output")
    parser.add_argument(
        "-v", "--verbose", "-d", "--debug", dest="debug", action="store_true", help="log details"
    )
    add_version_option(parser)
    return parser


@interruptible
def main(argv: list[str] | None = None) -> int:
    """Entry point of the `twparse` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="twparse: %(message)s"
    )
    sources = [*args.files, *([args.feedback] if args.feedback else [])]
    if not sources:
        parser.error(f"give a feedback FILE ('{STDIN}' for standard input)")
    if not args.check and len(sources) > 1:
        parser.error("give one FILE to print, or --check to check several")
    try:
        status = check_sources(sources) if args.check else print_values(sources[0], args.pretty)
        sys.stdout.flush()
    except BrokenPipeError:
        # Whoever read the output stopped early (`twparse --check ... | head`): not our error.
        silence_stdout()
        return EXIT_OK
    return status


def print_values(source: str, pretty: bool) -> int:
    """Stream the file through the tolerant parser and print its values as JSON."""
    stream = FeedbackStream()
    try:
        for chunk in _chunks(source):
            stream.feed(chunk)
            _log_skipped(source, stream)
    except OSError as error:
        return _unreadable(source, error)
    stream.finish()
    _log_skipped(source, stream)
    _warn_not_text(source, stream)
    values = stream.current()
    log.debug("%s: %d lines, %d keywords", _name(source), stream.lines, len(values))
    sys.stdout.buffer.write(json_bytes(values, pretty=pretty) + b"\n")
    return EXIT_OK


def check_sources(sources: list[str]) -> int:
    """Print every diagnostic of every file; the worst outcome decides the exit status."""
    status = EXIT_OK
    for source in sources:
        stream = FeedbackStream(check=True)
        try:
            for chunk in _chunks(source):
                stream.feed(chunk)
                status = max(status, _print_diagnostics(source, stream))
        except BrokenPipeError:
            raise  # the output is gone, not the input
        except OSError as error:
            status = max(status, _unreadable(source, error))
            continue
        stream.finish()
        status = max(status, _print_diagnostics(source, stream))
        if _warn_not_text(source, stream):
            status = max(status, EXIT_INVALID)
    return status


def _chunks(source: str) -> Iterator[bytes]:
    if source == STDIN:
        yield from iter(partial(sys.stdin.buffer.read, READ_CHUNK), b"")
        return
    with open_regular(source) as opened:
        yield from opened.read(0, opened.size)


def _print_diagnostics(source: str, stream: FeedbackStream) -> int:
    for diagnostic in stream.diagnostics:
        print(f"{_name(source)}:{diagnostic}")
    found = bool(stream.diagnostics)
    stream.diagnostics.clear()
    return EXIT_INVALID if found else EXIT_OK


def _log_skipped(source: str, stream: FeedbackStream) -> None:
    for diagnostic in stream.diagnostics:
        log.warning("%s:%s", _name(source), diagnostic)
    stream.diagnostics.clear()


def _warn_not_text(source: str, stream: FeedbackStream) -> bool:
    """Say how many lines were skipped for not being text: the diagnostics of a binary file
    would be as many lines of noise, and printing drops such lines silently."""
    if stream.not_text:
        log.warning("%s: %d line(s) skipped: not text", _name(source), stream.not_text)
    return bool(stream.not_text)


def _unreadable(source: str, error: OSError) -> int:
    print(f"twparse: {_name(source)}: {error.strerror or error}", file=sys.stderr)
    return EXIT_UNREADABLE


def _name(source: str) -> str:
    return "<stdin>" if source == STDIN else source


if __name__ == "__main__":
    sys.exit(main())
