"""GPU throughput (issue 13): pages/s per GPU for each workers_per_device tried, NVML utilization, GPU memory
per worker, busy fraction, and CER against the CPU engine's text, on real pages plus generated A4 pages.

Each setting is an `ocrfleet run --devices gpu:0` started as a user starts it (default engine and fixed
shapes: `auto`); the CPU engine's text comes from the same command on `--devices cpu`. Sized to finish
within 8 minutes on one GPU. Without a usable GPU (no driver, no GPU engine) it measures nothing and says
so: no GPU figure is ever estimated.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
from pathlib import Path

from benchmarks import corpus
from benchmarks.fleet import bench_env, watch
from benchmarks.report import Figure, figure
from benchmarks.textscore import score

REAL = Path(__file__).resolve().parent / "data" / "real"
WORKERS: tuple[int | str, ...] = (1, 4, 16, "auto")
QUICK_WORKERS: tuple[int | str, ...] = (1, "auto")
GROUP = "gpu"
NAMES = ("GPU pages/s per GPU at the default settings", "GPU pages/s from a single worker",
         "GPU utilization while pages remain (default settings)", "GPU default vs best workers_per_device tried",
         "GPU text vs the CPU engine's (CER)")
TARGETS = (">= 40 pages/s", ">= 8 pages/s", ">= 70%", ">= 0.9x (within 10%)", "<= 0.002")


def measure(quick: bool, work: Path) -> list[Figure]:
    gpu, why_not = gpu_at_hand()
    if gpu is None:
        return [figure(GROUP, name, None, "", target, None, f"not measured: no GPU in this session ({why_not})",
                       "run `python -m benchmarks.run --only gpu` on a machine with an NVIDIA GPU and a GPU engine "
                       "(`ocrfleet devices` says which)") for name, target in zip(NAMES, TARGETS)]
    pages = inputs(quick)
    cpu = run(pages, work / "cpu", "cpu", "auto")
    rows = {workers: run(pages, work / f"gpu-{workers}", "gpu:0", workers)
            for workers in (QUICK_WORKERS if quick else WORKERS)}
    default, single = rows["auto"], rows[1]
    best = max(rows.values(), key=lambda row: row["pages_per_s"])
    cer = text_difference(cpu["texts"], default["texts"])
    table = "; ".join(
        f"workers_per_device {key} ({row['workers']} workers): {row['pages_per_s']:.2f} pages/s, utilization "
        f"{_shown(row['utilization_pct'], '%')}, GPU memory per worker {_shown(row['memory_mb'], ' MiB')}, "
        f"busy fraction (lowest shard) {_shown(row['busy'], '')}" for key, row in rows.items())
    detail = (f"{gpu}; {len(pages)} pages ({sum(page.parent == REAL for page in pages)} real from "
              f"benchmarks/data/real, the rest generated A4 at 150 dpi), `ocrfleet run --devices gpu:0`, engine and "
              f"fixed_shapes auto; CPU reference: `--devices cpu` at {cpu['pages_per_s']:.2f} pages/s. {table}")
    values = (default["pages_per_s"], single["pages_per_s"], default["utilization_pct"],
              default["pages_per_s"] / best["pages_per_s"], cer)
    checks = (lambda v: v >= 40, lambda v: v >= 8, lambda v: v >= 70, lambda v: v >= 0.9, lambda v: v <= 0.002)
    units = ("pages/s", "pages/s", "%", "x", "")
    return [figure(GROUP, name, value, unit, target, None if value is None else check(value), detail,
                   "see the per-setting table: the slowest stage (busy fraction low: CPU side; utilization high: "
                   "the GPU) says what to change")
            for name, value, unit, target, check in zip(NAMES, values, units, TARGETS, checks)]


def gpu_at_hand() -> tuple[str | None, str]:
    """The GPU 0 this machine would run on and its engine, or None and why not."""
    from ocrfleet.plan.gpu_engines import choose_gpu_engine
    from ocrfleet.plan.models import DEFAULT_PRESET, preset_engines
    from ocrfleet.plan.nvml import NvmlUnavailable, nvml_inventory

    try:
        gpus = nvml_inventory()
    except NvmlUnavailable as exc:
        return None, str(exc)
    if not gpus:
        return None, "NVML lists no GPU"
    # The runs use the default preset: `auto` asks only the engines its models ship for, as a run does.
    engine, why_not = choose_gpu_engine("auto" if "paddle" in preset_engines(DEFAULT_PRESET) else "onnxruntime")
    if engine is None:
        return None, f"{gpus[0].name} present but no GPU engine: {why_not}"
    return f"{gpus[0].name} ({gpus[0].memory_total_mb} MiB), engine {engine}", ""


def inputs(quick: bool) -> list[Path]:
    real = sorted(path for path in REAL.iterdir() if path.suffix in (".png", ".jpg"))
    generated = sorted(corpus.uniform(6 if quick else 42, dpi=150).glob("*.png"))
    return (real[:2] if quick else real) + generated


def run(pages: list[Path], out: Path, devices: str, workers: int | str) -> dict:
    """One `ocrfleet run`: pages/s over its OCR phase, reports' utilization and busy fraction, GPU memory."""
    command = [sys.executable, "-m", "ocrfleet.cli", "run", *map(str, pages), "--output", str(out),
               "--devices", devices, "--workers-per-device", str(workers)]
    memory = _MemorySampler() if devices != "cpu" else None
    with memory or _Nothing():
        watched = watch(command, bench_env(), records_dir=out / "records", log=out.parent / f"{out.name}.log")
    if watched.returncode != 0:
        raise RuntimeError(f"ocrfleet exited {watched.returncode}:\n{watched.output_tail}")
    reports = [json.loads(path.read_text()) for path in sorted((out / "reports").glob("*.json"))]
    ends = [path.stat().st_mtime for path in sorted((out / "reports").glob("*.json"))]
    phase = max(ends) - min(end - report["ocr_s"] for end, report in zip(ends, reports))
    done = sum(report["pages_ok"] + report["pages_failed"] for report in reports)
    utilization = [r["gpu_utilization_pct"] for r in reports if r.get("gpu_utilization_pct") is not None]
    busy = [r["busy_fraction"] for r in reports if r.get("busy_fraction") is not None]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    return {"workers": len(reports), "pages_per_s": done / phase if phase > 0 else 0.0,
            "utilization_pct": statistics.mean(utilization) if utilization else None,
            "busy": min(busy) if busy else None,
            "memory_mb": statistics.median(memory.peak_mb.values()) if memory and memory.peak_mb else None,
            "texts": {(r["source"], r["page"]): [line["text"] for line in r.get("lines", ())] for r in records}}


def text_difference(reference: dict, read: dict) -> float:
    """Character error of `read` against `reference` over all pages (`textscore.score`: order-tolerant)."""
    errors = chars = 0.0
    for key, lines in reference.items():
        size = len("".join(lines))
        errors += (100 - score(lines, read.get(key, []))["chars"]) / 100 * size
        chars += size
    return errors / chars if chars else 0.0


def _shown(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:.3g}{unit}"


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info) -> None:
        return None


class _MemorySampler:
    """The peak GPU memory of each process on GPU 0, from NVML every 0.5 s while a run goes on."""

    def __init__(self) -> None:
        self.peak_mb: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            while not self._stop.wait(0.5):
                for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    used = (process.usedGpuMemory or 0) / 2**20
                    self.peak_mb[process.pid] = max(self.peak_mb.get(process.pid, 0.0), used)
        finally:
            pynvml.nvmlShutdown()
