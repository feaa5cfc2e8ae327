"""Launch: start one worker subprocess for a shard, keep its log, forward what matters, enforce a timeout."""

from __future__ import annotations

import collections
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from tasks.placement import worker_environment
from tasks.planning import ShardPlan, shard_paths
from tasks.worker import EXIT_PLACEMENT

LineSink = Callable[[int, str], None]

_LEVELS = {"WARNING": logging.WARNING, "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}


class WorkerFailed(RuntimeError):
    """A worker process exited non-zero or ran past its timeout; the message ends with its last lines."""


class NotRetryable(WorkerFailed):
    """A shard failure that a retry cannot mend."""


class PlacementFailed(NotRetryable):
    """The worker landed on a GPU other than its planned one."""


class RunAborted(NotRetryable):
    """Another shard of the run failed in a way that invalidates the whole run, so this one was stopped."""


# Workers running in this process, by run dir, so that a placement mismatch in one shard stops its
# siblings at once instead of letting them OCR pages into a run that is already invalid.
_lock = threading.Lock()
_running: dict[Path, set[subprocess.Popen]] = collections.defaultdict(set)
_aborted: dict[Path, str] = {}


def abort_run(run_dir: Path, reason: str) -> None:
    """Stop every worker of the run and refuse new ones until `reset_run`."""
    with _lock:
        _aborted[run_dir] = reason
        for process in _running[run_dir]:
            process.kill()


def reset_run(run_dir: Path) -> None:
    with _lock:
        _aborted.pop(run_dir, None)


def worker_command(run_dir: Path, spec: ShardPlan) -> list[str]:
    command = [sys.executable, "-m", "tasks.worker", "--run-dir", str(run_dir), "--shard", str(spec.shard)]
    if spec.device.is_gpu:
        command += ["--gpu-id", str(spec.device.gpu_id)]
    return command


def run_worker(run_dir: Path, spec: ShardPlan, timeout_s: float, sink: LineSink) -> None:
    """Run the shard's worker to the end; raise `WorkerFailed` unless it exits 0 in time."""
    log_path = shard_paths(run_dir, spec.shard)["log"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = worker_environment(os.environ, {**spec.env, "PYTHONUNBUFFERED": "1"})
    with _lock:
        if run_dir in _aborted:
            raise RunAborted(f"shard {spec.shard}: not started, the run was stopped: {_aborted[run_dir]}")
        # Same process group as the flow: cancelling the flow run kills its group, and so every worker.
        process = subprocess.Popen(worker_command(run_dir, spec), env=env, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        _running[run_dir].add(process)
    try:
        _wait(process, run_dir, spec, timeout_s, log_path, sink)
    finally:
        with _lock:
            _running[run_dir].discard(process)


def _wait(process: subprocess.Popen, run_dir: Path, spec: ShardPlan, timeout_s: float, log_path: Path,
          sink: LineSink) -> None:
    tail: collections.deque[str] = collections.deque(maxlen=20)
    reader = threading.Thread(target=_pump, args=(process, log_path, tail, sink), daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        reader.join(timeout=5)
        raise WorkerFailed(f"shard {spec.shard}: worker ran past shard_timeout_s={timeout_s:g}s and was killed")
    finally:
        if process.poll() is None:  # interrupted while waiting: never leave a worker behind
            process.kill()
            process.wait()
    reader.join(timeout=5)
    if code == 0:
        return
    last = "\n".join(tail)
    message = f"shard {spec.shard}: worker exited with code {code}; see {log_path}; last lines:\n{last}"
    if code == EXIT_PLACEMENT:
        abort_run(run_dir, f"shard {spec.shard} landed on the wrong GPU")
        raise PlacementFailed(message)
    if run_dir in _aborted:
        raise RunAborted(f"shard {spec.shard}: stopped because {_aborted[run_dir]}")
    raise WorkerFailed(message)


def _pump(process: subprocess.Popen, log_path: Path, tail: collections.deque, sink: LineSink) -> None:
    with open(log_path, "a", encoding="utf-8") as log_file:
        for line in process.stdout:
            log_file.write(line)
            log_file.flush()
            line = line.rstrip("\n")
            tail.append(line)
            level_name, _, rest = line.partition(" ")
            level = _LEVELS.get(level_name)
            if level is not None:
                sink(level, rest.partition(": ")[2] or rest)
            elif line.startswith("INFO tasks.worker: "):
                sink(logging.INFO, line.removeprefix("INFO tasks.worker: "))
