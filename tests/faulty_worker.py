"""A worker for tests only: the real `ocrfleet.run.worker.main` with a fake engine that fails on chosen pages.

`OCRFLEET_TEST_FAULTS` (JSON) says which pages, by the image's width in pixels:
`{"crash": [w, ...], "crash_once": [w, ...], "hang": [w, ...], "terminate": [w, ...], "leak_mb": n}`; `crash_once` needs
`OCRFLEET_TEST_STATE` (a folder) to remember that it crashed already. `{"disk_bytes": n}` makes the shard's records
file a nearly full disk: a write that would grow it past n bytes fails with ENOSPC. Production code never imports
this module: tests point `ocrfleet.run.launch.WORKER_MODULE` at it.
"""

import builtins
import errno
import json
import os
import signal
import sys
import time
from pathlib import Path

from ocrfleet.records import TextLine
from ocrfleet.run import worker
from ocrfleet.run.worker import main

BOX = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
_leaked = []


class FaultyEngine:
    def __init__(self, models, device, threads, rec_batch_size=6, **options):
        self.faults = json.loads(os.environ.get("OCRFLEET_TEST_FAULTS", "{}"))

    def __call__(self, image):
        width = image.shape[1]
        if width in self.faults.get("crash", ()):
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a segfault would
        if width in self.faults.get("crash_once", ()):
            marker = Path(os.environ["OCRFLEET_TEST_STATE"]) / f"crashed-{width}"
            if not marker.exists():
                marker.write_text("")
                os.kill(os.getpid(), signal.SIGKILL)
        if width in self.faults.get("terminate", ()):
            os.kill(os.getpid(), signal.SIGTERM)  # as a cancelled flow run's process-group signal would
        if width in self.faults.get("hang", ()):
            time.sleep(3600)
        if self.faults.get("leak_mb"):
            _leaked.append(b"\x01" * (self.faults["leak_mb"] * 2**20))  # touched, so resident
        return [TextLine(text=f"w{width}", score=1.0, box=BOX)]


class FullDisk:
    """A records file on a disk with room for `limit` bytes: a write past it raises ENOSPC, as the kernel would."""

    def __init__(self, handle, limit):
        self._handle, self._limit = handle, limit

    def write(self, text):
        self._handle.flush()
        if os.fstat(self._handle.fileno()).st_size + len(text.encode()) > self._limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._handle.name)
        return self._handle.write(text)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._handle.close()


def _open_on_full_disk(limit):
    def fake_open(path, *args, **kwargs):
        handle = builtins.open(path, *args, **kwargs)
        return FullDisk(handle, limit) if str(path).endswith(".jsonl") else handle

    return fake_open


if __name__ == "__main__":
    disk_bytes = json.loads(os.environ.get("OCRFLEET_TEST_FAULTS", "{}")).get("disk_bytes")
    if disk_bytes:
        worker.open = _open_on_full_disk(disk_bytes)  # the worker's own `open`, shadowing the builtin
    sys.exit(main(engine_factory=FaultyEngine))
