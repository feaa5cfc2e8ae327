"""Placement: turn a devices request into the devices workers run on, and each worker's environment."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ocrfleet.plan.devices import (
    CPU, STRIPPED_NAMES, STRIPPED_PREFIXES, THREAD_VARS, Device, DeviceError, GpuInfo,
    paddle_gpu_installed, parse_devices, visible_gpus,
)
from ocrfleet.plan.gpu_engines import GPU_PADDLE_HINT, GpuEngine, choose_gpu_engine, onnxruntime_gpu_problem
from ocrfleet.plan.nvml import NvmlUnavailable, nvml_inventory


@dataclass
class Placement:
    """The devices a run uses, in shard order, and every fallback said out loud."""

    devices: list[Device]
    warnings: list[str] = field(default_factory=list)
    skipped: dict[int, str] = field(default_factory=dict)  # NVML index -> why it is not used
    engine: GpuEngine | None = None  # the engine the GPUs run with; None on CPU
    free_mb: dict[int, int] = field(default_factory=dict)  # NVML index of each GPU used -> its free MiB


def place(spec: str, env: Mapping[str, str] | None = None,
          inventory: Callable[[], list[GpuInfo]] | None = None, paddle_gpu: Callable[[], bool] | None = None,
          exclude: tuple[int, ...] = (), min_free_memory_mb: int = 0, engine: str = "auto",
          onnxruntime_gpu: Callable[[], str | None] | None = None) -> Placement:
    """Resolve a devices spec against the GPUs this process may use; raise `DeviceError` if unmet.

    GPUs are used only when `engine` ('auto', 'paddle', 'onnxruntime') can run on them (`gpu_engines`).
    `inventory`, `paddle_gpu` and `onnxruntime_gpu` are seams for tests (a recorded NVML inventory, the
    installed engines); by default they ask NVML and the installed packages.
    """
    env = os.environ if env is None else env
    inventory = inventory or nvml_inventory
    paddle_gpu = paddle_gpu or paddle_gpu_installed
    onnxruntime_gpu = onnxruntime_gpu or onnxruntime_gpu_problem
    request = parse_devices(spec)
    if request.kind == "cpu":
        return Placement([CPU] * request.cpu_workers)
    warnings: list[str] = []
    try:
        known = inventory()
        gpus = visible_gpus(known, env)
        reason = "" if gpus else f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')!r} hides every GPU"
        if 0 < len(gpus) < len(known):
            warnings.append(f"this process may use {len(gpus)} of the machine's {len(known)} GPUs "
                            f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '<unset>')}, "
                            f"FLAGS_selected_gpus={env.get('FLAGS_selected_gpus', '<unset>')})")
    except NvmlUnavailable as exc:
        gpus, reason = [], str(exc)
    gpu_engine: GpuEngine | None = None
    if gpus:
        gpu_engine, why_not = choose_gpu_engine(
            engine, lambda: None if paddle_gpu() else f"the installed Paddle is CPU-only; {GPU_PADDLE_HINT}",
            onnxruntime_gpu)
        if gpu_engine is None:
            if engine == "onnxruntime" and paddle_gpu():  # e.g. an ONNX-only preset on a Paddle CUDA machine
                why_not += ("; Paddle's CUDA build is installed and runs on these GPUs with Paddle-format models: "
                            "set models: pp-ocrv4-mobile (--models pp-ocrv4-mobile), or install onnxruntime-gpu "
                            "(make install-cuda)")
            reason, gpus = f"{len(gpus)} GPU(s) present but no GPU engine can run ({why_not})", []
    by_index = {gpu.index: (gpu, entry) for gpu, entry in gpus}
    wanted = list(request.gpu_ids) if request.gpu_ids is not None else list(by_index)
    missing = [gpu_id for gpu_id in wanted if gpu_id not in by_index]
    if missing and by_index:
        raise DeviceError(
            f"devices={spec}: GPU(s) {missing} are not available; this process may use NVML indices "
            f"{sorted(by_index)} (CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '<unset>')})")
    chosen, skipped, free_mb = [], {}, {}
    for gpu_id in wanted:
        if gpu_id not in by_index:
            continue
        gpu, entry = by_index[gpu_id]
        skip = _skip_reason(gpu, entry, exclude, min_free_memory_mb)
        if skip:
            skipped[gpu_id] = skip
            warnings.append(f"skipping gpu:{gpu_id} ({gpu.name}): {skip}")
        else:
            chosen.append(_gpu_device(gpu, entry))
            free_mb[gpu_id] = _free_mb(gpu, entry)
    if chosen:
        return Placement(chosen, warnings, skipped, gpu_engine, free_mb)
    reason = reason or "every GPU was skipped: " + "; ".join(warnings)
    if request.kind == "auto":
        return Placement([CPU], warnings + [f"devices=auto: no usable GPU ({reason}); falling back to 1 CPU worker"],
                         skipped)
    raise DeviceError(f"devices={spec}: no usable GPU ({reason}); pass --devices cpu to run on CPU")


def _skip_reason(gpu: GpuInfo, entry: str, exclude: tuple[int, ...], min_free_mb: int) -> str | None:
    if gpu.index in exclude:
        return "listed in exclude"
    free = _free_mb(gpu, entry)
    if free < min_free_mb:
        return f"{free} MiB free, below min_free_memory_mb={min_free_mb}"
    return None


def _free_mb(gpu: GpuInfo, entry: str) -> int:
    return next((mig.memory_free_mb for mig in gpu.mig_devices if mig.uuid == _mig_uuid(gpu, entry)),
                gpu.memory_free_mb)


def _mig_uuid(gpu: GpuInfo, entry: str) -> str | None:
    wanted = entry.lower()
    return next((mig.uuid for mig in gpu.mig_devices if wanted.startswith("mig-") and
                 mig.uuid.lower().startswith(wanted)), None)


def _gpu_device(gpu: GpuInfo, entry: str) -> Device:
    return Device(name=f"gpu:{gpu.index}", gpu_id=gpu.index, cuda_visible=entry,
                  uuid=_mig_uuid(gpu, entry) or gpu.uuid)


def worker_env_overrides(device: Device, threads: int) -> dict[str, str]:
    """The variables a worker on `device` gets on top of the parent's environment."""
    overrides = {name: str(threads) for name in THREAD_VARS}
    overrides["CUDA_VISIBLE_DEVICES"] = device.cuda_visible
    overrides["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    return overrides


def worker_environment(parent: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """The full environment of a worker: the parent's, minus launcher state, plus `overrides`."""
    env = {
        name: value for name, value in parent.items()
        if name not in STRIPPED_NAMES and not name.startswith(STRIPPED_PREFIXES)
    }
    env.update(overrides)
    return env


def launcher_warning(env: Mapping[str, str]) -> str | None:
    """A warning when ocrfleet itself was started under a distributed training launcher."""
    markers = [name for name in ("PADDLE_TRAINER_ID", "PADDLE_TRAINERS_NUM", "LOCAL_RANK", "TORCHELASTIC_RUN_ID")
               if name in env]
    if not markers:
        return None
    return (f"started under a distributed launcher ({', '.join(markers)} set): ocrfleet is an inference job "
            "that starts its own per-GPU processes; a launcher only multiplies them. Run `ocrfleet run` directly.")


def default_threads(workers: int, cpus: int | None = None) -> int:
    """CPU threads per worker so that all workers together do not oversubscribe the machine."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, workers))
