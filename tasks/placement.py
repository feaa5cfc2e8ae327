"""Placement: turn a devices request into the devices workers run on, and each worker's environment."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tasks.devices import (
    CPU, STRIPPED_NAMES, STRIPPED_PREFIXES, THREAD_VARS, Device, DeviceError, GpuInfo,
    NvmlUnavailable, nvml_inventory, paddle_gpu_installed, parse_devices, visible_gpus,
)

GPU_PADDLE_HINT = ("install the CUDA build of Paddle: pip install 'paddlepaddle-gpu>=3' --index-url "
                   "https://www.paddlepaddle.org.cn/packages/stable/cu126/ (see README, GPU quick start)")


@dataclass
class Placement:
    """The devices a run uses, in shard order, and every fallback said out loud."""

    devices: list[Device]
    warnings: list[str] = field(default_factory=list)


def place(spec: str, env: Mapping[str, str] | None = None,
          inventory: Callable[[], list[GpuInfo]] = nvml_inventory,
          paddle_gpu: Callable[[], bool] = paddle_gpu_installed) -> Placement:
    """Resolve a devices spec against the GPUs this process may use; raise `DeviceError` if unmet."""
    env = os.environ if env is None else env
    request = parse_devices(spec)
    if request.kind == "cpu":
        return Placement([CPU] * request.cpu_workers)
    try:
        gpus = visible_gpus(inventory(), env)
        reason = "" if gpus else f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')!r} hides every GPU"
    except NvmlUnavailable as exc:
        gpus, reason = [], str(exc)
    if gpus and not paddle_gpu():
        reason = f"{len(gpus)} GPU(s) present but the installed Paddle is CPU-only; {GPU_PADDLE_HINT}"
        gpus_usable: list[tuple[GpuInfo, str]] = []
    else:
        gpus_usable = gpus
    if request.kind == "auto":
        if not gpus_usable:
            return Placement([CPU], [f"devices=auto: no usable GPU ({reason}); falling back to 1 CPU worker"])
        return Placement([_gpu_device(gpu, entry) for gpu, entry in gpus_usable])
    if not gpus_usable:
        raise DeviceError(f"devices={spec}: no usable GPU ({reason}); pass --devices cpu to run on CPU")
    if request.gpu_ids is None:
        return Placement([_gpu_device(gpu, entry) for gpu, entry in gpus_usable])
    by_index = {gpu.index: (gpu, entry) for gpu, entry in gpus_usable}
    missing = [gpu_id for gpu_id in request.gpu_ids if gpu_id not in by_index]
    if missing:
        raise DeviceError(
            f"devices={spec}: GPU(s) {missing} are not available; this process may use NVML indices "
            f"{sorted(by_index)} (CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '<unset>')})"
        )
    return Placement([_gpu_device(*by_index[gpu_id]) for gpu_id in request.gpu_ids])


def _gpu_device(gpu: GpuInfo, entry: str) -> Device:
    return Device(name=f"gpu:{gpu.index}", gpu_id=gpu.index, cuda_visible=entry, uuid=gpu.uuid)


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
