"""How a run's end reads in Prefect: a cancelled run's shards end Cancelled and it says what it finished;
a run with too many failed pages says so once, at ERROR, without a traceback."""

import threading
import time

from ocrfleet.config import load_config
from ocrfleet.records import complete_records
from ocrfleet.plan.planning import shard_paths
from tests.test_resilience import blank_pages, faulty, plan_cpu  # noqa: F401 (faulty is a fixture)


def flow_run_named(client, name: str):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    [run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    return run


def settled(read, ready, timeout_s: float = 60):
    """`read()` once `ready(value)` holds: task run states and logs reach the server as events, a little later."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if ready(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def drain() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=60)
    EventsWorker.drain_all(timeout=60)


def test_a_cancelled_runs_shards_end_cancelled_and_its_summary_says_what_is_done_and_left(prefect_api, faulty,
                                                                                         tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, \
        FlowRunFilterId
    from prefect.states import Cancelling

    from ocrfleet.flows.ocr_flow import ocr_run

    faulty(hang=[103])
    out, plan = plan_cpu(tmp_path, range(100, 106), page_timeout_s=90)
    name = f"cancel-outcome-{tmp_path.name}"

    def cancel_once_pages_are_written():
        deadline = time.monotonic() + 120
        while len(complete_records(shard_paths(out, 0)["records"])) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run_named(client, name).id, Cancelling(message="from the test"),
                                      force=True)

    threading.Thread(target=cancel_once_pages_are_written, daemon=True).start()
    state = ocr_run.with_options(flow_run_name=name)(plan.config, return_state=True)
    assert state.is_cancelled(), state
    drain()
    with get_client(sync_client=True) as client:
        run = flow_run_named(client, name)
        shards = settled(
            lambda: [task for task in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
                any_=[run.id]))) if task.name.startswith("run-shard")],
            lambda tasks: tasks and all(task.state and task.state.is_final() for task in tasks))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    assert [task.state.type.value for task in shards] == ["CANCELLED"], [task.state for task in shards]
    summary = next(artifact.data for artifact in artifacts if artifact.key == "ocrfleet-summary")
    assert "# ocrfleet run: cancelled" in summary
    assert "3 of 6 pages done, 3 left" in summary and "Resume" in summary and str(out) in summary
    progress = next(artifact for artifact in artifacts if artifact.key == "ocrfleet-progress")
    assert float(progress.data) == 50.0


def test_too_many_failed_pages_is_said_once_at_error_with_the_verdict_and_no_traceback(prefect_api, faulty,
                                                                                      tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, \
        FlowRunFilterId, LogFilter, LogFilterFlowRunId

    from ocrfleet.flows.ocr_flow import ocr_run

    faulty()
    pages = blank_pages(tmp_path / "in", range(100, 103))
    (pages / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    config = load_config(None, inputs=[str(pages)], output_dir=str(out), devices="cpu:1")
    name = f"invalid-{tmp_path.name}"
    state = ocr_run.with_options(flow_run_name=name)(config, return_state=True)
    assert state.is_failed() and "above max_failure_rate" in state.message
    assert str(out / "summary.json") in state.message
    drain()
    with get_client(sync_client=True) as client:
        run = flow_run_named(client, name)
        logs = settled(lambda: client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id]))),
                       lambda found: any("Finished in state Failed" in log.message for log in found))
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    errors = [log.message for log in logs if log.level >= 40]
    verdicts = [message for message in errors if "above max_failure_rate" in message]
    assert len(verdicts) == 1 and str(out / "summary.json") in verdicts[0], errors
    assert not any("Traceback" in log.message for log in logs), [log.message for log in logs if "Traceback" in
                                                                 log.message]
    assert all(task.state.is_completed() for task in tasks)
    # No unnamed result artifact beside ocrfleet's own: the verdict is a state's message, not a stored exception.
    assert sorted(artifact.key for artifact in artifacts) == ["ocrfleet-progress", "ocrfleet-shards",
                                                            "ocrfleet-summary"]
