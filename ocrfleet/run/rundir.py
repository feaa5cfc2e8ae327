"""The run dir: which folders a run may take as its output dir, and the marker that says one is a run dir.

A run writes, clears and prunes files only inside a folder it owns: one it created, or found empty, and
marked with `.ocrfleet-run` before writing anything else. A non-empty folder without the marker is
somebody's data and is refused (`RunDirRefused`) before anything is written. A run dir made by an earlier
ocrfleet (no marker yet, but its `run.json` or `summary.json`) is adopted: marked and used as before.
Only the run dir itself is created, never its parents: a missing parent is refused, so a typo in a path
cannot grow a tree of folders.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = ".ocrfleet-run"
LOCK_NAME = ".ocrfleet.lock"
# What a folder may hold and still be taken as empty: a lock left by a run refused before it wrote anything.
_HARMLESS = frozenset({LOCK_NAME})
# What only an ocrfleet run dir holds, for adopting one made before the marker existed.
_EARLIER_RUN = ("run.json", "summary.json")


class RunDirRefused(ValueError):
    """The output dir is not one a run may write into: not empty and not an ocrfleet run dir, or misplaced."""


def check_run_dir_usable(run_dir: Path | str) -> None:
    """Raise `RunDirRefused` unless a run may use `run_dir` as its output dir; creates and changes nothing."""
    if str(run_dir) == "":
        raise RunDirRefused("the output dir is empty (''): name a folder for the run, e.g. --output out/run1")
    path = Path(run_dir)
    if not path.exists():
        parent = path.absolute().parent
        if not parent.is_dir():
            raise RunDirRefused(f"{path}: its parent folder {parent} does not exist; ocrfleet creates only the run "
                                "dir itself, never its parents: create the parent first (mkdir -p), or fix the path")
        return
    if not path.is_dir():
        raise RunDirRefused(f"{path}: exists and is not a folder; give a new or empty folder as the output dir")
    if is_run_dir(path) or _earlier_run_dir(path):
        return
    held = sorted(entry.name for entry in os.scandir(path) if entry.name not in _HARMLESS)
    if held:
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise RunDirRefused(f"{path}: not empty ({shown}) and not an ocrfleet run dir (no {MARKER}); a run writes "
                            "only into a new or empty folder, or the run dir of an earlier run: give another "
                            "--output (output_dir)")


def claim_run_dir(run_dir: Path) -> None:
    """Check `run_dir`, create it (not its parents) and mark it as a run dir, before anything else is written."""
    check_run_dir_usable(run_dir)
    path = Path(run_dir)
    try:
        path.mkdir()
        log.info("created the run dir %s", path)
    except FileExistsError:
        pass
    if is_run_dir(path):
        return
    if _earlier_run_dir(path):
        log.info("adopting %s, the run dir of an earlier ocrfleet version: marking it %s", path, MARKER)
    info = {"ocrfleet_run_dir": 1, "marked": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tmp = path / f".{MARKER}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
        os.replace(tmp, path / MARKER)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def is_run_dir(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


def _earlier_run_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in _EARLIER_RUN)
