"""Sizing: how many workers each device gets, and whether the models run at fixed shapes; each with its reason.

The GPU rules come from issue 13's measurements on one H200 with 16 cores (PP-OCRv4 mobile, onnxruntime-gpu):
1, 4 and 16 processes on the GPU read 0.8, 2.6 and 7.9 pages/s, GPU utilization 3%, 13%, 49%. Pages/s grew
with the processes until the cores ran out: the CPU-side stages (decode, resize, detection post-processing,
crops) are what a GPU waits on, so `auto` gives each GPU its share of the cores, one thread per worker, as
far as its memory allows. Fixed shapes were not measured end to end: both rules are to be re-measured with
benchmarks/gpu.py on a real GPU (none was at hand when they were written).
"""

from __future__ import annotations

import os
from typing import Literal

from ocrfleet.plan.placement import Placement

# GPU memory one worker is given room for (models, onnxruntime's arena, cuDNN workspace): a guess, not measured.
GPU_WORKER_MB = 2048
MAX_GPU_WORKERS = 32
# Text lines per recognition batch at fixed shapes (lines of one page, padded to their width class): a page's
# 30-60 lines fall into 2-4 width classes; 16 wastes less on empty padding lines than 64. Not measured.
FIXED_SHAPES_REC_BATCH = 16


def workers_per_device(setting: int | Literal["auto"], placement: Placement,
                       cpus: int | None = None) -> tuple[int, str]:
    """Workers per device for `setting`, and a sentence saying what was chosen and why."""
    if setting != "auto":
        return setting, f"workers_per_device: {setting} per device (configured)"
    gpus = [device for device in placement.devices if device.is_gpu]
    if not gpus:
        return 1, "workers_per_device auto: 1 per CPU device (each a worker with its share of the cores)"
    cpus = cpus or _cpus()
    by_cores = max(1, cpus // len(gpus))
    free = min(placement.free_mb.get(device.gpu_id, 0) for device in gpus) if placement.free_mb else None
    by_memory = max(1, free // GPU_WORKER_MB) if free is not None else MAX_GPU_WORKERS
    chosen = min(by_cores, by_memory, MAX_GPU_WORKERS)
    memory = f", {free} MiB free at {GPU_WORKER_MB} MiB a worker allows {by_memory}" if free is not None else ""
    return chosen, (f"workers_per_device auto: {chosen} per GPU ({cpus} cores / {len(gpus)} GPU(s) = {by_cores}"
                    f"{memory}, at most {MAX_GPU_WORKERS}): the CPU side of OCR is what a GPU waits on "
                    "(issue 13's H200 measurements); rule to be re-measured with benchmarks/gpu.py")


def fixed_shapes(setting: Literal["auto", "on", "off"], on_gpu: bool) -> tuple[bool, str]:
    """Whether models run at fixed shapes, and a sentence saying why."""
    if setting != "auto":
        return setting == "on", f"fixed_shapes: {setting} (configured)"
    if on_gpu:
        return True, ("fixed_shapes auto: on (GPU engines re-plan their kernels for every new input shape: "
                      f"pages on fixed canvases, lines at fixed widths, {FIXED_SHAPES_REC_BATCH} a batch)")
    return False, "fixed_shapes auto: off (measured slower on CPU: the padding and empty batch lines are more work)"


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
