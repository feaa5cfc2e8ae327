"""Reduce: reconcile every shard's records with its plan, write `results.jsonl` and `summary.json`."""

from __future__ import annotations

import collections
import hashlib
from typing import ClassVar, TypeVar
from pathlib import Path

from pydantic import BaseModel, ValidationError

from ocrfleet.plan.ledger import CARRIED
from ocrfleet.reduce.outputs import write_outputs
from ocrfleet.config import JobConfig
from ocrfleet.plan.planning import (Plan, make_plan, pages_to_do, read_manifest, read_plan, retried_path,
                                    shard_paths)
from ocrfleet.records import JsonModel, PageRecord, RecordIdentity, ShardReport, complete_lines, write_atomic


def counted(count: int, noun: str) -> str:
    """`1 page`, `2 pages`: a count with its noun in the right number."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class ShardSummary(BaseModel):
    """One shard's line in `summary.json`."""

    shard: int
    device: str
    pages_planned: int
    records: int
    pages_ok: int
    pages_failed: int
    report: ShardReport | None = None


class Totals(JsonModel):
    """Page counts, warnings and problems: what decides whether a run (or a corpus of runs) is valid."""

    pages_planned: int  # every page the inputs name: each is ok, failed or skipped as already done
    pages_ok: int
    pages_failed: int
    failure_rate: float
    max_failure_rate: float
    failures_by_class: dict[str, int]
    wall_s: float | None = None
    warnings: list[str]
    problems: list[str]

    @property
    def valid(self) -> bool:
        return not self.problems and self.failure_rate <= self.max_failure_rate

    def verdict(self) -> str:
        if self.problems:
            return f"invalid {self._kind}: {len(self.problems)} problem(s): " + "; ".join(self.problems[:5])
        if self.failure_rate > self.max_failure_rate:
            return (f"{self.pages_failed} of {self.pages_planned} pages failed ({self.failure_rate:.1%}), above "
                    f"max_failure_rate={self.max_failure_rate:.1%}; see failures.jsonl")
        return f"{counted(self.pages_ok, 'page')} ok, {self.pages_failed} failed{self._counted_in()}, no problems"

    _kind: ClassVar[str] = "run"

    def _counted_in(self) -> str:
        return ""


class Retried(BaseModel):
    """What a retry of failed pages redid (retry_failed in place, or only_failed into a new output dir)."""

    pages: int  # pages whose earlier record failed, done again
    still_failed: int  # of them, failed again
    earlier_records: str  # where their earlier failed records are kept

    def sentence(self) -> str:
        return (f"retried {counted(self.pages, 'failed page')}: {self.pages - self.still_failed} now ok, "
                f"{self.still_failed} still failed (earlier records: {self.earlier_records})")


class RunSummary(Totals):
    """`summary.json`: counts, per-shard figures, warnings and the problems that make a run invalid."""

    run_dir: str
    derived_from: str | None = None  # reprocessing: the earlier run this one redid pages of
    pages_skipped: int  # done by an earlier run with the same file content and settings: not redone
    retried: Retried | None = None
    shards: list[ShardSummary]
    # The reduce's commit: written last, naming the exact `run.json` and `results.jsonl` it summarizes. Outputs
    # that do not match it are a reduce cut short, never a finished run (`up_to_date` redoes it).
    plan_sha256: str | None = None
    results_sha256: str | None = None

    def verdict(self) -> str:
        said = super().verdict()
        return f"{said}; {self.retried.sentence()}" if self.retried else said


R = TypeVar("R", bound=RecordIdentity)

# A record as reduce handles it: its identity (parsed) and its JSON line, kept as the worker wrote it.
Entry = tuple[RecordIdentity, str]


def reduce_run(run_dir: Path, shard_errors: dict[int, str] | None = None, wall_s: float | None = None) -> RunSummary:
    """Check every planned page has exactly one record; write results, failures and summary (atomically).

    Records are reconciled by their identity fields only and written as the lines they are, so reducing
    a million pages costs seconds; the optional outputs (parquet, text, ...) parse them in full.
    """
    plan_bytes = (run_dir / "run.json").read_bytes()
    plan = Plan.model_validate_json(plan_bytes)
    shard_errors = shard_errors or {}
    problems = [f"shard {shard}: {error.splitlines()[0]}" for shard, error in sorted(shard_errors.items())]
    entries, carried_problems = _carried(run_dir, plan)
    problems += carried_problems
    shards = []
    for spec in plan.shards:
        shard_entries, shard_problems = _reconcile(run_dir, spec.shard)
        problems += shard_problems
        entries += shard_entries
        report_path = shard_paths(run_dir, spec.shard)["report"]
        report = ShardReport.model_validate_json(report_path.read_text()) if report_path.exists() else None
        ok = sum(identity.status == "ok" for identity, _ in shard_entries)
        shards.append(ShardSummary(shard=spec.shard, device=spec.device.name, pages_planned=spec.pages,
                                   records=len(shard_entries), pages_ok=ok, pages_failed=len(shard_entries) - ok,
                                   report=report))
    problems += _placement_problems(plan, shards)
    warnings = list(plan.warnings) + [w for shard in shards if shard.report for w in shard.report.warnings]
    entries.sort(key=lambda entry: entry[0].key)
    problems += _whole_run_problems(plan, entries)
    failed = [entry for entry in entries if entry[0].status == "failed"]
    write_atomic(run_dir / "results.jsonl", "".join(line + "\n" for _, line in entries))
    write_atomic(run_dir / "failures.jsonl", "".join(line + "\n" for _, line in failed))
    config = plan.config
    if config.outputs:
        records = [PageRecord.model_validate_json(line) for _, line in entries]
        write_outputs(run_dir, records, config.outputs, dpi=config.pdf_dpi, max_pixels=config.max_image_pixels)
    digests = {"plan_sha256": _sha256(plan_bytes), "results_sha256": _sha256((run_dir / "results.jsonl").read_bytes())}
    summary = _summarize(run_dir, plan, entries, failed, shards, problems, warnings, wall_s).model_copy(
        update={**digests, "retried": _retried(run_dir, plan, failed)})
    write_atomic(run_dir / "summary.json", summary.model_dump_json(indent=2) + "\n")  # the commit: last
    return summary


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def committed(run_dir: Path, summary: RunSummary) -> bool:
    """Whether `summary` is the commit of the reduce that wrote the run dir's `run.json` and `results.jsonl`:
    false when a reduce (or a new plan) was cut short after it, or for a summary of an older version."""
    try:
        return (summary.plan_sha256 is not None and summary.results_sha256 is not None
                and _sha256((run_dir / "run.json").read_bytes()) == summary.plan_sha256
                and _sha256((run_dir / "results.jsonl").read_bytes()) == summary.results_sha256)
    except OSError:
        return False


def _summarize(run_dir: Path, plan: Plan, records: list[Entry], failed: list[Entry],
               shards: list[ShardSummary], problems: list[str], warnings: list[str],
               wall_s: float | None) -> RunSummary:
    by_class = collections.Counter(identity.error_class or "Unknown" for identity, _ in failed)
    return RunSummary(
        run_dir=str(run_dir), derived_from=str(plan.config.derived_from) if plan.config.derived_from else None,
        pages_planned=plan.pages_total, pages_skipped=plan.pages_skipped,
        pages_ok=len(records) - len(failed),
        pages_failed=len(failed), failure_rate=round(len(failed) / plan.pages_total, 6) if plan.pages_total else 0.0,
        max_failure_rate=plan.config.max_failure_rate, failures_by_class=dict(sorted(by_class.items())),
        wall_s=round(wall_s, 3) if wall_s is not None else None, shards=shards,
        warnings=warnings, problems=problems)


def _retried(run_dir: Path, plan: Plan, failed: list[Entry]) -> Retried | None:
    """What this run redid of earlier failures: in place (retry_failed) or as a reprocessing (only_failed)."""
    if plan.config.only_failed:
        return Retried(pages=plan.pages_total, still_failed=len(failed),
                       earlier_records=str(Path(plan.config.derived_from) / "failures.jsonl"))
    if not plan.pages_retried:
        return None
    path = retried_path(run_dir, plan.retry_round)
    keys = {RecordIdentity.model_validate_json(line).key for line in complete_lines(path)}
    return Retried(pages=plan.pages_retried, still_failed=sum(identity.key in keys for identity, _ in failed),
                   earlier_records=str(path))


def _placement_problems(plan: Plan, shards: list[ShardSummary]) -> list[str]:
    """Shards that ran on a GPU other than the planned one, and planned GPUs left idle or doubled up."""
    problems = []
    landed: dict[str, set[str]] = collections.defaultdict(set)  # held GPU -> planned devices that landed there
    for spec, shard in zip(plan.shards, shards):
        if not (shard.report and shard.report.gpu_uuid):
            continue
        landed[shard.report.gpu_uuid].add(spec.device.name)
        if shard.report.gpu_uuid != spec.device.uuid:
            problems.append(f"shard {spec.shard}: planned on {spec.device.name} ({spec.device.uuid}) but ran on "
                            f"{shard.report.gpu_uuid} ({shard.report.gpu_name}), pid {shard.report.pid}")
    problems += [f"GPU {uuid} ran the shards of {len(names)} planned devices ({', '.join(sorted(names))})"
                 for uuid, names in sorted(landed.items()) if len(names) > 1]
    verified = all(shard.report and shard.report.placement_verified for shard in shards)
    if landed and verified:  # only when every worker could tell: an unverifiable one says so in warnings
        idle = sorted({spec.device.name for spec in plan.shards if spec.device.uuid not in landed})
        problems += [f"{name}: planned, but no worker ran on it" for name in idle]
    return problems


def _whole_run_problems(plan: Plan, entries: list[Entry]) -> list[str]:
    """Across shards and carried records: every page of the inputs exactly once."""
    keys = [identity.key for identity, _ in entries]
    duplicates = len(keys) - len(set(keys))
    problems = [f"{duplicates} page(s) have a record both carried and made again"] if duplicates else []
    if len(set(keys)) != plan.pages_total:
        problems.append(f"{plan.pages_total} pages in the inputs, {len(set(keys))} with a record")
    return problems


def _carried(run_dir: Path, plan: Plan) -> tuple[list[Entry], list[str]]:
    """The earlier records this plan reuses, checked against the count it planned to reuse."""
    lines = complete_lines(run_dir / CARRIED)
    entries, problems = [], []
    for number, line in enumerate(lines, 1):
        try:
            entries.append((RecordIdentity.model_validate_json(line), line))
        except ValidationError:
            problems.append(f"{CARRIED} line {number} does not parse")
    if len(lines) != plan.pages_skipped:
        problems.append(f"{CARRIED}: {len(lines)} records, but the plan reuses {plan.pages_skipped}")
    return entries, problems


def _reconcile(run_dir: Path, shard: int) -> tuple[list[Entry], list[str]]:
    """The shard's valid records and the named problems: unparsable, duplicate, unplanned, missing."""
    paths = shard_paths(run_dir, shard)
    planned = {page.key for page in read_manifest(run_dir, shard)}
    entries, problems = reconcile_lines(f"shard {shard}", "records", complete_lines(paths["records"]), planned)
    if not paths["done"].exists():
        problems.append(f"shard {shard}: no done marker; its worker did not finish")
    return entries, problems


def reconcile_lines(name: str, what: str, lines: list[str], planned: set[tuple[str, int]],
                    model: type[R] = RecordIdentity) -> tuple[list[tuple[R, str]], list[str]]:
    """Each planned page's one record among `lines`, and the named problems: unparsable, unplanned, duplicate,
    missing. `name` and `what` say whose lines they are (`shard 3`, `records`), for the problems' text."""
    problems: list[str] = []
    entries: list[tuple[R, str]] = []
    seen: set[tuple[str, int]] = set()
    for number, line in enumerate(lines, 1):
        try:
            record = model.model_validate_json(line)
        except ValidationError:
            problems.append(f"{name}: {what} line {number} does not parse")
            continue
        if record.key not in planned:
            problems.append(f"{name}: unplanned record {record.source} page {record.page}")
        elif record.key in seen:
            problems.append(f"{name}: duplicate record {record.source} page {record.page}")
        else:
            seen.add(record.key)
            entries.append((record, line))
    if len(seen) != len(planned):
        missing = sorted(planned - seen)
        examples = ", ".join(f"{source} page {page}" for source, page in missing[:3])
        problems.append(f"{name}: {len(planned)} pages planned, {len(seen)} records (missing {examples})")
    return entries, problems


def finished(config: JobConfig, as_before: bool = False) -> RunSummary | None:
    """The summary of the run in `config.output_dir` if its reduce finished it: `up_to_date`, with failed
    pages counted as done even when `config` asks to retry them (a retry that ended with pages still failing
    is finished all the same)."""
    return up_to_date(config.model_copy(update={"retry_failed": False}), as_before)


def _as_settings(config: JobConfig) -> JobConfig:
    return config.model_copy(update={"retry_failed": False})


def up_to_date(config: JobConfig, as_before: bool = False) -> RunSummary | None:
    """The summary of the finished run in `config.output_dir`, if running `config` again would change nothing.

    That is: the same config, no page to do, every page's earlier record exactly what `results.jsonl`
    holds, and `summary.json` the commit of the reduce that wrote it (`committed`): after a reduce cut short,
    the outputs are not trusted, and the run is done again (reusing every record). A nightly run with nothing
    new then costs a listing and a read, not a Prefect run. `as_before`
    judges the records by the models and engine the earlier run resolved instead of resolving them here: a
    corpus's control machine checks a chunk that a GPU machine ran, and would resolve a CPU engine itself.
    """
    run_dir = Path(config.output_dir)
    try:
        earlier = read_plan(run_dir)
        summary = RunSummary.model_validate_json((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    # retry_failed asks this run to redo failed pages; it is not a setting the run dir's records depend on.
    if _as_settings(earlier.config) != _as_settings(config) or not committed(run_dir, summary):
        return None
    if as_before:
        _, pages, reused = pages_to_do(config, earlier.settings)
        if pages:
            return None
    else:
        planned = make_plan(config)
        if planned.shard_pages or planned.plan.settings != earlier.settings:
            return None
        reused = planned.reused
    if [prior.line for prior in reused] != complete_lines(run_dir / "results.jsonl"):
        return None
    return summary
