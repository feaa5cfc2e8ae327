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


class PlacementFailed(WorkerFailed):
    """The worker landed on a GPU other than its planned one; retrying cannot help."""


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
    # Same process group as the flow: cancelling the flow run kills its group, and so every worker.
    process = subprocess.Popen(worker_command(run_dir, spec), env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
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
    if code != 0:
        last = "\n".join(tail)
        error = PlacementFailed if code == EXIT_PLACEMENT else WorkerFailed
        raise error(f"shard {spec.shard}: worker exited with code {code}; see {log_path}; last lines:\n{last}")


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
