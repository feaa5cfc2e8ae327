"""Planning: pages -> cost-balanced shards pinned to devices, written down before anything starts."""

from __future__ import annotations

import heapq
import os
import importlib.metadata
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from tasks.config import JobConfig
from tasks.devices import Device, DeviceError
from tasks.inputs import collect_pages
from tasks.models import Engine, ModelDirs, bundled_dir, default_cache_dir, is_bundled, materialize
from tasks.placement import Placement, default_threads, launcher_warning, place, worker_env_overrides
from tasks.records import PageRef, read_jsonl, write_atomic

_VERSIONED = ("ocrfleet", "paddleocr", "paddlex", "paddlepaddle", "paddlepaddle-gpu", "onnxruntime",
              "rapidocr-paddle", "rapidocr-onnxruntime")


class PlanMismatch(RuntimeError):
    """The output directory already holds a run planned differently."""


class ShardPlan(BaseModel):
    """One shard: its device, the environment its worker gets, and what it holds."""

    model_config = ConfigDict(frozen=True)
    shard: int
    device: Device
    env: dict[str, str]
    pages: int
    cost: float


class Plan(BaseModel):
    """`run.json`: the resolved config, models, shards and versions of a run."""

    model_config = ConfigDict(frozen=True)
    config: JobConfig
    models: ModelDirs
    threads_per_worker: int
    pages_total: int
    shards: tuple[ShardPlan, ...]
    warnings: tuple[str, ...] = ()
    versions: dict[str, str]


def make_plan(config: JobConfig, placement: Placement | None = None) -> tuple[Plan, list[list[PageRef]]]:
    """Plan a run without writing anything: the plan and each shard's pages."""
    placement = placement or place_for(config)
    pages = collect_pages(config.inputs)
    slots = [device for device in placement.devices for _ in range(config.workers_per_device)]
    shard_pages = split_balanced(pages, min(len(slots), len(pages)))
    # Spread shards over devices first, so that a small run still uses every device.
    devices = [placement.devices[shard % len(placement.devices)] for shard in range(len(shard_pages))]
    threads = config.threads_per_worker or default_threads(len(shard_pages))
    shards = tuple(
        ShardPlan(shard=shard, device=device, env=worker_env_overrides(device, threads),
                  pages=len(members), cost=sum(page.cost for page in members))
        for shard, (device, members) in enumerate(zip(devices, shard_pages))
    )
    plan = Plan(config=config, models=resolve_models(config, placement.devices), threads_per_worker=threads,
                pages_total=len(pages), shards=shards, warnings=tuple(placement.warnings), versions=_versions())
    return plan, shard_pages


def place_for(config: JobConfig) -> Placement:
    """Place the config's devices against this machine, with its exclusions and memory floor."""
    placement = place(config.devices, exclude=config.exclude, min_free_memory_mb=config.min_free_memory_mb)
    warning = launcher_warning(os.environ)
    if warning:
        placement.warnings.append(warning)
    return placement


def split_balanced(pages: list[PageRef], shards: int) -> list[list[PageRef]]:
    """Longest-processing-time-first: each page, costliest first, goes to the cheapest shard so far."""
    heap = [(0.0, 0, shard) for shard in range(shards)]
    members: list[list[PageRef]] = [[] for _ in range(shards)]
    for page in sorted(pages, key=lambda page: (-page.cost, page.key)):
        total, count, shard = heapq.heappop(heap)
        members[shard].append(page)
        heapq.heappush(heap, (total + page.cost, count + 1, shard))
    return [sorted(shard_pages, key=lambda page: page.key) for shard_pages in members]


def resolve_engine(config: JobConfig, devices: list[Device]) -> Engine:
    on_gpu = any(device.is_gpu for device in devices)
    if config.engine == "onnxruntime" and on_gpu:
        raise DeviceError("engine=onnxruntime runs on CPU only; use engine=paddle (or auto) for GPUs")
    if config.engine == "auto":
        return "paddle" if on_gpu else "onnxruntime"
    return config.engine


def resolve_models(config: JobConfig, devices: list[Device]) -> ModelDirs:
    """The model names and dirs workers load; bundled models get their cache dir."""
    engine = resolve_engine(config, devices)
    cache = config.model_cache_dir or default_cache_dir()
    dirs = []
    for name, given in ((config.text_detection_model_name, config.text_detection_model_dir),
                        (config.text_recognition_model_name, config.text_recognition_model_dir)):
        if given is not None:
            dirs.append(str(Path(given).expanduser().absolute()))
        elif is_bundled(engine, name):
            dirs.append(str(bundled_dir(engine, name, cache).absolute()))
        else:
            dirs.append(None)  # PaddleOCR downloads it by name
    return ModelDirs(engine=engine, text_detection_model_name=config.text_detection_model_name,
                     text_detection_model_dir=dirs[0], text_recognition_model_name=config.text_recognition_model_name,
                     text_recognition_model_dir=dirs[1])


def prepare_models(plan: Plan) -> None:
    """Materialize bundled models and check given model dirs, before any worker starts."""
    models = plan.models
    cache = plan.config.model_cache_dir or default_cache_dir()
    for name, directory in ((models.text_detection_model_name, models.text_detection_model_dir),
                            (models.text_recognition_model_name, models.text_recognition_model_dir)):
        if directory is None:
            continue
        if is_bundled(models.engine, name) and Path(directory) == bundled_dir(models.engine, name, cache).absolute():
            materialize(models.engine, name, cache)
        elif not (Path(directory) / "inference.yml").is_file():
            raise FileNotFoundError(f"model dir {directory} for {name} has no inference.yml")


def write_plan(run_dir: Path, plan: Plan, shard_pages: list[list[PageRef]]) -> None:
    """Write each shard's manifest, then `run.json`; refuse a run dir planned differently."""
    run_json = plan.model_dump_json(indent=2) + "\n"
    existing = run_dir / "run.json"
    if existing.exists() and existing.read_text(encoding="utf-8") != run_json:
        raise PlanMismatch(
            f"{run_dir} already holds a run with a different plan (inputs, config or package versions "
            f"changed); pass a new --output, or remove {run_dir} to start over"
        )
    for shard, pages in enumerate(shard_pages):
        write_atomic(manifest_path(run_dir, shard), "".join(page.model_dump_json() + "\n" for page in pages))
    write_atomic(existing, run_json)


def prepare_run(config: JobConfig, placement: Placement | None = None) -> Plan:
    """Plan, materialize models and write the plan: everything that happens before workers start."""
    plan, shard_pages = make_plan(config, placement)
    prepare_models(plan)
    write_plan(Path(config.output_dir), plan, shard_pages)
    return plan


def read_plan(run_dir: Path) -> Plan:
    return Plan.model_validate_json((run_dir / "run.json").read_text(encoding="utf-8"))


def read_manifest(run_dir: Path, shard: int) -> list[PageRef]:
    return list(read_jsonl(manifest_path(run_dir, shard), PageRef))


def manifest_path(run_dir: Path, shard: int) -> Path:
    return run_dir / "shards" / f"{shard:05d}.jsonl"


def shard_paths(run_dir: Path, shard: int) -> dict[str, Path]:
    """Where a shard's worker writes: records, report, done marker and log."""
    name = f"{shard:05d}"
    return {"records": run_dir / "records" / f"{name}.jsonl", "report": run_dir / "reports" / f"{name}.json",
            "done": run_dir / "done" / name, "log": run_dir / "logs" / f"{name}.log"}


def _versions() -> dict[str, str]:
    found = {}
    for name in _VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found
