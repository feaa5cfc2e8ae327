"""Thin Prefect tasks over the plain modules: plan, run one shard, reduce, publish."""

from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Cancelled, State

from ocrfleet.config import JobConfig
from ocrfleet.run.launch import NotRetryable, RunCancelled, WorkerStopped, run_worker
from ocrfleet.plan.planning import Plan, ShardPlan, place_for, prepare_run, shard_paths
from ocrfleet.reduce.publish import publish
from ocrfleet.tasks.reporting import ProgressReporter
from ocrfleet.reduce.summary import RunSummary, reduce_run


@task(name="plan", cache_policy=NO_CACHE)
def plan_run(config: JobConfig) -> Plan:
    """Place devices, plan shards, materialize models and write the plan, before any worker starts."""
    logger = get_run_logger()
    placement = place_for(config)
    for message in placement.warnings:
        logger.warning(message)
    plan = prepare_run(config, placement)
    if plan.pages_skipped:
        logger.info("%d of %d pages already done by an earlier run: skipped", plan.pages_skipped, plan.pages_total)
    for spec in plan.shards:
        logger.info("shard %d: %d pages on %s", spec.shard, spec.pages, spec.device.name)
    return plan


def _worth_retrying(task, task_run, state) -> bool:
    return not isinstance(state.result(raise_on_failure=False), NotRetryable)


@task(name="run-shard", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5,
      retry_condition_fn=_worth_retrying)
def run_shard(run_dir: Path, spec: ShardPlan, progress: ProgressReporter | None = None) -> State | None:
    """Run one shard's worker subprocess to the end; raise so Prefect retries (the worker resumes).

    A cancelled run's shard ends Cancelled (its records so far are kept for a rerun), not Failed; so does one
    whose worker was stopped by a signal from outside (the cancel's SIGTERM to the process group).
    """
    logger = get_run_logger()
    if shard_paths(run_dir, spec.shard)["done"].exists():
        logger.info("shard %d: already done", spec.shard)
        return

    def sink(level: int, message: str) -> None:
        logger.log(level, message)
        if progress is not None:
            progress.observe(message)

    try:
        run_worker(run_dir, spec, sink=sink)
    except (RunCancelled, WorkerStopped) as exc:
        logger.info("%s", exc)
        return Cancelled(message=str(exc))
    return None


@task(name="reduce", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def reduce_shards(run_dir: Path, shard_errors: dict[int, str], wall_s: float) -> RunSummary:
    """Reconcile and aggregate every shard; write results.jsonl and summary.json."""
    summary = reduce_run(run_dir, shard_errors, wall_s)
    logger = get_run_logger()
    if summary.valid:
        logger.info("%s; results in %s", summary.verdict(), run_dir / "results.jsonl")
    else:  # the one line that says why the run fails; the flow ends Failed with it, without a traceback
        logger.error("run INVALID: %s; see %s (failures: %s)", summary.verdict(), run_dir / "summary.json",
                     run_dir / "failures.jsonl")
    return summary


@task(name="publish", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def publish_outputs(run_dir: Path, target: str) -> None:
    """Copy the finished outputs of `run_dir` to `target` (publish_to), summary.json last."""
    published = publish(run_dir, target)
    get_run_logger().info("published %d files (%.1f MB) to %s; %d stale file(s) removed there", published.files,
                          published.bytes / 1e6, target, published.removed)
