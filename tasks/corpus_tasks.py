"""Thin Prefect tasks for a corpus run: plan the chunks, run one chunk as a child flow run, reduce."""

import time
from pathlib import Path
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterParentFlowRunId, FlowRunFilterState,
                                           FlowRunFilterStateType)
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.states import Cancelling, Crashed

from ocrfleet.config import JobConfig
from ocrfleet.corpus import (ChunkPlan, ChunkRun, CorpusConfig, CorpusPlan, CorpusSummary, StallWatch, chunk_job,
                          plan_corpus, reduce_corpus, write_corpus_plan)
from ocrfleet.run.lock import RunDirBusy, check_run_dir
from ocrfleet.reduce.summary import up_to_date

_ENDED = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})

# Corpus runs of this process being cancelled, by output dir: their chunk tasks start no new attempt and
# cancel the one they follow, so the corpus process can exit at once instead of being killed 30 s later.
_stopping: dict[Path, str] = {}


def stop_corpus(output_dir: Path, corpus_flow_run_id: UUID, reason: str) -> list[UUID]:
    """Stop the corpus run now: no new chunk attempts, every chunk run still going cancelled."""
    _stopping[Path(output_dir)] = reason
    return cancel_chunk_runs(corpus_flow_run_id, reason)


def reset_corpus(output_dir: Path) -> None:
    _stopping.pop(Path(output_dir), None)


def _stopped(config: CorpusConfig) -> str | None:
    """Why the corpus run of `config` is being stopped, or None while it goes on."""
    return _stopping.get(Path(config.job.output_dir))


@task(name="plan-chunks", cache_policy=NO_CACHE)
def plan_chunks(config: CorpusConfig) -> CorpusPlan:
    """Split the corpus into cost-balanced chunks and write each chunk's manifest and `corpus.json`."""
    plan, members = plan_corpus(config)
    write_corpus_plan(plan, members)
    get_run_logger().info("%d pages in %d chunks under %s", plan.pages_total, len(plan.chunks),
                          Path(plan.job.output_dir) / "chunks")
    return plan


@task(name="run-chunk", cache_policy=NO_CACHE)
def run_chunk(config: CorpusConfig, spec: ChunkPlan) -> ChunkRun:
    """Run chunk `spec` as a child flow run of `config.deployment` until one attempt completes.

    A failed, crashed or stalled attempt is started again (on whichever machine is free); the chunk's
    run dir keeps its records, so the new attempt resumes. Never raises for the chunk: a chunk that
    gave up says why in its `ChunkRun`, and the corpus reduce names it.
    """
    logger = get_run_logger()
    run = ChunkRun(chunk=spec.chunk)
    parameters = {"config": chunk_job(config, spec)}
    job = JobConfig.model_validate(parameters["config"])
    if _stopped(config) is None and _finished(job, logger):
        logger.info("chunk %d: every page already done with the same settings; not started", spec.chunk)
        run.state = "COMPLETED"
        return run
    with get_client(sync_client=True) as client:
        for attempt in range(1, config.chunk_attempts + 1):
            if (stopped := _stopped(config)) is None:
                wait_until_free(Path(spec.output_dir), config.chunk_stall_s, config.poll_s, logger)
                stopped = _stopped(config)
            if stopped is not None:
                run.state, run.error = "CANCELLED", f"attempt {attempt} not started: {stopped}"
                return run
            child = run_deployment(config.deployment, parameters=parameters, timeout=0, as_subflow=True,
                                   flow_run_name=f"chunk-{spec.chunk:05d}-try{attempt}")
            run.flow_run_ids.append(str(child.id))
            logger.info("chunk %d: attempt %d of %d is flow run %s", spec.chunk, attempt, config.chunk_attempts,
                        child.id)
            state, why = _follow(client, child.id, spec, config)
            ended = client.read_flow_run(child.id)
            run.workers.append((ended.labels or {}).get("prefect.worker.name") or "?")
            run.state = state
            if state == "COMPLETED":
                run.error = None
                return run
            if (stopped := _stopped(config)) is not None:
                run.error = f"attempt {attempt} ended {state}: {stopped}"
                return run
            run.error = f"gave up after {attempt} attempt(s); the last ended {state}: {why}"
            logger.warning("chunk %d: attempt %d ended %s: %s", spec.chunk, attempt, state, why)
    return run


def _finished(job: JobConfig, logger) -> bool:
    """Whether the chunk's dir holds a finished run that running `job` again would not change (never raises)."""
    try:
        done = up_to_date(job, as_before=True)
    except Exception as exc:  # the chunk's own run will list its inputs again and say what is wrong
        logger.info("%s: not checked for being up to date (%s); starting it", job.output_dir, exc)
        return False
    return done is not None and done.valid


def cancel_chunk_runs(corpus_flow_run_id: UUID, reason: str = "the corpus run was stopped") -> list[UUID]:
    """Cancel every chunk run of the corpus run that has not ended; return their ids.

    Each is proposed Cancelling, unforced, so the server's own rules decide by its state at that moment: a
    queued run goes straight to Cancelled (no machine picks it up later), one a machine has taken stays
    Cancelling until that machine's worker stops it, and its OCR workers exit with it. Prefect's server
    cancels subflows of a Cancelled run too, but only every `cancellation_cleanup.loop_seconds`, and not
    those of a run that crashed; this is at once.
    """
    unended = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED]
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[corpus_flow_run_id]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=unended))))
        for child in children:
            client.set_flow_run_state(child.id, Cancelling(message=f"corpus run {corpus_flow_run_id}: {reason}"))
    return [child.id for child in children]


def _follow(client: SyncPrefectClient, flow_run_id: UUID, spec: ChunkPlan, config: CorpusConfig) -> tuple[str, str]:
    """Poll the child until it ends or stalls; a stalled one is marked Crashed. Its final state and why."""
    watch = StallWatch(Path(spec.output_dir), config.chunk_stall_s)
    while True:
        flow_run = client.read_flow_run(flow_run_id)
        state = flow_run.state_type.value if flow_run.state_type else "SCHEDULED"
        if state in _ENDED:
            return state, (flow_run.state.message if flow_run.state else None) or "no message"
        if (stopped := _stopped(config)) is not None:
            if state == "CANCELLING":  # its machine (or the run itself) stops it; a dead machine never would
                return state, stopped
            # Started after stop_corpus listed the chunk runs: cancel it too.
            client.set_flow_run_state(flow_run_id, Cancelling(message=stopped))
        if watch.stalled(state):
            why = (f"{state} with no new bytes in {spec.output_dir} for {watch.quiet_s():.0f}s: "
                   "its machine is presumed dead")
            # force: a dead run cannot take part in orchestration; Prefect would keep it RUNNING forever.
            client.set_flow_run_state(flow_run_id, Crashed(message=why), force=True)
            return "CRASHED", why
        time.sleep(config.poll_s)


def wait_until_free(run_dir: Path, timeout_s: float, poll_s: float, logger) -> None:
    """Wait while a dead machine's lock on the chunk's run dir lingers (an NFS lease outlives its holder).

    After `timeout_s` the attempt starts anyway: a live holder then refuses it, which counts as a failed attempt.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            check_run_dir(run_dir)
            return
        except RunDirBusy as busy:
            if time.monotonic() > deadline:
                logger.warning("%s; starting the chunk anyway", busy)
                return
            logger.info("%s; waiting for the lock to be released", busy)
        time.sleep(poll_s)


@task(name="reduce-chunks", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def reduce_chunks(plan: CorpusPlan, runs: dict[int, ChunkRun], wall_s: float) -> CorpusSummary:
    """Reconcile every chunk's records with the corpus plan; write results, failures and summary."""
    summary = reduce_corpus(plan, runs, wall_s)
    get_run_logger().info("%s; results in %s", summary.verdict(), Path(plan.job.output_dir) / "results.jsonl")
    return summary
