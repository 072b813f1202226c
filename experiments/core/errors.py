"""User errors as one line, not a traceback: every entry point runs its `main` through `cli`.

A user error is a mistake the user can fix by changing a command, a config or a file: an unknown
config key, an impossible value, a missing data file, a malformed TOML file, a results folder that
cannot be written, a damaged result, a run another process is training. Such an error prints as one
line on stderr naming the file or key and the fix, and exits with status 2; Ctrl-C prints
"interrupted; rerun the same command to resume" and exits with 130. `--debug` on the command line
(or MULTIRATE_DEBUG=1) shows the full traceback instead. Any other exception is a bug and keeps its
traceback.

    if __name__ == "__main__":
        errors.cli(main)
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Callable

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
DEBUG_FLAG = "--debug"
DEBUG_ENV = "MULTIRATE_DEBUG"


class UserError(ValueError):
    """An error whose message alone tells the user what to change (a ValueError, as config errors are)."""


def one_line(err: BaseException) -> str:
    """The message to show for a user error: its text on one line, with the file an OSError names."""
    if isinstance(err, PermissionError):
        return (f"cannot write {err.filename}: {err.strerror.lower()}; "
                "choose a writable folder with results_dir=PATH" if err.filename else str(err))
    if isinstance(err, OSError) and err.filename:
        return f"{err.filename}: {err.strerror}"
    return " ".join(str(err).split()) or type(err).__name__


def cli(main: Callable[[], object]) -> None:
    """Run an entry point's `main()` (which reads sys.argv), turning user errors into one line.

    `--debug` is taken out of sys.argv before `main` parses it. An int that `main` returns is the
    exit status; any other return value is ignored.
    """
    debug = DEBUG_FLAG in sys.argv[1:] or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    sys.argv[1:] = [arg for arg in sys.argv[1:] if arg != DEBUG_FLAG]
    try:
        status = main()
        if isinstance(status, int) and not isinstance(status, bool):
            raise SystemExit(status)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted; rerun the same command to resume", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None
    except (ValueError, OSError, tomllib.TOMLDecodeError) as err:  # UserError is a ValueError
        if debug:
            raise
        print(f"error: {one_line(err)}  ({DEBUG_FLAG} or {DEBUG_ENV}=1 shows the traceback)",
              file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
