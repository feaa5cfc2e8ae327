"""The corpus flow: plan chunks -> each chunk a child ocrfleet run on any machine's worker -> reduce."""

import time
from pathlib import Path

from prefect import flow
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.corpus import ChunkRun, CorpusConfig, CorpusSummary
from tasks.corpus_tasks import plan_chunks, reduce_chunks, run_chunk
from tasks.lock import hold_run_dir
from tasks.ocr_tasks import publish_outputs


class CorpusInvalid(RuntimeError):
    """The corpus run finished but a chunk gave up, pages are missing or too many failed."""


# Threads only poll child flow runs; one per chunk keeps every chunk queued at once.
@flow(name="ocrfleet-corpus", task_runner=ThreadPoolTaskRunner(max_workers=512), log_prints=True)
def corpus_run(config: CorpusConfig) -> CorpusSummary:
    """OCR a corpus in chunks spread over every machine's worker; fail unless each page has exactly one record."""
    started = time.monotonic()
    holder = f"corpus flow run {flow_run.get_name() or flow_run.get_id()}"
    with hold_run_dir(Path(config.job.output_dir), holder):
        plan = plan_chunks(config)
        futures = [run_chunk.submit(config, spec) for spec in plan.chunks]
        wait(futures)
        runs = {spec.chunk: future.result() if future.state.is_completed() else
                ChunkRun(chunk=spec.chunk, state="ERROR", error=f"its task failed: {future.state.message}")
                for spec, future in zip(plan.chunks, futures)}
        summary = reduce_chunks(plan, runs, time.monotonic() - started)
        if summary.valid and config.job.publish_to:
            publish_outputs(Path(config.job.output_dir), config.job.publish_to)
    if not summary.valid:
        raise CorpusInvalid(summary.verdict())
    return summary
