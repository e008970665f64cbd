"""An unexpected exception (a bug, an accident of the environment) as exit 4, never Python's exit 1.

CI reads exit 1 as BLOCK: a traceback must never look like a verdict about the model. The traceback goes
to a harness.log (the run folder's when the run got that far, else the folder the command was given, else
the current directory); the user gets one line naming the exception and that file."""
from __future__ import annotations

import traceback
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["CRASH_EXIT", "attach_log", "record_crash"]

CRASH_EXIT = 4
_LOG_ATTR = "harness_log"


def attach_log(exc: BaseException, log_path: Path, written: bool) -> None:
    """Tell the CLI which harness.log belongs to this exception, and whether its traceback is already there."""
    try:
        setattr(exc, _LOG_ATTR, (log_path, written))
    except (AttributeError, TypeError):  # an exception type that takes no attributes: the fallback log is used
        pass


def record_crash(exc: BaseException, folder: Path | None) -> str:
    """Write the traceback to the right harness.log; return the one line for standard error."""
    log_path, written = getattr(exc, _LOG_ATTR, (None, False))
    if log_path is None:
        log_path = (folder if folder is not None and folder.is_dir() else Path.cwd()) / "harness.log"
    if not written:
        text = "".join(traceback.format_exception(exc))
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(f"{stamp} ERROR internal error\n{text}")
        except OSError as err:
            return (f"harness: internal error: {type(exc).__name__}: {_first_line(exc)} (the traceback could not be "
                    f"written to {log_path}: {err.strerror or err}); exit 4")
    return f"harness: internal error: {type(exc).__name__}: {_first_line(exc)} (traceback in {log_path}); exit 4"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:300] if text else "(no message)")
