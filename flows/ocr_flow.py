"""The ocrfleet flow: plan -> one worker per shard, concurrently -> reduce -> publish (when asked)."""

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.exceptions import TerminationSignal
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.states import Cancelled, Failed
from prefect.task_runners import ThreadPoolTaskRunner

from ocrfleet.tasks.cancel_watch import CancelWatch
from ocrfleet.config import JobConfig
from ocrfleet.run.launch import StorageFailed, abort_run, reset_run
from ocrfleet.run.lock import hold_devices, hold_run_dir
from ocrfleet.run.preflight import preflight
from ocrfleet.tasks.policy_check import check_allowed
from ocrfleet.tasks.ocr_tasks import plan_run, publish_outputs, reduce_shards, run_shard
from ocrfleet.tasks.reporting import ProgressReporter, publish_cancelled, publish_summary
from ocrfleet.plan.planning import Plan
from ocrfleet.reduce.summary import RunSummary
from ocrfleet.run.progress import RecordCounter


class RunInvalid(RuntimeError):
    """The run finished but its results are incomplete or too many pages failed."""


# Threads only wait on worker processes; one per shard keeps every shard running at once.
@flow(name="ocrfleet", task_runner=ThreadPoolTaskRunner(max_workers=512), log_prints=True)
def ocr_run(config: JobConfig) -> RunSummary:
    """OCR every input on every planned device; fail unless each page has exactly one record."""
    check_allowed(config)  # before anything is created: a run outside the machine's allowed roots fails here
    preflight(config)  # everything else checkable, before anything is created: a refused run leaves nothing on disk
    started = time.monotonic()
    run_dir = Path(config.output_dir)
    holder = f"flow run {flow_run.get_name() or flow_run.get_id()}"
    plan, progress = None, None
    try:
        with hold_run_dir(run_dir, holder):
            reset_run(run_dir)  # an earlier run in this process may have stopped its workers: this one starts unblocked
            # From here on a cancel stops the workers (those running and any yet to start) and ends the run.
            with CancelWatch(lambda why: abort_run(run_dir, why, cancelled=True)) as cancel:
                plan = plan_run(config)
                progress = ProgressReporter(plan.pages_total - plan.pages_skipped, len(plan.shards))
                with hold_devices([spec.device for spec in plan.shards], holder, say=get_run_logger().warning):
                    shard_task = run_shard.with_options(retries=config.shard_retries)
                    futures = [shard_task.submit(run_dir, spec, progress) for spec in plan.shards]
                    wait(futures)
                if not cancel.cancelled.is_set():
                    errors = {spec.shard: future.state.result(raise_on_failure=False)
                              for spec, future in zip(plan.shards, futures) if not future.state.is_completed()}
                    storage = [error for error in errors.values() if isinstance(error, StorageFailed)]
                    if storage:  # the machine's fault: no reduce onto a failing disk, no page blamed
                        raise storage[0]
                    shard_errors = {shard: str(error) for shard, error in errors.items()}
                    summary = reduce_shards(run_dir, shard_errors, time.monotonic() - started)
                    if summary.valid and config.publish_to:
                        publish_outputs(run_dir, config.publish_to)
    except TerminationSignal:  # the runner stops a cancelled run by SIGTERM, maybe before the watch saw it
        if plan is not None:
            _publish_stopped(run_dir, plan, progress)
        raise
    if cancel.cancelled.is_set():  # Completed or Failed would be refused after a cancel: the run stays Cancelling
        _publish_stopped(run_dir, plan, progress)
        return Cancelled(message="run cancelled; its workers are stopped, and a rerun resumes from the records written")
    progress.finish(sum(shard.records for shard in summary.shards))
    publish_summary(summary, plan)
    if not summary.valid:  # an outcome, said once at ERROR by reduce: a state with its verdict, no traceback
        verdict = f"{summary.verdict()} (summary: {run_dir / 'summary.json'})"
        return Failed(message=verdict, data=RunInvalid(verdict))
    return summary


def _publish_stopped(run_dir: Path, plan: Plan, progress: ProgressReporter | None) -> None:
    """What a cancelled run finished: the progress artifact at its true count, and a cancelled summary."""
    recorded = RecordCounter(run_dir).count()
    if progress is not None:
        progress.finish(recorded)
    publish_cancelled(plan, recorded)
