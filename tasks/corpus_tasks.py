"""Thin Prefect tasks for a corpus run: plan the chunks, run one chunk as a child flow run, reduce.

Every corpus run and chunk run carries tags naming the corpus dir, so a controller that starts after
a dead one (or a signal handler outside the flow) finds them in the API without knowing their ids.
"""

import collections
import threading
import time
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId,
                                           FlowRunFilterParentFlowRunId, FlowRunFilterState,
                                           FlowRunFilterStateType, FlowRunFilterTags, TaskRunFilter,
                                           TaskRunFilterState, TaskRunFilterStateType)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.runtime import flow_run as this_flow_run
from prefect.states import Cancelled, Cancelling, Crashed, State

from ocrfleet.config import JobConfig
from ocrfleet.corpus import (ChunkPlan, ChunkRun, CorpusConfig, CorpusPlan, CorpusSummary, StallWatch, chunk_job,
                          plan_corpus, reduce_corpus, write_corpus_plan)
from ocrfleet.run.lock import RunDirBusy, check_run_dir
from ocrfleet.reduce.summary import finished

_ENDED = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
_GOING = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED]
CORPUS_FLOW = "ocrfleet-corpus"
# A cancelled chunk run whose machine has not stopped it by then is presumed dead with its machine
# (a live worker stops it within seconds; Prefect itself waits 5 minutes).
CANCEL_GRACE_S = 30.0

# Corpus runs of this process being stopped, by output dir: their chunk tasks start no new attempt and
# cancel the one they follow, so the corpus process can exit at once instead of being killed 30 s later.
# `_starting` counts attempts being created right now, so a stop can wait for them and then cancel them too.
_gate = threading.Condition()
_stopping: dict[Path, str] = {}
_starting: collections.Counter[Path] = collections.Counter()


def corpus_tag(output_dir: Path) -> str:
    """The tag of every corpus run of `output_dir`."""
    return f"ocrfleet-corpus:{Path(output_dir).absolute()}"


def chunk_of_tag(output_dir: Path) -> str:
    """The tag of every chunk run of the corpus in `output_dir`."""
    return f"ocrfleet-chunk-of:{Path(output_dir).absolute()}"


def chunk_tags(output_dir: Path, chunk: int) -> list[str]:
    """The tags of every run of chunk `chunk` of the corpus in `output_dir`."""
    return [chunk_of_tag(output_dir), f"ocrfleet-chunk:{chunk:05d}"]


def _hold_starts(output_dir: Path, reason: str, wait_s: float = 5.0) -> None:
    """From now on no chunk attempt of `output_dir` starts in this process; wait for those being created."""
    key = Path(output_dir)
    with _gate:
        _stopping[key] = reason
        _gate.wait_for(lambda: not _starting[key], timeout=wait_s)


def stop_corpus(output_dir: Path, corpus_flow_run_id: UUID, reason: str) -> list[UUID]:
    """Stop the corpus run now: no new chunk attempts, every chunk run still going cancelled."""
    _hold_starts(output_dir, reason)
    return cancel_chunk_runs(corpus_flow_run_id, reason)


def stop_corpus_dir(output_dir: Path, reason: str) -> list[UUID]:
    """Stop the corpus of `output_dir` from outside its flow (a signal): no new attempt in this process,
    every chunk run of the corpus still going cancelled, and its corpus runs Cancelled, task runs too."""
    _hold_starts(output_dir, reason)
    with get_client(sync_client=True) as client:
        children = _flow_runs(client, [chunk_of_tag(output_dir)], _GOING)
        for child in children:
            client.set_flow_run_state(child.id, Cancelling(message=f"corpus {output_dir}: {reason}"))
        for corpus in _flow_runs(client, [corpus_tag(output_dir)], [*_GOING, StateType.CANCELLING], CORPUS_FLOW):
            end_run(client, corpus.id, lambda: Cancelled(message=f"{reason}; its chunk runs are cancelled, "
                                                                  "and a rerun resumes"))
    return [child.id for child in children]


def reset_corpus(output_dir: Path) -> None:
    with _gate:
        _stopping.pop(Path(output_dir), None)


def _stopped(config: CorpusConfig) -> str | None:
    """Why the corpus run of `config` is being stopped, or None while it goes on."""
    with _gate:
        return _stopping.get(Path(config.job.output_dir))


def _flow_runs(client: SyncPrefectClient, tags: list[str], states: list[StateType],
               flow_name: str | None = None) -> list[FlowRun]:
    """Flow runs carrying every tag in `tags`, in one of `states`."""
    return client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])) if flow_name else None,
        flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=tags),
                                      state=FlowRunFilterState(type=FlowRunFilterStateType(any_=states))))


def end_run(client: SyncPrefectClient, flow_run_id: UUID, state: Callable[[], State]) -> None:
    """Force a final state on a flow run and on its task runs still going: a dead run reports nothing more."""
    client.set_flow_run_state(flow_run_id, state(), force=True)
    going = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
    for task_run in client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=going)))):
        client.set_task_run_state(task_run.id, state(), force=True)


@task(name="plan-chunks", cache_policy=NO_CACHE)
def plan_chunks(config: CorpusConfig) -> CorpusPlan:
    """Split the corpus into cost-balanced chunks and write each chunk's manifest and `corpus.json`."""
    plan, members = plan_corpus(config)
    write_corpus_plan(plan, members)
    get_run_logger().info("%d pages in %d chunks under %s", plan.pages_total, len(plan.chunks),
                          Path(plan.job.output_dir) / "chunks")
    return plan


@task(name="claim-corpus", cache_policy=NO_CACHE)
def claim_corpus(config: CorpusConfig, plan: CorpusPlan) -> dict[int, UUID]:
    """Take the corpus over from controllers that died; return the chunk runs they left going, to follow.

    Called with the corpus dir held, so every other corpus run of it still going in the API is dead: it
    is marked Crashed (task runs too). Its chunk runs still queued or running are adopted when they run
    this plan's chunk (instead of racing a new attempt into a busy chunk dir); others, and those it was
    cancelling, are cancelled.
    """
    logger, output = get_run_logger(), Path(config.job.output_dir)
    own = UUID(this_flow_run.get_id())
    adopted: dict[int, UUID] = {}
    with get_client(sync_client=True) as client:
        tags = client.read_flow_run(own).tags
        if corpus_tag(output) not in tags:  # a run started by a deployment: tag it for the next controller
            client.update_flow_run(own, tags=[*tags, corpus_tag(output)])
        for dead in _flow_runs(client, [corpus_tag(output)], [*_GOING[1:], StateType.CANCELLING], CORPUS_FLOW):
            if dead.id != own:
                why = f"its controller is gone: corpus run {own} took {output} over"
                end_run(client, dead.id, lambda: Crashed(message=why))
                logger.warning("corpus run %s (%s) was left %s by a controller that died: marked Crashed",
                               dead.name, dead.id, dead.state_type.value if dead.state_type else "?")
        jobs = {spec.chunk: JobConfig.model_validate(chunk_job(config, spec)) for spec in plan.chunks}
        for child in _flow_runs(client, [chunk_of_tag(output)], [*_GOING, StateType.CANCELLING]):
            chunk = next((int(tag.split(":")[1]) for tag in child.tags if tag.startswith("ocrfleet-chunk:")), None)
            same = chunk in jobs and _runs_job(child, jobs[chunk])
            if same and chunk not in adopted and child.state_type != StateType.CANCELLING:
                adopted[chunk] = child.id
                logger.info("chunk %d: flow run %s (%s) of an earlier corpus run is adopted", chunk, child.name,
                            child.id)
            else:  # another plan's chunk, a duplicate, or a cancel its dead controller never saw through
                end_run(client, child.id, lambda: Cancelled(message=f"corpus run {own} took {output} over"))
    return adopted


def _runs_job(child: FlowRun, job: JobConfig) -> bool:
    try:
        return JobConfig.model_validate(child.parameters.get("config")) == job
    except ValueError:
        return False


@task(name="run-chunk", cache_policy=NO_CACHE)
def run_chunk(config: CorpusConfig, spec: ChunkPlan, corpus_name: str = "corpus",
              adopted: UUID | None = None) -> ChunkRun:
    """Run chunk `spec` as a child flow run of `config.deployment` until one attempt completes.

    A failed, crashed or stalled attempt is started again (on whichever machine is free); the chunk's
    run dir keeps its records, so the new attempt resumes. `adopted`: a run of this chunk an earlier
    corpus run left going, followed as the first attempt. An attempt refused because the chunk's dir
    was busy is a wait, not an attempt. Never raises for the chunk: a chunk that gave up says why in
    its `ChunkRun`, and the corpus reduce names it.
    """
    logger = get_run_logger()
    run = ChunkRun(chunk=spec.chunk)
    parameters = {"config": chunk_job(config, spec)}
    job = JobConfig.model_validate(parameters["config"])
    if adopted is None and _stopped(config) is None and _finished(job, logger):
        logger.info("chunk %d: every page already done with the same settings; not started", spec.chunk)
        run.state = "COMPLETED"
        return run
    attempt = busy = 0
    with get_client(sync_client=True) as client:
        while attempt < config.chunk_attempts:
            child, adopted = adopted, None
            if child is None:
                if _stopped(config) is None:
                    wait_until_free(Path(spec.output_dir), config.chunk_stall_s, config.poll_s, logger)
                name = f"{corpus_name}-chunk-{spec.chunk:05d}-try{len(run.flow_run_ids) + 1}"
                child = _start_attempt(config, spec, parameters, name)
                if child is None:
                    run.state, run.error = "CANCELLED", f"attempt {attempt + 1} not started: {_stopped(config)}"
                    return run
            attempt += 1
            run.flow_run_ids.append(str(child))
            logger.info("chunk %d: attempt %d of %d is flow run %s", spec.chunk, attempt, config.chunk_attempts,
                        child)
            state, why = _follow(client, child, spec, config)
            ended = client.read_flow_run(child)
            run.workers.append((ended.labels or {}).get("prefect.worker.name") or "?")
            run.state = state
            if state == "COMPLETED":
                run.error = None
                return run
            if (stopped := _stopped(config)) is not None:
                run.error = f"attempt {attempt} ended {state}: {stopped}"
                return run
            if RunDirBusy.__name__ in why and busy < config.chunk_attempts:
                attempt, busy = attempt - 1, busy + 1
                logger.info("chunk %d: its run dir was busy (%s); waiting for it, not counted as an attempt",
                            spec.chunk, why)
                continue
            run.error = f"gave up after {attempt} attempt(s); the last ended {state}: {why}"
            logger.warning("chunk %d: attempt %d ended %s: %s", spec.chunk, attempt, state, why)
    return run


def _start_attempt(config: CorpusConfig, spec: ChunkPlan, parameters: dict, name: str) -> UUID | None:
    """Create the chunk's next flow run, unless the corpus is being stopped (then None)."""
    key = Path(config.job.output_dir)
    with _gate:
        if key in _stopping:
            return None
        _starting[key] += 1
    try:
        child = run_deployment(config.deployment, parameters=parameters, timeout=0, as_subflow=True,
                               flow_run_name=name, tags=chunk_tags(key, spec.chunk))
    finally:
        with _gate:
            _starting[key] -= 1
            _gate.notify_all()
    return child.id


def _finished(job: JobConfig, logger) -> bool:
    """Whether the chunk's dir holds a finished run that running `job` again would not change (never raises)."""
    try:
        done = finished(job, as_before=True)
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
    cancelled_at: float | None = None
    while True:
        flow_run = client.read_flow_run(flow_run_id)
        state = flow_run.state_type.value if flow_run.state_type else "SCHEDULED"
        if state in _ENDED:
            return state, (flow_run.state.message if flow_run.state else None) or "no message"
        if (stopped := _stopped(config)) is not None:
            cancelled_at = cancelled_at or time.monotonic()
            if state != "CANCELLING":  # started after stop_corpus listed the chunk runs: cancel it too
                client.set_flow_run_state(flow_run_id, Cancelling(message=stopped))
            elif time.monotonic() - cancelled_at > CANCEL_GRACE_S:
                why = f"{stopped}; its machine did not stop it within {CANCEL_GRACE_S:g}s: presumed dead"
                end_run(client, flow_run_id, lambda: Cancelled(message=why))
                return "CANCELLED", why
        if watch.stalled(state):
            why = (f"{state} with no new bytes in {spec.output_dir} for {watch.quiet_s():.0f}s: "
                   "its machine is presumed dead")
            # force: a dead run cannot take part in orchestration; Prefect would keep it RUNNING forever.
            end_run(client, flow_run_id, lambda: Crashed(message=why))
            return "CRASHED", why
        time.sleep(config.poll_s)


def wait_until_free(run_dir: Path, timeout_s: float, poll_s: float, logger) -> None:
    """Wait while a dead machine's lock on the chunk's run dir lingers (an NFS lease outlives its holder).

    After `timeout_s` the attempt starts anyway: a live holder then refuses it, and `run_chunk` waits again
    without counting that as an attempt.
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
