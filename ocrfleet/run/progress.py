"""Progress in the terminal: a bar for `ocrfleet run`, from what workers write, not from their logs.

Counting finished lines in `records/*.jsonl` needs nothing from the workers or Prefect, and reading
only the bytes added since the last look keeps it cheap on runs of millions of pages.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from ocrfleet.plan.planning import Plan, read_plan


class RecordCounter:
    """Finished records across a run's records files, read incrementally."""

    def __init__(self, run_dir: Path) -> None:
        self._folder = run_dir / "records"
        self._seen: dict[Path, tuple[int, int]] = {}  # file -> (bytes read, newlines in them)

    def count(self) -> int:
        total = 0
        for path in self._folder.glob("*.jsonl") if self._folder.exists() else ():
            offset, lines = self._seen.get(path, (0, 0))
            try:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
            except OSError:
                continue
            self._seen[path] = (offset + len(data), lines + data.count(b"\n"))
            total += self._seen[path][1]
        return total


def bar(done: int, total: int, rate: float, width: int = 30) -> str:
    fraction = done / total if total else 1.0
    filled = int(width * fraction)
    eta = f" ETA {_duration((total - done) / rate)}" if rate > 0 and done < total else ""
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total} pages {fraction:6.1%} {rate:5.1f} pages/s{eta}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class ProgressBar:
    """Draws the bar on a thread until stopped; on a terminal it redraws in place, elsewhere a line a minute."""

    def __init__(self, run_dir: Path, stream: TextIO = sys.stderr, interval_s: float | None = None) -> None:
        self._run_dir, self._stream = run_dir, stream
        self._tty = stream.isatty()
        self._interval_s = interval_s or (0.5 if self._tty else 60.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress-bar", daemon=True)
        self._started = time.time()

    def __enter__(self) -> ProgressBar:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _plan(self) -> Plan | None:
        # A run.json older than this command belongs to an earlier run: wait for this run's plan.
        path = self._run_dir / "run.json"
        try:
            if os.stat(path).st_mtime < self._started - 1:
                return None
            return read_plan(self._run_dir)
        except (OSError, ValueError):
            return None

    def _run(self) -> None:
        plan = self._plan()
        while plan is None:
            stopping = self._stop.wait(min(0.5, self._interval_s))
            plan = self._plan()
            if stopping and plan is None:
                return
        total = plan.pages_total - plan.pages_skipped
        counter, began = RecordCounter(self._run_dir), time.monotonic()
        done = 0
        while not self._stop.wait(self._interval_s):
            done = min(counter.count(), total)
            self._draw(bar(done, total, done / max(time.monotonic() - began, 1e-6)))
        done = min(counter.count(), total)
        self._draw(bar(done, total, done / max(time.monotonic() - began, 1e-6)), last=True)

    def _draw(self, text: str, last: bool = False) -> None:
        if self._tty:
            self._stream.write("\r" + text + ("\n" if last else ""))
        else:
            self._stream.write(text + "\n")
        self._stream.flush()
