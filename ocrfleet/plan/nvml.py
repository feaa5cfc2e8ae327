"""NVML: the GPU inventory and which GPU a process actually holds, from the NVIDIA driver."""

from __future__ import annotations

import threading

from ocrfleet.plan.devices import GpuInfo, MigInfo


class NvmlUnavailable(RuntimeError):
    """NVML (the NVIDIA driver's management library) cannot be used here."""


def nvml_inventory() -> list[GpuInfo]:
    """Every GPU the driver knows, by NVML index; raises `NvmlUnavailable` with the reason."""
    try:
        import pynvml
    except ImportError as exc:
        raise NvmlUnavailable(f"pynvml is not installed ({exc})") from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise NvmlUnavailable(f"no NVIDIA driver / NVML: {exc}") from exc
    try:
        return [_gpu_info(pynvml, index) for index in range(pynvml.nvmlDeviceGetCount())]
    finally:
        pynvml.nvmlShutdown()


def _gpu_info(pynvml, index: int) -> GpuInfo:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    return GpuInfo(
        index=index, uuid=_text(pynvml.nvmlDeviceGetUUID(handle)), name=_text(pynvml.nvmlDeviceGetName(handle)),
        memory_total_mb=memory.total // 2**20, memory_free_mb=memory.free // 2**20,
        utilization_pct=_optional(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu, pynvml),
        mig_enabled=bool(_optional(lambda: pynvml.nvmlDeviceGetMigMode(handle)[0], pynvml)),
        mig_devices=tuple(_mig_devices(pynvml, handle)),
    )


def _mig_devices(pynvml, handle) -> list[MigInfo]:
    found = []
    count = _optional(lambda: pynvml.nvmlDeviceGetMaxMigDeviceCount(handle), pynvml) or 0
    for slot in range(count):
        mig = _optional(lambda: pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot), pynvml)
        if mig is None:
            continue
        memory = pynvml.nvmlDeviceGetMemoryInfo(mig)
        found.append(MigInfo(uuid=_text(pynvml.nvmlDeviceGetUUID(mig)), memory_total_mb=memory.total // 2**20,
                             memory_free_mb=memory.free // 2**20))
    return found


def _optional(read, pynvml):
    """An NVML field some GPUs or drivers do not support (MIG, utilization on some vGPUs): None then."""
    try:
        return read()
    except pynvml.NVMLError:
        return None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def held_device(pid: int) -> GpuInfo | None:
    """The GPU (or MIG instance, as its parent GPU with the MIG UUID) running `pid`'s CUDA context.

    None when NVML lists no such process, as in containers whose PID namespace hides host PIDs.
    """
    try:
        import pynvml

        pynvml.nvmlInit()
    except ImportError as exc:
        raise NvmlUnavailable(f"pynvml is not installed ({exc})") from exc
    except pynvml.NVMLError as exc:
        raise NvmlUnavailable(f"no NVIDIA driver / NVML: {exc}") from exc
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            gpu = _gpu_info(pynvml, index)
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            if _runs(pynvml, handle, pid):
                return gpu
            for slot, mig in enumerate(gpu.mig_devices):
                mig_handle = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                if _runs(pynvml, mig_handle, pid):
                    return gpu.model_copy(update={"uuid": mig.uuid})
        return None
    finally:
        pynvml.nvmlShutdown()


def _runs(pynvml, handle, pid: int) -> bool:
    processes = _optional(lambda: pynvml.nvmlDeviceGetComputeRunningProcesses(handle), pynvml) or []
    return any(process.pid == pid for process in processes)


class UtilizationSampler:
    """The mean utilization of one GPU, sampled on a thread while a worker runs.

    NVML's figure covers every process on the GPU; with one worker per GPU that is the worker's.
    MIG instances and some vGPUs do not report it: the mean is then None.
    """

    def __init__(self, uuid: str, interval_s: float = 1.0) -> None:
        self._uuid, self._interval_s = uuid, interval_s
        self._samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvml-utilization", daemon=True)

    def __enter__(self) -> UtilizationSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def mean_pct(self) -> float | None:
        return round(sum(self._samples) / len(self._samples), 1) if self._samples else None

    def _run(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # no driver or no pynvml: nothing to sample, the report says None
            return
        try:
            handle = pynvml.nvmlDeviceGetHandleByUUID(self._uuid)
            while not self._stop.wait(self._interval_s):
                value = _optional(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu, pynvml)
                if value is None:
                    return
                self._samples.append(value)
        except pynvml.NVMLError:
            return
        finally:
            pynvml.nvmlShutdown()
