"""Launch: run one shard's worker subprocess to the end: restart it when it dies, quarantine poison pages.

The parent keeps the worker's full log, forwards what matters, and enforces the shard and page timeouts.
A worker that dies (segfault, OOM kill, CUDA error) or hangs is restarted on the same device and
resumes after its last record; the page it had in flight is blamed, and a page in flight during
`max_page_crashes` deaths gets a failed record (`WorkerCrashed` or `PageTimeout`) so the rest goes on.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ocrfleet.plan.placement import worker_environment
from ocrfleet.plan.planning import Plan, ShardPlan, read_manifest, read_plan, shard_paths
from ocrfleet.records import PageRecord, complete_records
from ocrfleet.run.worker import EXIT_BAD_INVOCATION, EXIT_PLACEMENT, EXIT_RECYCLE, EXIT_STORAGE, PAGE_MARK

LineSink = Callable[[int, str], None]

_LEVELS = {"WARNING": logging.WARNING, "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}


class WorkerFailed(RuntimeError):
    """A worker process exited non-zero or ran past its timeout; the message ends with its last lines."""


class NotRetryable(WorkerFailed):
    """A shard failure that a retry cannot mend."""


class PlacementFailed(NotRetryable):
    """The worker landed on a GPU other than its planned one."""


class WorkerStopped(NotRetryable):
    """The worker was stopped by a signal from outside (a cancelled flow run, a machine shutting down)."""


class StorageFailed(NotRetryable):
    """The run dir's storage failed (full disk, quota, read-only, I/O error): the machine's fault, no page's."""


class RunAborted(NotRetryable):
    """Another shard of the run failed in a way that invalidates the whole run, so this one was stopped."""


class RunCancelled(RunAborted):
    """The run was cancelled, so this shard was stopped (or never started): an outcome, not a failure."""


# Workers running in this process, by run dir, so that a placement mismatch in one shard stops its
# siblings at once instead of letting them OCR pages into a run that is already invalid.
_lock = threading.Lock()
_running: dict[Path, set[subprocess.Popen]] = collections.defaultdict(set)
_aborted: dict[Path, str] = {}
_cancelled: set[Path] = set()


def abort_run(run_dir: Path, reason: str, cancelled: bool = False) -> None:
    """Stop every worker of the run and refuse new ones until `reset_run`; `cancelled`: the shards end as
    `RunCancelled` rather than `RunAborted`."""
    with _lock:
        _aborted[run_dir] = reason
        if cancelled:
            _cancelled.add(run_dir)
        for process in _running[run_dir]:
            process.kill()


def reset_run(run_dir: Path) -> None:
    with _lock:
        _aborted.pop(run_dir, None)
        _cancelled.discard(run_dir)


# The module run as the worker; tests point this at a wrapper that injects faults.
WORKER_MODULE = "ocrfleet.run.worker"

# Pages quarantined one after another with nothing recorded between them: the device or the
# environment is broken, not the pages, so stop blaming pages and fail the shard.
_MAX_QUARANTINE_STREAK = 3
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})


def worker_command(run_dir: Path, spec: ShardPlan, careful: bool = False) -> list[str]:
    command = [sys.executable, "-m", WORKER_MODULE, "--run-dir", str(run_dir), "--shard", str(spec.shard),
               "--watch-parent"]
    if spec.device.is_gpu:
        command += ["--gpu-id", str(spec.device.gpu_id)]
    if careful:
        command.append("--careful")
    return command


@dataclass
class _Attempt:
    """How one worker process ended."""

    code: int | None  # None: killed at the shard's deadline
    in_flight: int | None  # manifest position of the page it was on, from its `@page` lines
    hung: bool = False
    tail: str = ""  # its last lines, for the error message


class _Watch:
    """What the log pump learns from a worker's output: the page in flight and since when."""

    def __init__(self) -> None:
        self.page: int | None = None
        self.since = time.monotonic()

    def saw(self, line: str) -> bool:
        if not line.startswith(PAGE_MARK):
            return False
        self.page, self.since = int(line[len(PAGE_MARK):]), time.monotonic()
        return True


def run_worker(run_dir: Path, spec: ShardPlan, sink: LineSink, timeout_s: float | None = None) -> None:
    """Run the shard's worker until the shard is done; raise `WorkerFailed` when it cannot be."""
    plan = read_plan(run_dir)
    timeout_s = timeout_s or plan.config.shard_timeout_s
    deadline = time.monotonic() + timeout_s
    crashes: collections.Counter[int] = collections.Counter()
    careful, streak, recorded_at_quarantine = False, 0, -1
    while True:
        attempt = _run_once(run_dir, spec, sink, careful, deadline, plan.config.page_timeout_s)
        if attempt.code == 0:
            sink(logging.INFO, f"shard {spec.shard}: worker finished")
            return
        if attempt.code == EXIT_RECYCLE:
            sink(logging.INFO, f"shard {spec.shard}: worker recycled for memory; restarting it")
            continue
        if attempt.code is None:
            raise WorkerFailed(f"shard {spec.shard}: worker ran past shard_timeout_s={timeout_s:g}s and was killed")
        page = _blamed_page(run_dir, spec.shard, attempt.in_flight)
        if page is None or streak >= _MAX_QUARANTINE_STREAK:
            raise WorkerFailed(_failure_message(run_dir, spec, attempt))
        crashes[page] += 1
        careful = True  # from now on one page at a time, so the next death is blamed on the right page
        what = f"hung past page_timeout_s={plan.config.page_timeout_s:g}s" if attempt.hung else \
            f"died (exit code {attempt.code})"
        if crashes[page] >= plan.config.max_page_crashes:
            recorded = len(complete_records(shard_paths(run_dir, spec.shard)["records"]))
            streak = streak + 1 if recorded == recorded_at_quarantine else 1
            source = _quarantine(run_dir, plan, spec, page, attempt, crashes[page])
            recorded_at_quarantine = recorded + 1
            sink(logging.WARNING, f"shard {spec.shard}: worker {what} on {source} (manifest line {page + 1}); "
                                  f"in flight in {crashes[page]} deaths, recorded as failed; going on")
        else:
            sink(logging.WARNING, f"shard {spec.shard}: worker {what} on manifest line {page + 1}; restarting "
                                  f"it on {spec.device.name} ({crashes[page]}/{plan.config.max_page_crashes})")


def _run_once(run_dir: Path, spec: ShardPlan, sink: LineSink, careful: bool, deadline: float,
              page_timeout_s: float) -> _Attempt:
    """Start the worker and wait for it; code None means the shard's deadline passed."""
    log_path = shard_paths(run_dir, spec.shard)["log"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = worker_environment(os.environ, {**spec.env, "PYTHONUNBUFFERED": "1"})
    with _lock:
        if run_dir in _aborted:
            stopped = RunCancelled if run_dir in _cancelled else RunAborted
            raise stopped(f"shard {spec.shard}: not started, the run was stopped: {_aborted[run_dir]}")
        # Same process group as the flow: cancelling the flow run kills its group, and so every worker.
        # stdin is a pipe the worker watches: if this process dies anyhow, the worker exits too.
        process = subprocess.Popen(worker_command(run_dir, spec, careful), env=env, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        _running[run_dir].add(process)
    sink(logging.INFO, f"shard {spec.shard}: worker pid {process.pid} started on {spec.device.name}"
                       f"{' (careful: one page at a time)' if careful else ''}")
    watch = _Watch()
    tail: collections.deque[str] = collections.deque(maxlen=20)
    reader = threading.Thread(target=_pump, args=(process, log_path, tail, sink, watch), daemon=True)
    reader.start()
    hung = False
    try:
        while process.poll() is None:
            now = time.monotonic()
            if now > deadline:
                return _Attempt(code=None, in_flight=watch.page)
            if watch.page is not None and now - watch.since > page_timeout_s:
                hung = True
                break
            try:
                process.wait(timeout=min(1.0, max(0.01, deadline - now)))
            except subprocess.TimeoutExpired:
                pass
    finally:
        if process.poll() is None:  # hung, past the deadline, or interrupted: never leave a worker behind
            process.kill()
            process.wait()
        reader.join(timeout=5)
        process.stdin.close()
        with _lock:
            _running[run_dir].discard(process)
    attempt = _Attempt(code=process.returncode, in_flight=watch.page, hung=hung, tail="\n".join(tail))
    if attempt.code == EXIT_PLACEMENT:
        abort_run(run_dir, f"shard {spec.shard} landed on the wrong GPU")
        raise PlacementFailed(_failure_message(run_dir, spec, attempt))
    if attempt.code != 0 and run_dir in _aborted:
        stopped = RunCancelled if run_dir in _cancelled else RunAborted
        raise stopped(f"shard {spec.shard}: stopped because {_aborted[run_dir]}")
    if attempt.code == EXIT_STORAGE:
        abort_run(run_dir, f"shard {spec.shard} could not write to the run dir")
        said = next((line for line in reversed(tail) if "storage error" in line), attempt.tail)
        raise StorageFailed(f"shard {spec.shard}: the run dir's storage failed, so the run stops and no page is "
                            f"blamed: {said.partition('stopping: ')[2] or said}; free space (or fix the file system) "
                            "and run again: it resumes from the records written")
    if attempt.code == EXIT_BAD_INVOCATION:
        raise NotRetryable(_failure_message(run_dir, spec, attempt))
    if attempt.code is not None and -attempt.code in _STOP_SIGNALS:
        # Cancelling a flow run signals its whole process group: restarting the worker would undo the cancel.
        raise WorkerStopped(f"shard {spec.shard}: worker stopped by {signal.Signals(-attempt.code).name}, not "
                            "restarted (the run is being cancelled or the machine is shutting down); a rerun resumes")
    return attempt


def _failure_message(run_dir: Path, spec: ShardPlan, attempt: _Attempt) -> str:
    log_path = shard_paths(run_dir, spec.shard)["log"]
    return (f"shard {spec.shard}: worker exited with code {attempt.code}; see {log_path}; last lines:\n"
            f"{attempt.tail}")


def _blamed_page(run_dir: Path, shard: int, in_flight: int | None) -> int | None:
    """The page in flight when the worker died, unless its record was written before the death."""
    if in_flight is None:
        return None  # died loading the model or before its first page: not a page's fault
    page = read_manifest(run_dir, shard)[in_flight]
    recorded = {record.key for record in complete_records(shard_paths(run_dir, shard)["records"])}
    return None if page.key in recorded else in_flight


def _quarantine(run_dir: Path, plan: Plan, spec: ShardPlan, position: int, attempt: _Attempt, deaths: int) -> str:
    """Record the poison page as failed, so the restarted worker skips it. The worker is dead: no other writer."""
    page = read_manifest(run_dir, spec.shard)[position]
    path = shard_paths(run_dir, spec.shard)["records"]
    complete_records(path)  # cuts a torn last line before appending
    if attempt.hung:
        error_class, error = "PageTimeout", f"in flight past page_timeout_s={plan.config.page_timeout_s:g}s " \
                                            f"{deaths} times; the worker was killed each time"
    else:
        error_class, error = "WorkerCrashed", f"the worker died {deaths} times while on this page " \
                                              f"(last exit code {attempt.code})"
    record = PageRecord.failed(page, error_class, error, shard=spec.shard, device=spec.device.name,
                               settings=plan.settings_for(page))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as out:
        out.write(record.model_dump_json() + "\n")
    return page.source


def _pump(process: subprocess.Popen, log_path: Path, tail: collections.deque, sink: LineSink,
          watch: _Watch) -> None:
    with open(log_path, "a", encoding="utf-8") as log_file:
        for line in process.stdout:
            if not log_file.closed:
                try:
                    log_file.write(line)
                    log_file.flush()
                except OSError as exc:  # a full disk: keep reading, or the worker blocks on a full pipe
                    sink(logging.WARNING, f"cannot write the worker's log {log_path}: {exc}; no longer writing it")
                    with contextlib.suppress(OSError):
                        log_file.close()
            line = line.rstrip("\n")
            if watch.saw(line):
                continue
            tail.append(line)
            level_name, _, rest = line.partition(" ")
            level = _LEVELS.get(level_name)
            if level is not None:
                sink(level, rest.partition(": ")[2] or rest)
            elif line.startswith("INFO ocrfleet.run.worker: "):
                sink(logging.INFO, line.removeprefix("INFO ocrfleet.run.worker: "))
