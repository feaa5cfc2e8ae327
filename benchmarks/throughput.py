"""Overhead, scaling, start-up and busy fraction: one alternating series of 1-worker, loop and 2-worker runs."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

from ocrfleet.plan.models import DEFAULT_PRESET, DET_LIMIT
from benchmarks import corpus
from benchmarks.fleet import ROOT, FleetRun, bench_env, run_fleet
from benchmarks.report import Figure, figure, median_ratio

GROUPS = ("overhead", "scaling", "startup", "busy")


def plain_loop(pages: list[Path], engine: str, threads: int, via_ocrfleet_engine: bool = False,
               rec_batch: int = 6, det_max_side: int = DET_LIMIT[0], models: str = DEFAULT_PRESET) -> dict:
    """One run of `benchmarks.plain_loop` in its own process, with the same thread variables as a worker."""
    command = [sys.executable, "-m", "benchmarks.plain_loop", "--engine", engine, "--threads", str(threads),
               "--models", models,
               "--rec-batch", str(rec_batch), *(["--via-ocrfleet-engine"] if via_ocrfleet_engine else []),
               "--det-max-side", str(det_max_side), *map(str, pages)]
    done = subprocess.run(command, env=bench_env(threads), cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(quick: bool, work: Path) -> list[Figure]:
    folder = corpus.uniform(4, lines=8) if quick else corpus.uniform(20)
    pages = sorted(folder.glob("*.png"))
    reps = 1 if quick else 3
    one: list[FleetRun] = []
    two: list[FleetRun] = []
    loops: list[dict] = []
    for rep in range(reps):  # A B C, A B C, ...: drift on a shared machine hits every side alike
        one.append(run_fleet([folder], work / f"one-{rep}", workers=1, threads=1))
        loops.append(plain_loop(pages, "onnxruntime", threads=1))
        two.append(run_fleet([folder], work / f"two-{rep}", workers=2, threads=1))
    on = f"{len(pages)} pages of {folder.name}, onnxruntime engine, 1 thread per process, {reps} alternating rep(s)"
    return [_overhead(one, loops, on), *_one_time(one + two, loops), _scaling(one, two, on),
            _startup(one + two, on), _busy(one + two, on)]


def _one_time(runs: list[FleetRun], loops: list[dict]) -> list[Figure]:
    """What a run pays once, outside the pages/s figures: shown, not judged."""
    load = statistics.median(run.model_load_s for run in runs)
    loop_load = statistics.median(result["load_s"] for result in loops)
    to_worker = statistics.median(run.watched.worker_start_s or 0 for run in runs)
    return [
        figure("overhead", "model load in a worker (loop: same models)", load, "s", "", None,
               f"largest `model_load_s` of each run's reports, median over {len(runs)} runs; the plain loop's "
               f"PaddleOCR construction took {loop_load:.2f} s."),
        figure("overhead", "command start to worker process (Python, Prefect, plan)", to_worker, "s", "", None,
               f"`ocrfleet run` start to the first `ocrfleet.run.worker` process seen (polled every 0.1 s), median over "
               f"{len(runs)} runs."),
    ]


def _overhead(one: list[FleetRun], loops: list[dict], on: str) -> Figure:
    fleet = [run.pages / run.reports[0]["ocr_s"] for run in one]
    loop = [result["pages"] / result["ocr_s"] for result in loops]
    ratio = median_ratio(fleet, loop)
    extra_ms = statistics.median(1000 / f - 1000 / b for f, b in zip(fleet, loop))
    prefect = statistics.median(run.watched.worker_start_s or 0 for run in one)
    detail = (f"ocrfleet 1 worker (pages / the shard report's ocr_s) vs an in-process `PaddleOCR.predict(path)` loop "
              f"(pages / OCR time after construction); {on}. Medians: ocrfleet {statistics.median(fleet):.3f} pages/s, "
              f"loop {statistics.median(loop):.3f} pages/s; one-time costs, not in the ratio: model load "
              f"{statistics.median(run.model_load_s for run in one):.2f} s in the worker vs "
              f"{statistics.median(r['load_s'] for r in loops):.2f} s in the loop, command start to worker process "
              f"(Prefect + plan) {prefect:.1f} s.")
    why = (f"ocrfleet spends {extra_ms:.0f} ms more per page than the loop: its per-page work beyond `predict` is "
           "decoding with Pillow, building the record and appending + flushing one JSON line (plus any per-page "
           "outputs); profile `ocrfleet.run.worker.run_shard` on this corpus to see which.")
    return figure("overhead", "overhead: ocrfleet 1 worker / plain PaddleOCR loop (pages/s)", ratio, "x",
                  ">= 0.95x", ratio >= 0.95, detail, why)


def _scaling(one: list[FleetRun], two: list[FleetRun], on: str) -> Figure:
    ratio = median_ratio([r.pages / r.ocr_phase_s for r in two], [r.pages / r.ocr_phase_s for r in one])
    per_worker = median_ratio([sum(rep["pages_per_s"] for rep in r.reports) for r in two],
                              [r.reports[0]["pages_per_s"] for r in one])
    imbalance = statistics.median(max(rep["ocr_s"] for rep in r.reports) / min(rep["ocr_s"] for rep in r.reports)
                                  for r in two)
    share_one, share_two = _cpu_share(one), _cpu_share(two)
    detail = (f"2 workers x 1 thread vs 1 worker x 1 thread; throughput = pages / OCR phase (first shard's first "
              f"page to last shard's last page, from the reports); {on}. Sum of per-worker pages/s gives "
              f"{per_worker:.2f}x; slowest/fastest shard OCR time {imbalance:.2f}. The same method carries over to "
              "N GPUs (`--devices gpu:0..N-1`, target >= 0.95 N).")
    why = (f"per-worker speed ratio {per_worker:.2f}x says how much the two workers slow each other (shared cores, "
           f"memory bandwidth, other load on the machine): each worker got {share_two:.2f} CPU-seconds per second "
           f"of its life with 2 workers, {share_one:.2f} alone (below 1.0: it waited for a core). Shard imbalance "
           f"{imbalance:.2f}: the two shards hold equal work (identical pages, costed by pixel count), so it is one "
           "worker running slower than the other on the shared cores, after which the faster one idles. On N GPUs "
           "each worker has a device of its own and the CPU work per page is small, so neither applies; here, a "
           "machine with a spare core for the flow process and the API beside the 2 workers would close both.")
    return figure("scaling", "scaling: 2 workers / 1 worker (OCR-phase pages/s)", ratio, "x", ">= 1.85x",
                  ratio >= 1.85, detail, why)


def _cpu_share(runs: list[FleetRun]) -> float:
    return statistics.median(run.watched.worker_cpu_share() for run in runs)


def _startup(runs: list[FleetRun], on: str) -> Figure:
    beyond = [r.watched.first_record_s - r.model_load_s - r.reports[0]["ocr_s"] / r.reports[0]["pages_ok"]
              for r in runs if r.watched.first_record_s is not None]
    value = statistics.median(beyond) if beyond else None
    to_worker = statistics.median(r.watched.worker_start_s or 0 for r in runs)
    detail = (f"command start to the first record on disk (polled every 0.1 s), minus the worker's model load and "
              f"one page's OCR time; median over {len(runs)} runs of the throughput series ({on}). Of it, command "
              f"start to worker process: {to_worker:.1f} s (Python + Prefect's local API + planning).")
    why = ("most of it is Prefect's ephemeral API starting in-process; a long-lived `prefect server start` "
           "(PREFECT_API_URL) removes it from every run.")
    return figure("startup", "start-up beyond model load (to first page)", value, "s", "<= 10 s",
                  None if value is None else value <= 10, detail, why)


def _utilization(runs: list[FleetRun]) -> str:
    """Every numeric report field named like `*util*` (NVML utilization, once reports carry it), as medians."""
    values: dict[str, list[float]] = {}
    for rep in (rep for r in runs for rep in r.reports):
        for key, value in rep.items():
            if "util" in key and isinstance(value, (int, float)):
                values.setdefault(key, []).append(value)
    return "; ".join(f"`{key}` median {statistics.median(found):.3g}" for key, found in sorted(values.items()))


def _busy(runs: list[FleetRun], on: str) -> Figure:
    fractions = [min(rep["busy_fraction"] for rep in r.reports) for r in runs
                 if all("busy_fraction" in rep for rep in r.reports)]
    value = statistics.median(fractions) if fractions else None
    detail = (f"lowest shard `busy_fraction` in each run's reports, median over runs; {on}. "
              f"Utilization fields in the reports: {_utilization(runs) or 'n/a (none yet, or no GPU)'}.")
    why = ("reports carry no `busy_fraction` yet (the worker must record the share of its OCR phase spent inside "
           "the engine)" if value is None else
           "the worker waits outside the engine between pages (decode, record write); prefetching the next page's "
           "pixels on a thread overlaps them.")
    return figure("busy", "worker busy fraction (steady state)", value, "", ">= 0.95",
                  None if value is None else value >= 0.95, detail, why)
