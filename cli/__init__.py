"""Command-line front ends: twparse, twrun, twctl. Parsing, formatting, exit codes only.

Every console script imports this package first, so it arranges how a command starts.
Until the command's main() runs, a Ctrl-C ends it quietly with status 130 instead of a
traceback from whatever module was loading. orjson, imported only where JSON is written,
is imported with SIGINT blocked: a SIGINT during its import crashes the interpreter
(SIGSEGV, orjson 3.10 to 3.13). A Ctrl-C
that lands in a weakref callback or a destructor (each import runs some), where Python would
print and carry on, ends the command there, with the same status.
"""

# The handler comes first, before anything else of this module runs: a Ctrl-C that came
# while Python was finding this module runs whichever handler is in place at the first check
# Python makes, and that must be ours. _signal is built in, while signal would first build
# its enums.
import _signal

#: The status of a command ended by Ctrl-C, as a shell reports one killed by SIGINT.
EXIT_INTERRUPTED = 128 + _signal.SIGINT


def _exit_interrupted(signum: int, frame: object) -> None:
    """End at once, with the streams flushed: nothing is open before main() runs (or after
    it returned). Not SystemExit: raised where an import runs a class's __set_name__, Python
    3.11 turns it into a RuntimeError with a traceback (ipaddress, under pathlib, has some).
    """
    import os  # here, not above: this handler can run before the module's imports do

    flush_streams()
    os._exit(EXIT_INTERRUPTED)


def flush_streams() -> None:
    """Flush stdout and stderr before an os._exit, whatever state they are in."""
    import sys  # as above

    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105  (contextlib may not be imported yet)
            stream.flush()
        except (AttributeError, OSError, ValueError):  # closed, or a pipe nobody reads
            pass


# Ours is put in place by the module's first call, where Python next checks for signals:
# asking first (getsignal) was a call, and a Ctrl-C seen there raised KeyboardInterrupt in
# this module. A SIGINT its starter ignored (`nohup`, a background job) is ignored again at
# once; one that arrives between the two calls would end the command (a window of one
# call, where before a Ctrl-C during the first call printed a traceback). signal() itself
# runs the handlers of signals already pending before it changes one: a Ctrl-C that came
# just before it raises KeyboardInterrupt there, and ends the command as ours would.
try:
    _STARTED_WITH = _signal.signal(_signal.SIGINT, _exit_interrupted)
except KeyboardInterrupt:
    _exit_interrupted(_signal.SIGINT, None)
_QUIET_START = _STARTED_WITH is _signal.default_int_handler
if not _QUIET_START:
    _signal.signal(_signal.SIGINT, _STARTED_WITH)

import os  # noqa: E402
import sys  # noqa: E402


def _exit_on_swallowed_interrupts(unraisable: object) -> None:
    """sys.unraisablehook: a Ctrl-C that Python could only report ends the command (130).

    Raising it again would run the handler inside this hook, which Python swallows too.
    """
    error = getattr(unraisable, "exc_value", None)
    if not isinstance(error, KeyboardInterrupt) and not (
        isinstance(error, SystemExit) and error.code == EXIT_INTERRUPTED
    ):
        _report_unraisable(unraisable)
        return
    _exit_interrupted(_signal.SIGINT, None)


_report_unraisable = sys.unraisablehook
if _QUIET_START:
    sys.unraisablehook = _exit_on_swallowed_interrupts

# Only for annotations: a command forked by the command server (cli.start) imports this
# package and little else, and typing alone would cost it more than all the rest.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType


def import_orjson() -> "ModuleType":
    """orjson, imported with SIGINT held back (see above): where a command first writes JSON
    (its import costs some 20 ms, which a command that prints a table never pays)."""
    held = _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGINT})
    try:
        import orjson  # a SIGINT meanwhile waits until the import is done
    finally:
        _signal.pthread_sigmask(_signal.SIG_SETMASK, held)
    return orjson


def interruptible(main: "Callable[..., int]") -> "Callable[..., int]":
    """Decorate a console script's main: in it Ctrl-C is a KeyboardInterrupt again (which
    `twctl watch` and twrun's supervision handle), and one left over ends it with 130."""

    import functools

    @functools.wraps(main)
    def run(*args: object, **kwargs: object) -> int:
        if sys.stdout is None:  # started with stdout closed (`>&-`): do nothing, say so
            print(f"{_prog()}: standard output is closed", file=sys.stderr)
            return EXIT_USAGE
        quiet_start = _signal.getsignal(_signal.SIGINT) is _exit_interrupted
        try:
            if quiet_start:
                _signal.signal(_signal.SIGINT, _signal.default_int_handler)
            status = main(*args, **kwargs)
            sys.stdout.flush()
            return status
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except OSError as error:  # a full disk or a dead device behind stdout
            from taskwatcher.cli.render import silence_stdout

            silence_stdout()  # so that the interpreter's last flush fails no more
            print(f"{_prog()}: cannot write the output: {error.strerror or error}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            if quiet_start:  # quiet again on the way out, through the interpreter's exit
                _signal.signal(_signal.SIGINT, _exit_interrupted)

    return run


#: Exit statuses shared by the commands for these start-up and output failures.
EXIT_FAILED = 1
EXIT_USAGE = 2


def _prog() -> str:
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "taskwatcher"
