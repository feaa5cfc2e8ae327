"""What a run shows in the Prefect UI: a live progress artifact, then a per-shard table and a verdict."""

from __future__ import annotations

import contextvars
import logging
import re
import threading
import time
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from ocrfleet.corpus import CorpusSummary
from ocrfleet.plan.planning import Plan
from ocrfleet.reduce.summary import RunSummary, counted

log = logging.getLogger(__name__)

OUTPUT_PATHS = {"parquet": "results.parquet", "text": "text/", "pages": "pages/", "vis": "vis/"}

PROGRESS_KEY = "ocrfleet-progress"
SHARDS_KEY = "ocrfleet-shards"
SUMMARY_KEY = "ocrfleet-summary"
CHUNKS_KEY = "ocrfleet-corpus-chunks"
CORPUS_SUMMARY_KEY = "ocrfleet-corpus-summary"

_PROGRESS_LINE = re.compile(r"progress shard=(\d+) done=(\d+) total=(\d+)")


class ProgressReporter:
    """Percent of pages done, as one progress artifact of the flow run; safe to feed from any thread.

    Create it inside the flow: it remembers the flow run's Prefect context, so updates from task threads
    or plain threads (a worker's output reader) reach the same server and artifact.
    """

    def __init__(self, pages_total: int, shards: int, min_interval_s: float = 5.0, unit: str = "shards") -> None:
        self.pages_total = pages_total
        self.shards = shards
        self.unit = unit  # what the pages are split into: a run's shards, a corpus's chunks
        self.min_interval_s = min_interval_s
        self._done: dict[int, int] = {}
        self._lock = threading.Lock()
        self._publishing = threading.Lock()
        self._last_publish = time.monotonic()
        self._context = contextvars.copy_context()
        self.artifact_id: UUID = create_progress_artifact(0.0, key=PROGRESS_KEY, description=self._describe(0))

    def observe(self, message: str) -> None:
        """Feed one worker log message; `progress shard=N done=D total=T` lines update the artifact."""
        match = _PROGRESS_LINE.search(message)
        if match:
            self.update(int(match[1]), int(match[2]))

    def update(self, shard: int, done: int) -> None:
        """Shard `shard` has `done` pages done (a running count, resumed runs included); publish at most
        every `min_interval_s` seconds."""
        with self._lock:
            self._done[shard] = max(done, self._done.get(shard, 0))
            now = time.monotonic()
            if now - self._last_publish < self.min_interval_s:
                return
            self._last_publish = now
        # One publisher at a time; a thread that finds it busy skips, the next update carries its count.
        if self._publishing.acquire(blocking=False):
            try:
                self._publish(self.pages_done)
            finally:
                self._publishing.release()

    def finish(self, pages_done: int | None = None) -> None:
        """Publish the final figure: `pages_done` (e.g. the summary's records), else 100%."""
        with self._publishing:
            self._publish(self.pages_total if pages_done is None else pages_done)

    @property
    def pages_done(self) -> int:
        with self._lock:
            return min(sum(self._done.values()), self.pages_total)

    def percent(self, pages_done: int) -> float:
        return 100.0 if self.pages_total == 0 else round(100.0 * pages_done / self.pages_total, 2)

    def _describe(self, pages_done: int) -> str:
        unit = self.unit.removesuffix("s") if self.shards == 1 else self.unit  # "1 shard", "2 shards"
        return f"{pages_done} of {counted(self.pages_total, 'page')} OCRed ({self.shards} {unit})"

    def _publish(self, pages_done: int) -> None:
        try:
            # A copy of the flow's context per call: plain threads lack Prefect's settings and client.
            self._context.copy().run(update_progress_artifact, self.artifact_id, self.percent(pages_done),
                                     description=self._describe(pages_done))
        except Exception as exc:  # a lost progress update must never fail the shard that reported it
            log.warning("progress artifact not updated: %s", exc)


def publish_summary(summary: RunSummary, plan: Plan) -> None:
    """A per-shard table artifact and a markdown artifact with totals, failures, warnings and verdict."""
    create_table_artifact(shard_rows(summary), key=SHARDS_KEY,
                          description=f"ocrfleet shards of {summary.run_dir}")
    create_markdown_artifact(summary_markdown(summary, plan), key=SUMMARY_KEY,
                             description=f"ocrfleet verdict for {summary.run_dir}")


def publish_cancelled(plan: Plan, pages_recorded: int) -> None:
    """The summary artifact of a cancelled run: marked cancelled, with pages done and left and how to resume."""
    create_markdown_artifact(cancelled_markdown(plan, pages_recorded), key=SUMMARY_KEY,
                             description=f"ocrfleet run of {plan.config.output_dir}: cancelled")


def cancelled_markdown(plan: Plan, pages_recorded: int) -> str:
    run_dir = plan.config.output_dir
    to_do = plan.pages_total - plan.pages_skipped
    left = max(to_do - pages_recorded, 0)
    return "\n".join([
        "# ocrfleet run: cancelled",
        "",
        f"**Cancelled with {pages_recorded} of {counted(to_do, 'page')} done, {left} left.** "
        "Nothing was reduced: no results.jsonl or summary.json was written for this run.",
        "",
        "| pages planned | skipped (done before) | done in this run | left | shards |",
        "|---|---|---|---|---|",
        f"| {plan.pages_total} | {plan.pages_skipped} | {pages_recorded} | {left} | {len(plan.shards)} |",
        "",
        "## Resume",
        "",
        f"Run it again with the same config and output_dir `{run_dir}` (trigger the deployment again with the "
        "same parameters, or the same `ocrfleet run` command): the pages done are kept, only the rest is OCRed.",
    ]) + "\n"


def shard_rows(summary: RunSummary) -> list[dict[str, Any]]:
    return [
        {"shard": shard.shard, "device": shard.device, "pages": shard.pages_planned, "ok": shard.pages_ok,
         "failed": shard.pages_failed, "pages/s": shard.report.pages_per_s if shard.report else None,
         "busy": shard.report.busy_fraction if shard.report else None,
         "gpu util %": shard.report.gpu_utilization_pct if shard.report else None}
        for shard in summary.shards
    ]


def summary_markdown(summary: RunSummary, plan: Plan) -> str:
    verdict = "valid" if summary.valid else "INVALID"
    lines = [
        f"# ocrfleet run: {verdict}",
        "",
        f"**{summary.verdict()}**",
        "",
        "| pages planned | skipped (done before) | ok | failed | failure rate | max failure rate | shards | wall s |",
        "|---|---|---|---|---|---|---|---|",
        f"| {summary.pages_planned} | {summary.pages_skipped} | {summary.pages_ok} | {summary.pages_failed} "
        f"| {summary.failure_rate:.2%} "
        f"| {summary.max_failure_rate:.2%} | {len(plan.shards)} | {summary.wall_s if summary.wall_s is not None else '-'} |",
        "",
        "## Failures by class",
        "",
        *([f"- `{name}`: {count}" for name, count in summary.failures_by_class.items()] or ["none"]),
        "",
        "## Warnings",
        "",
        *([f"- {warning}" for warning in summary.warnings] or ["none"]),
    ]
    if summary.derived_from:
        lines += ["", f"Reprocessing of `{summary.derived_from}`."]
    if summary.problems:
        lines += ["", "## Problems", "", *[f"- {problem}" for problem in summary.problems]]
    run_dir = summary.run_dir
    lines += ["", "## Outputs", "", f"- results: `{run_dir}/results.jsonl`",
              f"- failures: `{run_dir}/failures.jsonl`", f"- summary: `{run_dir}/summary.json`",
              *[f"- {kind}: `{run_dir}/{OUTPUT_PATHS[kind]}`" for kind in plan.config.outputs]]
    return "\n".join(lines) + "\n"


def publish_corpus_summary(summary: CorpusSummary) -> None:
    """A per-chunk table artifact (attempts, machines) and a markdown artifact with totals and verdict."""
    create_table_artifact(chunk_rows(summary), key=CHUNKS_KEY,
                          description=f"ocrfleet chunks of {summary.output_dir}")
    create_markdown_artifact(corpus_markdown(summary), key=CORPUS_SUMMARY_KEY,
                             description=f"ocrfleet corpus verdict for {summary.output_dir}")


def chunk_rows(summary: CorpusSummary) -> list[dict[str, Any]]:
    return [
        {"chunk": chunk.chunk, "pages": chunk.pages_planned, "ok": chunk.pages_ok, "failed": chunk.pages_failed,
         "state": chunk.state, "attempts": chunk.attempts, "workers": ", ".join(chunk.workers),
         "hosts": ", ".join(chunk.hostnames), "problems": len(chunk.problems)}
        for chunk in summary.chunks
    ]


def corpus_markdown(summary: CorpusSummary) -> str:
    retried = [chunk for chunk in summary.chunks if chunk.attempts > 1]
    lines = [
        f"# ocrfleet corpus run: {'valid' if summary.valid else 'INVALID'}",
        "",
        f"**{summary.verdict()}**",
        "",
        "| pages planned | ok | failed | failure rate | max failure rate | chunks | machines | wall s |",
        "|---|---|---|---|---|---|---|---|",
        f"| {summary.pages_planned} | {summary.pages_ok} | {summary.pages_failed} | {summary.failure_rate:.2%} "
        f"| {summary.max_failure_rate:.2%} | {len(summary.chunks)} "
        f"| {len({worker for chunk in summary.chunks for worker in chunk.workers})} "
        f"| {summary.wall_s if summary.wall_s is not None else '-'} |",
        "",
        "## Chunks started again",
        "",
        *([f"- chunk {chunk.chunk}: {chunk.attempts} attempts, on {' then '.join(chunk.workers)}"
           for chunk in retried] or ["none"]),
        "",
        "## Failures by class",
        "",
        *([f"- `{name}`: {count}" for name, count in summary.failures_by_class.items()] or ["none"]),
    ]
    if summary.warnings:
        lines += ["", "## Warnings", "", *[f"- {warning}" for warning in summary.warnings]]
    if summary.problems:
        lines += ["", "## Problems", "", *[f"- {problem}" for problem in summary.problems]]
    out = summary.output_dir
    lines += ["", "## Outputs", "", f"- results: `{out}/results.jsonl`", f"- failures: `{out}/failures.jsonl`",
              f"- summary: `{out}/summary.json`", f"- each chunk's own run: `{out}/chunks/NNNNN/`"]
    return "\n".join(lines) + "\n"
