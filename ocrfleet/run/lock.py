"""Locks: one run per output dir, and one run per GPU at a time on a machine.

Both are operating-system file locks (`flock`; `msvcrt.locking` on Windows), which the kernel
releases when the holding process dies however it dies, so a lock left by a killed run is simply
taken by the next one. The lock file also says who holds it, for the message that refuses a second run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from ocrfleet.plan.devices import Device
from ocrfleet.run.rundir import LOCK_NAME, check_run_dir_usable, claim_run_dir

log = logging.getLogger(__name__)


class RunDirBusy(RuntimeError):
    """Another live run holds the output dir."""


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def describe(holder: dict) -> str:
    if not holder:
        return "another process (it left no details)"
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')} "
            f"({holder.get('what', '?')})")


@contextlib.contextmanager
def _file_lock(path: Path, what: str) -> Iterator[dict | None]:
    """Hold an exclusive lock on `path`; yields None when another process holds it (and its details)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            yield _holder(path)
            return
        stale = _holder(path)
        if stale:
            log.info("taking over %s, left by %s, which no longer holds it", path, describe(stale))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        try:
            yield None
        finally:
            os.ftruncate(fd, 0)  # released cleanly: no holder left to report
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def hold_run_dir(run_dir: Path, what: str = "ocrfleet run") -> Iterator[None]:
    """Claim the output dir (`ocrfleet.run.rundir`) and hold it for this run; raise `RunDirBusy` naming the live
    holder, `RunDirRefused` for a folder that is not a run's to write into."""
    claim_run_dir(Path(run_dir))
    with _file_lock(Path(run_dir) / LOCK_NAME, what) as holder:
        if holder is not None:
            raise RunDirBusy(f"{run_dir} is in use by {describe(holder)}; wait for it to finish, or use "
                             "another --output")
        yield


def check_run_dir(run_dir: Path) -> None:
    """Raise `RunDirRefused` or `RunDirBusy` if a run could not take the output dir (a preflight: holds and
    creates nothing)."""
    check_run_dir_usable(run_dir)
    lock = Path(run_dir) / LOCK_NAME
    if lock.exists():
        with _file_lock(lock, "preflight check") as holder:
            if holder is not None:
                raise RunDirBusy(f"{run_dir} is in use by {describe(holder)}; wait for it to finish, or use "
                                 "another --output")


def device_lock_dir() -> Path:
    return Path(os.environ.get("OCRFLEET_LOCK_DIR") or Path(tempfile.gettempdir()) / "ocrfleet-locks")


@contextlib.contextmanager
def hold_devices(devices: list[Device], what: str, poll_s: float = 5.0,
                 say=log.warning) -> Iterator[None]:
    """Hold every GPU of a run, machine-wide, waiting while another run uses one (no double booking).

    GPUs are taken in UUID order, so two runs wanting overlapping sets cannot deadlock. CPU devices
    are not locked: CPU runs share the machine's cores by design.
    """
    uuids = sorted({device.uuid for device in devices if device.is_gpu and device.uuid})
    with contextlib.ExitStack() as stack:
        for uuid in uuids:
            path = device_lock_dir() / f"{uuid}.lock"
            waited = 0.0
            while True:
                lock = _file_lock(path, what)
                holder = lock.__enter__()
                if holder is None:
                    stack.push(lock)  # held until the run ends
                    break
                lock.__exit__(None, None, None)
                if waited == 0.0 or waited % 60 < poll_s:
                    say(f"GPU {uuid} is in use by {describe(holder)}; waiting for it")
                time.sleep(poll_s)
                waited += poll_s
        yield
