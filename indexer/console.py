"""What the commands print: quiet libraries, and every error as one line naming its cause.

`run_command` is the one wrapper that `vidx` and `python -m actors.*` run their work through, so
both turn errors into the same message and exit code. Imports nothing heavy: `vidx ask` reports
bad arguments before torch or Ray load."""

from __future__ import annotations

import argparse
import builtins
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable

logger = logging.getLogger("indexer")

EXIT_USAGE = 2        # bad input: a file, stream, setting or argument (the message names it and the remedy)
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # as a shell reports SIGPIPE: the reader of our output went away (`| head`)

# Errors whose message is all a user needs; anything else is a bug and keeps its type in the line.
USER_ERRORS = (FileNotFoundError, NotADirectoryError, PermissionError, KeyError, ValueError, TypeError,
               RuntimeError, TimeoutError, ConnectionError)
# "ValueError: message" as the last line of a traceback that Ray carried as text
_TRACEBACK_TAIL = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Za-z_]\w*(?:Error|Exception)): (.+)$")


def quiet_libraries(verbose: bool) -> None:
    """No library progress bars ("Loading weights", downloads) or advisory warnings unless
    `verbose`, and no colour codes in output that is not a terminal. Set in the environment
    before Ray starts, so the workers of a local Ray inherit it; values the user set win."""
    if not verbose:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        # a new local cluster enables token auth (which we keep) and says so on every run
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        if "transformers" in sys.modules:  # already imported: the environment is read once, at import
            import transformers

            transformers.utils.logging.disable_progress_bar()
            transformers.utils.logging.set_verbosity_error()
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def plural(count: int, word: str, words: str | None = None) -> str:
    """'1 source', '2 sources'."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


class RemoteError(Exception):
    """An exception raised inside a Ray actor that reached us only as traceback text."""


def error_line(exc: BaseException) -> str:
    """The cause of `exc` in one line: a Ray error is unwrapped to the exception raised inside the
    actor or task; KeyError loses the quotes its str() adds."""
    exc = _unwrap_ray(exc)
    if _is_ffmpeg_error(exc):  # by name and FFmpeg's words, not "[Errno 1094995529] ..."
        filename = getattr(exc, "filename", None)
        return f"{type(exc).__name__}: {exc.strerror}" + (f": {filename}" if filename else "")
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    message = "; ".join(line.strip() for line in str(message).splitlines() if line.strip()) or type(exc).__name__
    return message if isinstance(exc, _user_errors() + _named_errors() + (RemoteError,)) \
        else f"{type(exc).__name__}: {message}"


def run_parsed(parser: argparse.ArgumentParser, argv: list[str] | None, name: Callable[[argparse.Namespace], str],
               run: Callable[[argparse.Namespace], int]) -> int:
    """How `vidx` and `python -m actors.*` start: parse `argv`, log (-v: progress, library output),
    then `run_command` (one-line errors, the same exit codes). `parser` has a -v/--verbose flag."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries(args.verbose)
    return run_command(name(args), lambda: run(args), verbose=args.verbose)


def run_command(name: str, run: Callable[[], int], verbose: bool = False) -> int:
    """Run a command's work; errors become one line on stderr (`NAME: error: ...`, the full
    traceback with -v) and an exit code: 2 for bad input, 1 for anything else, 130 for Ctrl-C,
    141 when stdout's reader went away."""
    try:
        code = run()
        sys.stdout.flush()  # a pipe's buffer is written here, inside the try, not at interpreter exit
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:  # Ctrl-C while Ray starts, or a second Ctrl-C: nothing waited for
        print(f"{name}: aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one place every command's errors end
        if verbose:
            traceback.print_exc()
        print(f"{name}: error: {error_line(exc)}", file=sys.stderr)
        cause = _unwrap_ray(exc)
        return EXIT_USAGE if isinstance(cause, _user_errors()) or _is_ffmpeg_error(cause) else 1


def _unwrap_ray(exc: BaseException) -> BaseException:
    """RayTaskError carries the actor's exception as `cause`; ActorDiedError (a constructor that
    raised) keeps only its traceback text: its last line is the cause."""
    if not type(exc).__module__.startswith("ray"):
        return exc
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        return _unwrap_ray(cause)
    lines = [line.strip() for line in str(getattr(exc, "error_msg", None) or exc).splitlines() if line.strip()]
    for line in reversed(lines):
        if match := _TRACEBACK_TAIL.match(line):
            kind, message = match.groups()
            builtin = getattr(builtins, kind, None)
            if isinstance(builtin, type) and issubclass(builtin, Exception):
                return builtin(message)
            return RemoteError(f"{kind}: {message}")
    return exc


def _named_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says all (no class name needed) but that are not bad input (exit 1):
    a damaged index names its file and the remedy. Looked up only if loaded, as below."""
    integrity = sys.modules.get("indexer.store.integrity")
    return (integrity.IndexDamaged,) if integrity else ()


def _user_errors() -> tuple[type[BaseException], ...]:
    """USER_ERRORS, and a source that cannot be read when the media package is loaded (not
    imported here: it would cost `vidx ask`'s argument checks their speed)."""
    source = sys.modules.get("indexer.media.source")
    return USER_ERRORS + ((source.SourceError,) if source else ())


def _is_ffmpeg_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("av.") and hasattr(exc, "strerror")


def _silence_stdout() -> None:
    """Python flushes stdout again at exit; point it at /dev/null so that flush cannot raise."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


__all__ = ["EXIT_BROKEN_PIPE", "EXIT_INTERRUPTED", "EXIT_USAGE", "USER_ERRORS", "RemoteError", "error_line",
           "plural", "quiet_libraries", "run_command", "run_parsed"]
