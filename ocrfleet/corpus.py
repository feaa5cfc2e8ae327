"""Corpus: one job split into chunks, each an ordinary ocrfleet run on whichever machine picks it up.

A corpus run plans once, on shared storage every machine sees (NFS; the same path everywhere; inputs
may be object-store URLs instead, which every machine reads through fsspec):

```
OUT/corpus.json                     the corpus plan: the job, every chunk's pages and cost
OUT/chunks/00003.manifest.jsonl     chunk 3's input manifest: {"path", "pages" (1-based ranges), "cost"}
OUT/chunks/00003/                   chunk 3's run dir: a whole ocrfleet run (run.json, records/, results.jsonl...)
OUT/results.jsonl, failures.jsonl   every chunk's records, sorted by source then page
OUT/summary.json                    `CorpusSummary`: counts, per-chunk attempts, workers, hosts, problems
```

A chunk's run dir keeps its records across attempts, so a chunk restarted on another machine resumes
after what the dead one wrote. Plain module: never imports Prefect.
"""

from __future__ import annotations

import collections
import itertools
import json
import os
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ocrfleet.config import JobConfig
from ocrfleet.inputs.listing import collect_pages
from ocrfleet.reduce.outputs import write_outputs
from ocrfleet.plan.planning import split_balanced
from ocrfleet.records import PageRecord, PageRef, ShardReport, complete_lines, write_atomic
from ocrfleet.reduce.summary import Totals, counted, reconcile_lines

CORPUS_PLAN = "corpus.json"


class CorpusConfig(BaseModel):
    """A corpus run: the job every chunk runs, and how chunks are spread over machines."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job: JobConfig = Field(..., description="The ocrfleet job settings every chunk runs with. inputs and output_dir "
                           "are the whole corpus: inputs on storage every machine sees at the same path or at "
                           "object-store URLs, output_dir on a shared POSIX file system (NFS; file:// URLs "
                           "accepted); publish_to copies the corpus outputs on; devices 'auto' lets each machine "
                           "use its own OCRFLEET_DEVICES.")
    deployment: str = Field("ocrfleet/adhoc", description="The single-box deployment each chunk runs as.")
    chunks: int = Field(16, ge=1, le=100_000, description="How many chunks: about 4 per machine (16 suits 4 "
                        "machines), so a slow machine takes fewer chunks instead of setting the pace.")
    chunk_stall_s: float = Field(900.0, gt=0, description="A chunk run RUNNING whose dir gets no new bytes for "
                                 "this long is presumed dead with its machine and started again; keep it above "
                                 "page_timeout_s plus a model load.")
    chunk_attempts: int = Field(3, ge=1, le=20, description="Starts of one chunk before the corpus run gives up.")
    poll_s: float = Field(5.0, gt=0, description="Seconds between looks at each chunk run's state.")

    @model_validator(mode="after")
    def _whole_corpus(self) -> CorpusConfig:
        if self.job.only_failed:
            raise ValueError("job.only_failed: reprocess failed pages per chunk run, not as a corpus")
        return self


class ChunkPlan(BaseModel):
    """One chunk: its manifest, its run dir and what it holds."""

    model_config = ConfigDict(frozen=True)
    chunk: int
    manifest: str
    output_dir: str
    pages: int
    cost: float


class CorpusPlan(BaseModel):
    """`corpus.json`: the job and every chunk, written before any chunk starts."""

    model_config = ConfigDict(frozen=True)
    job: JobConfig
    pages_total: int
    chunks: tuple[ChunkPlan, ...]


def chunk_dir(output_dir: Path, chunk: int) -> Path:
    return Path(output_dir) / "chunks" / f"{chunk:05d}"


def chunk_manifest(output_dir: Path, chunk: int) -> Path:
    return Path(output_dir) / "chunks" / f"{chunk:05d}.manifest.jsonl"


def manifest_rows(pages: list[PageRef]) -> list[dict]:
    """Manifest rows for pages sorted by (source, page): one per document and cost, pages as 1-based ranges."""
    rows = []
    for (source, cost), group in itertools.groupby(pages, key=lambda page: (page.source, page.cost)):
        rows.append({"path": source, "pages": page_ranges([page.page for page in group]), "cost": cost})
    return rows


def page_ranges(pages: list[int]) -> str:
    """0-based sorted page indices as the 1-based ranges people write: [0, 1, 2, 7] -> "1-3,8"."""
    parts = []
    for _, run in itertools.groupby(enumerate(pages), key=lambda item: item[1] - item[0]):
        numbers = [page + 1 for _, page in run]
        parts.append(f"{numbers[0]}-{numbers[-1]}" if len(numbers) > 1 else str(numbers[0]))
    return ",".join(parts)


def plan_corpus(config: CorpusConfig) -> tuple[CorpusPlan, list[list[PageRef]]]:
    """Every page of the corpus, split into cost-balanced chunks; nothing is written."""
    job = config.job
    pages = collect_pages(job.inputs, dpi=job.pdf_dpi, include_globs=job.include_globs,
                          exclude_globs=job.exclude_globs, manifest_path_column=job.manifest_path_column,
                          leave_out=str(job.output_dir))
    members = split_balanced(pages, min(config.chunks, len(pages)))
    output = Path(job.output_dir).absolute()
    chunks = tuple(ChunkPlan(chunk=chunk, manifest=str(chunk_manifest(output, chunk)),
                             output_dir=str(chunk_dir(output, chunk)), pages=len(group),
                             cost=sum(page.cost for page in group))
                   for chunk, group in enumerate(members))
    return CorpusPlan(job=job, pages_total=len(pages), chunks=chunks), members


def write_corpus_plan(plan: CorpusPlan, members: list[list[PageRef]]) -> None:
    """Each chunk's manifest, then `corpus.json` last: its presence means the plan is whole."""
    for spec, group in zip(plan.chunks, members):
        text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in manifest_rows(group))
        if not _same_text(Path(spec.manifest), text):  # a rerun leaves an unchanged manifest's mtime alone
            write_atomic(Path(spec.manifest), text)
    write_atomic(Path(plan.job.output_dir) / CORPUS_PLAN, plan.model_dump_json(indent=2) + "\n")


def chunk_job(config: CorpusConfig, spec: ChunkPlan) -> dict:
    """The `config` parameter of chunk `spec`'s run, as JSON.

    Page failures are judged over the whole corpus, so a chunk never fails for them
    (max_failure_rate 1); the corpus writes the outputs (parquet, text) once, from every record, and
    publishes them.
    """
    job = config.job.model_copy(update={"inputs": (spec.manifest,), "output_dir": Path(spec.output_dir),
                                        "max_failure_rate": 1.0, "outputs": (), "publish_to": None})
    return job.model_dump(mode="json", exclude_defaults=True)


def dir_signature(folder: Path) -> tuple[int, int, int]:
    """(files, bytes, newest mtime) under `folder`: any new byte a chunk's run writes changes it."""
    files = size = newest = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                stat = os.stat(os.path.join(root, name))
            except OSError:
                continue  # replaced while we looked: the next look sees the new one
            files, size, newest = files + 1, size + stat.st_size, max(newest, stat.st_mtime_ns)
    return files, size, newest


def _same_text(path: Path, text: str) -> bool:
    try:
        return path.read_text(encoding="utf-8") == text
    except OSError:
        return False


def read_corpus_plan(output_dir: Path) -> CorpusPlan:
    return CorpusPlan.model_validate_json((Path(output_dir) / CORPUS_PLAN).read_text(encoding="utf-8"))


def planned_pages(spec: ChunkPlan) -> set[tuple[str, int]]:
    """The (source, page) keys chunk `spec`'s manifest holds, read back from the manifest itself."""
    from ocrfleet.inputs.listing import parse_page_range

    keys = set()
    for line in complete_lines(Path(spec.manifest)):
        row = json.loads(line)
        keys.update((row["path"], page) for page in parse_page_range(row["pages"]))
    return keys


def chunk_hostnames(spec: ChunkPlan) -> list[str]:
    """The hosts that ran the chunk's shards, from its shard reports."""
    hosts = set()
    for path in sorted((Path(spec.output_dir) / "reports").glob("*.json")):
        try:
            hosts.add(ShardReport.model_validate_json(path.read_text(encoding="utf-8")).hostname)
        except (OSError, ValueError):
            continue  # a report torn by a dying machine: the chunk's own reduce names it
    return sorted(hosts)


def failures_by_class(records: list[PageRecord]) -> dict[str, int]:
    counts = collections.Counter(record.error_class or "Unknown" for record in records if record.status == "failed")
    return dict(sorted(counts.items()))


def write_corpus_outputs(output_dir: Path, job: JobConfig, records: list[PageRecord]) -> None:
    """`results.jsonl`, `failures.jsonl` and the job's other outputs, each written atomically."""
    output_dir = Path(output_dir)
    write_atomic(output_dir / "results.jsonl", "".join(record.model_dump_json() + "\n" for record in records))
    write_atomic(output_dir / "failures.jsonl",
                 "".join(record.model_dump_json() + "\n" for record in records if record.status == "failed"))
    write_outputs(output_dir, records, job.outputs, dpi=job.pdf_dpi, max_pixels=job.max_image_pixels)


class ChunkRun(BaseModel):
    """What the fan-out saw of one chunk: its flow runs (one per attempt), their workers, how the last ended."""

    chunk: int
    flow_run_ids: list[str] = []
    workers: list[str] = []  # the Prefect workers (machines) that picked up its attempts
    state: str = "NOT_STARTED"  # the last attempt's final state type
    error: str | None = None  # why the chunk gave up; None once an attempt completed


class ChunkSummary(BaseModel):
    """One chunk's line in the corpus `summary.json`."""

    chunk: int
    output_dir: str
    pages_planned: int
    records: int
    pages_ok: int
    pages_failed: int
    attempts: int
    flow_run_ids: list[str]
    workers: list[str]
    hostnames: list[str]
    state: str
    problems: list[str]
    warnings: list[str]


class CorpusSummary(Totals):
    """The corpus `summary.json`: totals over every chunk, and the problems that make the corpus run invalid."""

    output_dir: str
    chunks: list[ChunkSummary]

    _kind: ClassVar[str] = "corpus run"

    def _counted_in(self) -> str:
        return f" in {counted(len(self.chunks), 'chunk')}"


def reduce_corpus(plan: CorpusPlan, runs: dict[int, ChunkRun], wall_s: float | None = None) -> CorpusSummary:
    """Check every corpus page has exactly one record across chunks; write results, failures and summary."""
    output = Path(plan.job.output_dir)
    records: list[PageRecord] = []
    chunks: list[ChunkSummary] = []
    earlier = _earlier_chunks(output)
    for spec in plan.chunks:
        run = _with_history(runs.get(spec.chunk, ChunkRun(chunk=spec.chunk)), earlier.get(spec.chunk), spec)
        chunk_records, problems = _reconcile_chunk(spec, run)
        records += chunk_records
        chunks.append(ChunkSummary(
            chunk=spec.chunk, output_dir=spec.output_dir, pages_planned=spec.pages, records=len(chunk_records),
            pages_ok=sum(record.status == "ok" for record in chunk_records),
            pages_failed=sum(record.status == "failed" for record in chunk_records),
            attempts=len(run.flow_run_ids), flow_run_ids=run.flow_run_ids, workers=run.workers,
            hostnames=chunk_hostnames(spec), state=run.state, problems=problems,
            warnings=_chunk_warnings(spec)))
    records.sort(key=lambda record: record.key)
    problems = [problem for chunk in chunks for problem in chunk.problems] + _across_chunks(plan, records)
    warnings = sorted({warning for chunk in chunks for warning in chunk.warnings})
    failed = sum(record.status == "failed" for record in records)
    write_corpus_outputs(output, plan.job, records)
    summary = CorpusSummary(
        output_dir=str(output), pages_planned=plan.pages_total, pages_ok=len(records) - failed, pages_failed=failed,
        failure_rate=round(failed / plan.pages_total, 6) if plan.pages_total else 0.0,
        max_failure_rate=plan.job.max_failure_rate, failures_by_class=failures_by_class(records),
        wall_s=round(wall_s, 3) if wall_s is not None else None, chunks=chunks, warnings=warnings,
        problems=problems)
    write_atomic(output / "summary.json", summary.model_dump_json(indent=2) + "\n")
    return summary


def _earlier_chunks(output: Path) -> dict[int, ChunkSummary]:
    """The chunks of the corpus `summary.json` an earlier run left, by chunk (none when unreadable)."""
    try:
        earlier = CorpusSummary.model_validate_json((output / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {chunk.chunk: chunk for chunk in earlier.chunks}


def _with_history(run: ChunkRun, earlier: ChunkSummary | None, spec: ChunkPlan) -> ChunkRun:
    """A chunk this run found done keeps the attempts, and their machines, of the run that did it."""
    if run.flow_run_ids or run.state != "COMPLETED" or earlier is None or earlier.output_dir != spec.output_dir \
            or earlier.state != "COMPLETED":
        return run
    return run.model_copy(update={"flow_run_ids": earlier.flow_run_ids, "workers": earlier.workers})


def _reconcile_chunk(spec: ChunkPlan, run: ChunkRun) -> tuple[list[PageRecord], list[str]]:
    """The chunk's valid records and its named problems: gave up, unparsable, unplanned, duplicate, missing."""
    name = f"chunk {spec.chunk}"
    lines = complete_lines(Path(spec.output_dir) / "results.jsonl")
    entries, problems = reconcile_lines(name, "results.jsonl", lines, planned_pages(spec), model=PageRecord)
    return [record for record, _ in entries], ([f"{name}: {run.error}"] if run.error else []) + problems


def _across_chunks(plan: CorpusPlan, records: list[PageRecord]) -> list[str]:
    """Every page of the corpus exactly once over all chunks (a page in two manifests shows up here)."""
    counts = collections.Counter(record.key for record in records)
    doubled = sorted(key for key, count in counts.items() if count > 1)
    problems = [f"{source} page {page}: a record in {counts[(source, page)]} chunks" for source, page in doubled[:10]]
    if len(counts) != plan.pages_total:
        problems.append(f"{plan.pages_total} pages in the corpus, {len(counts)} with a record")
    return problems


def _chunk_warnings(spec: ChunkPlan) -> list[str]:
    try:
        summary = json.loads((Path(spec.output_dir) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return list(summary.get("warnings", ()))


class StallWatch:
    """Presumes a chunk's run dead when it is PENDING or RUNNING and its dir gets no new bytes for `stall_s`.

    Prefect 3 does not mark a flow run Crashed when its machine dies: the run stays RUNNING. A live
    chunk appends a record per page and a log line per progress interval, so silence means death.
    """

    def __init__(self, folder: Path, stall_s: float, clock=None) -> None:
        import time

        self.folder, self.stall_s, self.clock = Path(folder), stall_s, clock or time.monotonic
        self.signature: tuple[int, int, int] | None = None
        self.since: float | None = None

    def stalled(self, state_type: str) -> bool:
        if state_type not in ("PENDING", "RUNNING"):
            self.since = None  # queued for a free machine: waiting is not dying
            return False
        now, signature = self.clock(), dir_signature(self.folder)
        if self.since is None or signature != self.signature:
            self.signature, self.since = signature, now
            return False
        return now - self.since > self.stall_s

    def quiet_s(self) -> float:
        return 0.0 if self.since is None else self.clock() - self.since
