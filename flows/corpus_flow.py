"""The corpus flow: plan chunks -> each chunk a child ocrfleet run on any machine's worker -> reduce."""

import time
from pathlib import Path
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.logging.loggers import flow_run_logger
from prefect.futures import PrefectFuture, wait
from prefect.runtime import flow_run
from prefect.states import Cancelled
from prefect.task_runners import ThreadPoolTaskRunner

from ocrfleet.tasks.cancel_watch import CancelWatch
from ocrfleet.corpus import ChunkPlan, ChunkRun, CorpusConfig, CorpusSummary
from ocrfleet.tasks.corpus_tasks import (cancel_chunk_runs, claim_corpus, plan_chunks, reduce_chunks, reset_corpus,
                                         run_chunk, stop_corpus)
from ocrfleet.run.lock import hold_run_dir
from ocrfleet.tasks.ocr_tasks import publish_outputs
from ocrfleet.run.preflight import preflight
from ocrfleet.tasks.policy_check import check_allowed
from ocrfleet.tasks.reporting import ProgressReporter, publish_corpus_summary


class CorpusInvalid(RuntimeError):
    """The corpus run finished but a chunk gave up, pages are missing or too many failed."""


def stop_chunks(flow, flow_run, state) -> None:
    """Cancelled from the UI or stopped by Ctrl-C: stop the chunk runs too, or their machines go on OCRing."""
    stopped = cancel_chunk_runs(flow_run.id)
    # A hook may run in the worker, outside the run's context: a logger bound to the run explicitly.
    flow_run_logger(flow_run, flow).warning("corpus run %s: cancelled %d chunk run(s) still going", state.name, len(stopped))


def _count(progress: ProgressReporter, spec: ChunkPlan, done: PrefectFuture) -> None:
    if done.state.is_completed() and done.result().state == "COMPLETED":
        progress.update(spec.chunk, spec.pages)


# Threads only poll child flow runs; one per chunk keeps every chunk queued at once.
@flow(name="ocrfleet-corpus", task_runner=ThreadPoolTaskRunner(max_workers=512), log_prints=True,
      on_cancellation=[stop_chunks], on_crashed=[stop_chunks])
def corpus_run(config: CorpusConfig) -> CorpusSummary:
    """OCR a corpus in chunks spread over every machine's worker; fail unless each page has exactly one record."""
    check_allowed(config.job)  # before anything is created: a run outside the machine's allowed roots fails here
    preflight(config.job, devices=False)  # the output dir and the inputs, still before anything is created
    started = time.monotonic()
    holder = f"corpus flow run {flow_run.get_name() or flow_run.get_id()}"
    corpus_flow_run_id, logger = UUID(flow_run.get_id()), get_run_logger()

    def stop(why: str) -> None:
        stopped = stop_corpus(config.job.output_dir, corpus_flow_run_id, why)
        logger.warning("%s: cancelled %d chunk run(s) still going", why, len(stopped))

    with hold_run_dir(Path(config.job.output_dir), holder):
        reset_corpus(config.job.output_dir)
        with CancelWatch(stop) as cancel:
            plan = plan_chunks(config)
            adopted = claim_corpus(config, plan)  # a controller that died left its chunk runs going: follow them
            progress = ProgressReporter(plan.pages_total, len(plan.chunks), min_interval_s=0, unit="chunks")
            name = flow_run.get_name() or "corpus"
            futures = [run_chunk.submit(config, spec, name, adopted.get(spec.chunk)) for spec in plan.chunks]
            for spec, future in zip(plan.chunks, futures):
                future.add_done_callback(lambda done, spec=spec: _count(progress, spec, done))
            wait(futures)
            if not cancel.cancelled.is_set():
                runs = {spec.chunk: future.result() if future.state.is_completed() else
                        ChunkRun(chunk=spec.chunk, state="ERROR", error=f"its task failed: {future.state.message}")
                        for spec, future in zip(plan.chunks, futures)}
                summary = reduce_chunks(plan, runs, time.monotonic() - started)
                progress.finish(summary.pages_ok + summary.pages_failed)
                if summary.valid and config.job.publish_to:
                    publish_outputs(Path(config.job.output_dir), config.job.publish_to)
    if cancel.cancelled.is_set():  # Completed or Failed would be refused after a cancel: the run stays Cancelling
        return Cancelled(message="corpus run cancelled; its chunk runs are cancelled, and a rerun resumes")
    publish_corpus_summary(summary)
    if not summary.valid:
        raise CorpusInvalid(summary.verdict())
    return summary
