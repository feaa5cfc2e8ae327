"""Run commands as a user would, watched from outside: wall time, first record, worker start, worker RSS."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml
from pydantic import BaseModel

from ocrfleet.plan.devices import THREAD_VARS

ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.1
RSS_EVERY_S = 0.5


class RssSample(BaseModel):
    t: float  # seconds since command start
    pages: int  # records on disk when sampled
    rss_mb: float  # resident memory of the first worker process


class Watched(BaseModel):
    """What one command did, seen from outside."""

    returncode: int
    wall_s: float
    started_at: float = 0.0  # wall-clock time (epoch) the command started, to place file times on its clock
    worker_start_s: float | None = None  # first worker (or peer) process seen
    first_record_s: float | None = None  # first record line on disk
    rss: list[RssSample] = []
    worker_cpu_s: dict[int, float] = {}  # CPU seconds each worker process used, last seen
    worker_seen_s: dict[int, tuple[float, float]] = {}  # first and last time each worker was seen
    other_cpu_s: dict[int, float] = {}  # the same for every other process of the tree (the orchestrator)
    orchestration: list[tuple[float, float]] = []  # (t, CPU seconds of the other processes so far)
    output_tail: str = ""

    def worker_cpu_share(self) -> float:
        """CPU seconds per wall second of each working process's life, median: below 1, it waited for a core."""
        shares = [cpu / (last - first) for pid, cpu in self.worker_cpu_s.items()
                  for first, last in [self.worker_seen_s[pid]] if cpu > 1 and last - first > 1]
        return statistics.median(shares) if shares else float("nan")

    def orchestration_cpu_between(self, start: float, end: float) -> float:
        """CPU seconds the non-worker processes used between two times (nearest samples)."""
        if not self.orchestration:
            return 0.0

        def at(t: float) -> float:
            return min(self.orchestration, key=lambda sample: abs(sample[0] - t))[1]

        return at(end) - at(start)


def bench_env(threads: int | None = None) -> dict[str, str]:
    """The environment every measured command gets: the repo importable, Prefect quiet, threads pinned."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DO_NOT_TRACK": "1"}
    if threads is not None:
        env.update({name: str(threads) for name in THREAD_VARS})
    return env


def watch(command: list[str], env: dict[str, str], records_dir: Path | None = None,
          worker_marker: str = "ocrfleet.run.worker", log: Path | None = None) -> Watched:
    """Run `command` to its end, polling its process tree and `records_dir` every 0.1 s."""
    log = log or Path(os.devnull)
    started, started_at = time.monotonic(), time.time()
    with open(log, "w") as sink:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        parent = psutil.Process(process.pid)
        seen = Watched(returncode=0, wall_s=0.0, started_at=started_at)
        last_rss = -RSS_EVERY_S
        while process.poll() is None:
            now = time.monotonic() - started
            workers, others = _tree(parent, worker_marker)
            worker = workers[0] if workers else None
            _add_cpu(seen, workers, now)
            _add_other_cpu(seen, others, now)
            if worker is not None and seen.worker_start_s is None:
                seen.worker_start_s = now
            pages = _records_on_disk(records_dir) if records_dir else 0
            if pages and seen.first_record_s is None:
                seen.first_record_s = now
            if worker is not None and now - last_rss >= RSS_EVERY_S:
                try:
                    seen.rss.append(RssSample(t=now, pages=pages, rss_mb=worker.memory_info().rss / 2**20))
                    last_rss = now
                except psutil.Error:
                    pass
            time.sleep(POLL_S)
    seen.wall_s = time.monotonic() - started
    seen.returncode = process.returncode
    if log != Path(os.devnull):
        seen.output_tail = log.read_text(errors="replace")[-2000:]
    return seen


def _tree(parent: psutil.Process, marker: str) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """The workers (command line holds `marker`) and every other process of the tree, the parent included."""
    workers, others = [], [parent]
    try:
        children = parent.children(recursive=True)
    except psutil.Error:
        return workers, others
    for child in children:
        try:
            (workers if any(marker in part for part in child.cmdline()) else others).append(child)
        except psutil.Error:
            pass
    return workers, others


def _add_other_cpu(seen: Watched, others: list[psutil.Process], now: float) -> None:
    for process in others:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        seen.other_cpu_s[process.pid] = times.user + times.system
    if not seen.orchestration or now - seen.orchestration[-1][0] >= RSS_EVERY_S:
        seen.orchestration.append((now, sum(seen.other_cpu_s.values())))


def _add_cpu(seen: Watched, workers: list[psutil.Process], now: float) -> None:
    for worker in workers:
        try:
            times = worker.cpu_times()
        except psutil.Error:
            continue
        seen.worker_cpu_s[worker.pid] = times.user + times.system
        seen.worker_seen_s[worker.pid] = (seen.worker_seen_s.get(worker.pid, (now, now))[0], now)


def _records_on_disk(records_dir: Path) -> int:
    total = 0
    for path in records_dir.glob("*.jsonl") if records_dir.is_dir() else ():
        try:
            with open(path, "rb") as handle:
                total += handle.read().count(b"\n")
        except OSError:
            pass
    return total


class FleetRun(BaseModel):
    """One `ocrfleet run`: the outside view plus what its reports and summary say."""

    watched: Watched
    reports: list[dict]
    report_mtimes: list[float]
    summary: dict

    @property
    def pages(self) -> int:
        return sum(report["pages_ok"] + report["pages_failed"] for report in self.reports)

    @property
    def ocr_phase_s(self) -> float:
        """From the first shard's first page to the last shard's last page (reports end with their shard)."""
        return max(self.report_mtimes) - self.ocr_started_at

    @property
    def ocr_started_at(self) -> float:
        """Wall-clock time the first shard began its first page."""
        return min(end - report["ocr_s"] for end, report in zip(self.report_mtimes, self.reports))

    def phases(self) -> dict[str, float]:
        """Where the wall time went, seen from outside: seconds from command start to the first worker
        process, from there to the first page (worker start-up and model load), the OCR phase, and from
        the last page to the command's exit (worker exit, reduce, outputs, Prefect shutdown)."""
        to_worker = self.watched.worker_start_s or 0.0
        to_first_page = self.ocr_started_at - self.watched.started_at
        to_last_page = max(self.report_mtimes) - self.watched.started_at
        return {"to_worker": to_worker, "to_first_page": to_first_page - to_worker, "ocr": self.ocr_phase_s,
                "after": self.watched.wall_s - to_last_page}

    @property
    def model_load_s(self) -> float:
        return max(report["model_load_s"] for report in self.reports)


def run_fleet(inputs: list[Path], out: Path, workers: int, threads: int, engine: str = "onnxruntime",
              settings: dict | None = None, api_url: str | None = None) -> FleetRun:
    """A fresh `ocrfleet run` on CPU workers, as from a shell; `settings` go in a `--config` YAML file.

    With `api_url` the flow reports to that (already running) Prefect server; without, to the ephemeral
    local API that Prefect starts for the command, whatever PREFECT_API_URL this process has.
    """
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "ocrfleet.cli", "run", *map(str, inputs), "--output", str(out),
               "--devices", f"cpu:{workers}", "--threads-per-worker", str(threads), "--engine", engine]
    if settings:
        config = out.parent / f"{out.name}.yaml"
        config.write_text(yaml.safe_dump(settings))
        command += ["--config", str(config)]
    env = bench_env()
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    log = out.parent / f"{out.name}.log"
    watched = watch(command, env, records_dir=out / "records", log=log)
    if watched.returncode != 0:
        raise RuntimeError(f"ocrfleet exited {watched.returncode}:\n{watched.output_tail}")
    if ("Starting temporary server" in log.read_text(errors="replace")) != (api_url is None):
        raise RuntimeError(f"ocrfleet did not use the Prefect API it was given ({api_url or 'ephemeral'}): see {log}")
    paths = sorted((out / "reports").glob("*.json"))
    summary_path = out / "summary.json"
    return FleetRun(watched=watched, reports=[json.loads(path.read_text()) for path in paths],
                    report_mtimes=[path.stat().st_mtime for path in paths],
                    summary=json.loads(summary_path.read_text()) if summary_path.exists() else {})
