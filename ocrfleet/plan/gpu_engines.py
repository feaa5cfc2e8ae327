"""GPU engines: whether Paddle's CUDA build or onnxruntime-gpu can run here, and which one a run's GPUs use.

`engine: auto` on GPUs picks Paddle when its CUDA build is installed, else onnxruntime-gpu when its CUDA
provider really loads; when neither can, the caller falls back to CPU (or refuses) with these reasons.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import subprocess
import sys
from collections.abc import Callable
from typing import Literal

from ocrfleet.plan.devices import paddle_gpu_installed

GpuEngine = Literal["paddle", "onnxruntime"]

GPU_PADDLE_HINT = ("install the CUDA build of Paddle: pip install 'paddlepaddle-gpu>=3' --index-url "
                   "https://www.paddlepaddle.org.cn/packages/stable/cu126/ (see README, GPU quick start)")
ORT_CUDA_HINT = ("install onnxruntime-gpu from PyPI in place of onnxruntime: make install-cuda, or "
                 "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'ocrfleet[cuda]' "
                 "(see README, GPU quick start)")

# Measured on an H200: with DEFAULT, cuDNN runs PP-OCR's convolutions in a fallback mode, 94 ms a call vs 4 ms.
CUDA_PROVIDER_OPTIONS: dict[str, str] = {"cudnn_conv_algo_search": "HEURISTIC"}

# Run in a child process: a CUDA context made in the planning process would hold GPU memory there all run long.
_PROBE = """
import importlib.util, pathlib, sys
import numpy as np, onnxruntime as ort
getattr(ort, "preload_dlls", lambda: None)()
root = pathlib.Path(next(iter(importlib.util.find_spec("rapidocr_onnxruntime").submodule_search_locations)))
session = ort.InferenceSession(str(root / "models" / "ch_PP-OCRv4_det_infer.onnx"),
    providers=["CUDAExecutionProvider"], provider_options=[{"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC"}])
if session.get_providers()[0] != "CUDAExecutionProvider":
    sys.exit("the session fell back to " + ", ".join(session.get_providers()))
session.run(None, {session.get_inputs()[0].name: np.zeros((1, 3, 32, 32), np.float32)})
"""


def paddle_gpu_problem() -> str | None:
    """None when Paddle's CUDA build is installed; else why Paddle cannot run on GPUs here."""
    return None if paddle_gpu_installed() else f"the installed Paddle is CPU-only; {GPU_PADDLE_HINT}"


def onnxruntime_gpu_problem() -> str | None:
    """None when onnxruntime's CUDA provider loads and a tiny session runs on it (GPU 0); else why not."""
    try:
        import onnxruntime
    except ImportError:
        return f"onnxruntime is not installed; {ORT_CUDA_HINT}"
    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        both = " (onnxruntime and onnxruntime-gpu are both installed and the CPU build's files won)" \
            if _installed("onnxruntime") and _installed("onnxruntime-gpu") else ""
        return f"the installed onnxruntime has no CUDAExecutionProvider{both}; {ORT_CUDA_HINT}"
    return _session_problem()


@functools.cache  # a run asks twice (preflight, plan); the answer holds for the process
def _session_problem() -> str | None:
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        return "onnxruntime's CUDA provider did not create a session within 180 s"
    if probe.returncode != 0:
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in probe.stderr.splitlines() if line.strip()]
        # onnxruntime logs why the provider did not load (e.g. "libcublasLt.so.13: cannot open shared object file").
        cause = next((line.split("FAIL : ")[-1] for line in lines if "[E:onnxruntime" in line), "")
        last = "; ".join(part for part in (lines[-1] if lines else f"exit {probe.returncode}", cause) if part)
        return (f"onnxruntime's CUDA provider is listed but a session on it failed ({last}): check the CUDA/cuDNN "
                "libraries it needs (pip's nvidia-* wheels, which onnxruntime-gpu[cuda,cudnn] brings) and the driver")
    return None


def choose_gpu_engine(requested: str, paddle_gpu: Callable[[], str | None] = paddle_gpu_problem,
                      onnxruntime_gpu: Callable[[], str | None] = onnxruntime_gpu_problem
                      ) -> tuple[GpuEngine | None, str]:
    """The engine a run's GPUs use for `requested` ('auto', 'paddle', 'onnxruntime'), or None and why none can.

    Probes run lazily: Paddle's CUDA build, when installed, answers `auto` without loading CUDA.
    """
    problems = []
    for engine, probe in (("paddle", paddle_gpu), ("onnxruntime", onnxruntime_gpu)):
        if requested in ("auto", engine):
            problem = probe()
            if problem is None:
                return engine, ""
            problems.append(f"engine {engine}: {problem}")
    return None, "; ".join(problems)


def gpu_engine_problems() -> dict[GpuEngine, str | None]:
    """Each GPU engine, with None when it can run here or the reason it cannot (for `ocrfleet devices`)."""
    return {"paddle": paddle_gpu_problem(), "onnxruntime": onnxruntime_gpu_problem()}


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
