"""Devices: parse the devices spec, take the GPU inventory, pin each worker to exactly one device.

`gpu:N` always means NVML / nvidia-smi index N. A worker sees exactly one GPU through its own
`CUDA_VISIBLE_DEVICES`, written in the form the parent was given (an index stays an index, a UUID a
UUID), with `CUDA_DEVICE_ORDER=PCI_BUS_ID` so that CUDA numbers GPUs as NVML does.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict


_SPEC = re.compile(r"^(auto|gpu|cpu)(?::(.*))?$")

# Launcher state that would make a worker think it is one rank of a training job.
STRIPPED_PREFIXES = ("PADDLE_TRAINER", "PADDLE_TRAINERS", "PADDLE_CURRENT_ENDPOINT", "PADDLE_RANK",
                      "PADDLE_LOCAL_RANK", "PADDLE_WORLD_SIZE", "PADDLE_MASTER", "PADDLE_GLOBAL_")
STRIPPED_NAMES = ("FLAGS_selected_gpus", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                   "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


class DeviceError(ValueError):
    """A devices request that cannot be met; the message says what to pass or install."""


@dataclass(frozen=True)
class DeviceRequest:
    """A parsed devices spec."""

    kind: Literal["auto", "gpu", "cpu"]
    gpu_ids: tuple[int, ...] | None = None
    cpu_workers: int = 1


class MigInfo(BaseModel):
    """One MIG instance of a GPU."""

    model_config = ConfigDict(frozen=True)
    uuid: str
    memory_total_mb: int
    memory_free_mb: int


class GpuInfo(BaseModel):
    """One physical GPU as NVML reports it."""

    model_config = ConfigDict(frozen=True)
    index: int
    uuid: str
    name: str
    memory_total_mb: int
    memory_free_mb: int
    utilization_pct: int | None = None
    mig_enabled: bool = False
    mig_devices: tuple[MigInfo, ...] = ()


class Device(BaseModel):
    """A device one worker is pinned to: `gpu:<physical id>` or `cpu`."""

    model_config = ConfigDict(frozen=True)
    name: str
    gpu_id: int | None = None
    cuda_visible: str = ""  # the worker's CUDA_VISIBLE_DEVICES entry; empty for CPU
    uuid: str | None = None

    @property
    def is_gpu(self) -> bool:
        return self.gpu_id is not None


CPU = Device(name="cpu")


def parse_devices(spec: str) -> DeviceRequest:
    """Parse 'auto', 'gpu', 'gpu:0,2,3', 'cpu' or 'cpu:N'."""
    match = _SPEC.match(spec.strip().lower())
    if not match:
        raise DeviceError(f"devices: {spec!r} is not one of auto, gpu, gpu:0,2,3, cpu, cpu:N")
    kind, arg = match.group(1), match.group(2)
    if arg is not None and re.search(r"(?:^|,)\s*(?:auto|gpu|cpu)\b", arg):
        raise DeviceError(f"devices: {spec!r} mixes kinds of device; one run uses one kind: auto, gpu, gpu:0,2,3, "
                          "cpu or cpu:N")
    if kind == "auto":
        if arg is not None:
            raise DeviceError(f"devices: 'auto' takes no list, got {spec!r}")
        return DeviceRequest("auto")
    if kind == "cpu":
        if arg is None:
            return DeviceRequest("cpu")
        if not arg.isdigit() or int(arg) < 1:
            raise DeviceError(f"devices: in {spec!r}, N must be a whole number >= 1")
        return DeviceRequest("cpu", cpu_workers=int(arg))
    if arg is None:
        return DeviceRequest("gpu")
    parts = [part.strip() for part in arg.split(",")]
    if not parts or not all(part.isdigit() for part in parts):
        raise DeviceError(f"devices: in {spec!r}, GPU ids must be NVML indices such as gpu:0,2,3")
    ids = tuple(int(part) for part in parts)
    if len(set(ids)) != len(ids):
        raise DeviceError(f"devices: {spec!r} names a GPU twice")
    return DeviceRequest("gpu", gpu_ids=ids)


def visible_gpus(inventory: list[GpuInfo], env: Mapping[str, str]) -> list[tuple[GpuInfo, str]]:
    """The GPUs this process may use, each with the CUDA_VISIBLE_DEVICES entry that names it.

    Honours an inherited CUDA_VISIBLE_DEVICES (indices, `GPU-` or `MIG-` UUIDs or unique prefixes of
    them, empty, `-1`), then Paddle's FLAGS_selected_gpus, which picks positions among those visible.
    """
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        visible = [(gpu, str(gpu.index)) for gpu in inventory]
    else:
        visible = []
        for entry in (entry.strip() for entry in raw.split(",")):
            gpu = _match_entry(inventory, entry) if entry else None
            if gpu is None:
                break  # CUDA stops at the first entry it cannot resolve ("-1" hides everything)
            visible.append((gpu, entry))
    selected = env.get("FLAGS_selected_gpus", "").strip()
    if selected:
        positions = [int(part) for part in selected.split(",") if part.strip().isdigit()]
        visible = [visible[position] for position in positions if position < len(visible)]
    return visible


def _match_entry(inventory: list[GpuInfo], entry: str) -> GpuInfo | None:
    if entry.isdigit():
        return next((gpu for gpu in inventory if gpu.index == int(entry)), None)
    wanted = entry.lower()
    if wanted.startswith("gpu-"):
        matches = [gpu for gpu in inventory if gpu.uuid.lower().startswith(wanted)]
    elif wanted.startswith("mig-"):
        matches = [gpu for gpu in inventory if any(m.uuid.lower().startswith(wanted) for m in gpu.mig_devices)]
    else:
        return None
    return matches[0] if len(matches) == 1 else None


def paddle_gpu_installed() -> bool:
    """Whether the installed Paddle is a CUDA build (read from package metadata, without importing it)."""
    try:
        importlib.metadata.distribution("paddlepaddle-gpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
