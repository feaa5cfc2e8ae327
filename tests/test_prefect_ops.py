"""Operating ocrfleet through a real Prefect server: deploy, a process worker, CLI triggers, cancel, artifacts.

Select with `-m prefect_server`; the module shares one server (about 10 s to start) and one worker.
"""

import contextlib
import json
import re
import threading
import time
from pathlib import Path

import psutil
import pytest

from ocrfleet.tasks.deploy import DeployError, deploy
from tests.pages import draw_page
from tests.prefect_server import (ROOT, api_call, free_port, prefect_cli, prefect_server, process_worker,
                                  run_artifacts, wait_for_state)

pytestmark = pytest.mark.prefect_server


@pytest.fixture(scope="module")
def home(tmp_path_factory, model_cache) -> Path:
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture(scope="module")
def api_url(home) -> str:
    with prefect_server(home / "server") as url:
        yield url


@pytest.fixture(scope="module")
def deployed(api_url) -> str:
    deploy(ROOT, api_url=api_url)
    return api_url


@pytest.fixture(scope="module")
def worker(deployed, home) -> Path:
    with process_worker(deployed, home / "worker") as log:
        yield log


def deployments(api_url: str) -> dict[str, dict]:
    return {d["name"]: d for d in api_call(api_url, "deployments/filter", {})}


def trigger_adhoc(api_url: str, home: Path, config: dict) -> str:
    """`prefect deployment run ocrfleet/adhoc --params ...`; the new flow run's id."""
    output = prefect_cli(api_url, home, "deployment", "run", "ocrfleet/adhoc",
                         "--params", json.dumps({"config": config}))
    return re.search(r"UUID: ([0-9a-f-]{36})", output)[1]


def ocr_workers(run_dir: Path) -> list[psutil.Process]:
    """Live `python -m ocrfleet.run.worker` processes of the run in `run_dir`."""
    return [process for process in psutil.process_iter(["cmdline", "status"])
            if "ocrfleet.run.worker" in (process.info["cmdline"] or []) and str(run_dir) in process.info["cmdline"]
            and process.info["status"] != psutil.STATUS_ZOMBIE]


def test_deploy_creates_the_pool_and_both_deployments_and_is_idempotent(deployed):
    deploy(ROOT, api_url=deployed)  # a second deploy changes nothing and does not fail
    pool = api_call(deployed, "work_pools/ocrfleet")
    assert pool["type"] == "process"
    found = deployments(deployed)
    assert set(found) == {"nightly", "adhoc", "corpus"}
    for name, deployment in found.items():
        ocr = name != "corpus"
        assert deployment["entrypoint"] == ("ocrfleet.flows.ocr_flow.ocr_run" if ocr else "ocrfleet.flows.corpus_flow.corpus_run")
        assert deployment["work_pool_name"] == ("ocrfleet" if ocr else "ocrfleet-control")
        # A worker started anywhere runs the flow from this checkout.
        assert deployment["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
        assert set(deployment["parameter_openapi_schema"]["properties"]) == {"config"}
    assert api_call(deployed, "work_pools/ocrfleet-control")["type"] == "process"
    [schedule] = found["nightly"]["schedules"]
    assert schedule["schedule"]["cron"] == "0 2 * * *" and schedule["schedule"]["timezone"] == "UTC"
    assert "UTC" in found["nightly"]["description"]
    assert found["adhoc"]["schedules"] == []
    assert found["adhoc"]["parameters"] == {}  # no default output_dir: a quick run never writes into the checkout


def test_deploy_leaves_no_schedule_active_whose_inputs_are_not_on_this_machine(deployed, tmp_path):
    # The example's /data/scans is not on a test machine: the nightly schedule is deployed inactive.
    for deployment in deployments(deployed).values():
        for schedule in deployment["schedules"]:
            inputs = deployment["parameters"]["config"]["inputs"]
            assert not schedule["active"] or all(Path(path).exists() for path in inputs), deployment["name"]
    assert not deployments(deployed)["nightly"]["schedules"][0]["active"]

    # Set for this installation (inputs there, output_dir's parent there): deployed active.
    root = tmp_path / "site"
    (root / "deployments").mkdir(parents=True)
    (tmp_path / "scans").mkdir()
    text = (ROOT / "deployments" / "prefect.yaml").read_text()
    text = text.replace('inputs: ["/data/scans"]\n        output_dir: /data/ocr/nightly',
                        f'inputs: ["{tmp_path / "scans"}"]\n        output_dir: {tmp_path / "nightly"}')
    (root / "deployments" / "prefect.yaml").write_text(text)
    deploy(root, api_url=deployed)
    try:
        nightly = deployments(deployed)["nightly"]
        assert nightly["schedules"][0]["active"] and nightly["parameters"]["config"]["inputs"] == [str(tmp_path / "scans")]
    finally:
        deploy(ROOT, api_url=deployed)  # the module's other tests use the checkout's deployments


def test_the_deploy_command_names_both_pools_workers_and_an_inactive_schedule(deployed, home):
    import subprocess
    import sys

    from tests.prefect_server import quiet_env

    done = subprocess.run([sys.executable, "-m", "ocrfleet.cli", "deploy", "--api-url", deployed], cwd=ROOT,
                          env=quiet_env(home), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "prefect worker start --pool ocrfleet --limit 1" in done.stdout
    assert "prefect worker start --pool ocrfleet-control" in done.stdout and str(ROOT) in done.stdout
    assert "nightly schedule (02:00 UTC) is deployed INACTIVE" in done.stdout and "/data/scans" in done.stdout


def test_deploy_against_an_unreachable_server_says_what_to_do():
    with pytest.raises(DeployError, match=r"unreachable .*prefect server start") as raised:
        deploy(ROOT, api_url=f"http://127.0.0.1:{free_port()}/api")
    assert "\n" not in str(raised.value)


def test_deploy_without_an_api_url_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))  # an empty profile: no API URL anywhere
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(tmp_path / "profiles.toml"))
    with pytest.raises(DeployError, match="no Prefect API URL.*PREFECT_API_URL"):
        deploy(ROOT)


def test_an_adhoc_run_triggered_from_the_cli_runs_on_a_process_worker(deployed, worker, home, word_pages,
                                                                      tmp_path):
    out = tmp_path / "adhoc"
    flow_run_id = trigger_adhoc(deployed, home, {"inputs": [str(word_pages)], "output_dir": str(out),
                                                 "devices": "cpu:1"})
    run = wait_for_state(deployed, flow_run_id, {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}, timeout_s=240)
    assert run["state_type"] == "COMPLETED", worker.read_text()[-4000:]
    assert run["parameters"]["config"]["devices"] == "cpu:1"
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(Path(r["source"]).name for r in records) == ["alpha.png", "beta.png", "delta.png", "gamma.jpg"]
    assert all(r["status"] == "ok" for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pages_ok"] == 4 and summary["problems"] == []
    assert {a["key"] for a in run_artifacts(deployed, flow_run_id)} == {"ocrfleet-progress", "ocrfleet-shards",
                                                                      "ocrfleet-summary"}


def test_reprocessing_only_the_failed_pages_of_a_run_through_the_server(deployed, worker, home, word_pages,
                                                                        tmp_path):
    broken = tmp_path / "in" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"not yet a picture")
    first = tmp_path / "first"
    run_id = trigger_adhoc(deployed, home, {"inputs": [str(word_pages / "alpha.png"), str(broken)],
                                            "output_dir": str(first), "devices": "cpu:1", "max_failure_rate": 0.5})
    assert wait_for_state(deployed, run_id, {"COMPLETED", "FAILED", "CRASHED"}, 240)["state_type"] == "COMPLETED"
    broken.write_bytes((word_pages / "beta.png").read_bytes())  # the file got fixed upstream
    redo = tmp_path / "redo"
    run_id = trigger_adhoc(deployed, home, {"inputs": [], "derived_from": str(first), "only_failed": True,
                                            "only_error_classes": ["NotAnImage"], "output_dir": str(redo),
                                            "devices": "cpu:1"})
    run = wait_for_state(deployed, run_id, {"COMPLETED", "FAILED", "CRASHED"}, 240)
    assert run["state_type"] == "COMPLETED", worker.read_text()[-4000:]
    records = [json.loads(line) for line in (redo / "results.jsonl").read_text().splitlines()]
    assert [(r["source"], r["status"]) for r in records] == [(str(broken), "ok")]
    assert "Dock fees" in records[0]["text"] or "Dock" in records[0]["text"]
    assert json.loads((redo / "summary.json").read_text())["derived_from"] == str(first)


def test_a_deployment_run_refused_for_its_inputs_creates_nothing_on_disk(deployed, worker, home, tmp_path):
    out = tmp_path / "nightly"  # its parent exists: the run is refused for its inputs alone
    run_id = trigger_adhoc(deployed, home, {"inputs": [str(tmp_path / "scans")], "output_dir": str(out),
                                            "devices": "cpu:1"})
    run = wait_for_state(deployed, run_id, {"COMPLETED", "FAILED", "CRASHED"}, 240)
    assert run["state_type"] == "FAILED" and "no such file or directory" in run["state"]["message"]
    assert list(tmp_path.iterdir()) == []  # no output dir, no parent of it, no lock


@pytest.mark.parametrize("bad, named", [({"workers_per_device": 0}, "workers_per_device"),
                                        ({"devices": "tpu:3"}, "devices"), ({"devices": "gpu:1,1"}, "devices"),
                                        ({"output_dir": "s3://bucket/run"}, "output_dir"),
                                        ({"inputs": []}, "inputs")])
def test_bad_parameters_are_refused_before_a_run_is_created(deployed, home, tmp_path, bad, named):
    before = len(api_call(deployed, "flow_runs/filter", {}))
    with pytest.raises(RuntimeError, match=named):
        trigger_adhoc(deployed, home, {"inputs": ["samples/pages"], "output_dir": str(tmp_path), **bad})
    assert len(api_call(deployed, "flow_runs/filter", {})) == before


def test_cancelling_an_adhoc_run_stops_every_worker_process(deployed, worker, home, tmp_path):
    pages = tmp_path / "pages"
    for number in range(80):
        draw_page(pages / f"page-{number:03d}.png", [f"Ledger {number}", "Cancel me later"], size=(900, 400))
    out = tmp_path / "busy"
    # No progress lines: a worker cut off from its parent would otherwise die of a broken pipe at its next one.
    flow_run_id = trigger_adhoc(deployed, home, {"inputs": [str(pages)], "output_dir": str(out),
                                                 "devices": "cpu:2", "progress_interval_s": 3600})
    try:
        deadline = time.monotonic() + 180
        while len(ocr_workers(out)) < 2 and time.monotonic() < deadline:
            assert api_call(deployed, f"flow_runs/{flow_run_id}")["state_type"] in {"SCHEDULED", "PENDING", "RUNNING"}
            time.sleep(0.3)
        assert len(ocr_workers(out)) == 2, worker.read_text()[-4000:]
        prefect_cli(deployed, home, "flow-run", "cancel", flow_run_id)
        cancelled_at = time.monotonic()
        while ocr_workers(out) and time.monotonic() - cancelled_at < 15:
            time.sleep(0.2)
        assert ocr_workers(out) == []
        run = wait_for_state(deployed, flow_run_id, {"CANCELLED", "COMPLETED", "FAILED", "CRASHED"},
                             timeout_s=30)
        assert run["state_type"] == "CANCELLED", worker.read_text()[-4000:]
        assert not (out / "results.jsonl").exists()  # stopped before reduce
        # Its shards end Cancelled, not Failed, and it says what it finished and how to resume.
        shards = [task for task in api_call(deployed, "task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
                  if task["name"].startswith("run-shard")]
        assert sorted(task["state_type"] for task in shards) == ["CANCELLED", "CANCELLED"], \
            [task["state"]["message"] for task in shards]
        [summary] = [a["data"] for a in run_artifacts(deployed, flow_run_id) if a["key"] == "ocrfleet-summary"]
        assert "# ocrfleet run: cancelled" in summary and " left.**" in summary and "## Resume" in summary

        # The same run again resumes: the lock the cancelled run held is free, finished pages are kept.
        written = sum(len(path.read_text().splitlines()) for path in (out / "records").glob("*.jsonl"))
        rerun = trigger_adhoc(deployed, home, {"inputs": [str(pages)], "output_dir": str(out), "devices": "cpu:2"})
        run = wait_for_state(deployed, rerun, {"COMPLETED", "FAILED", "CRASHED"}, timeout_s=300)
        assert run["state_type"] == "COMPLETED", worker.read_text()[-4000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["pages_ok"] == 80 and summary["pages_skipped"] == written
    finally:
        for process in ocr_workers(out):  # a worker that escaped the cancel must not outlive the test
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def test_progress_and_summary_artifacts_attach_to_the_flow_run(api_url, word_pages, tmp_path):
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.context import get_run_context
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ocrfleet.config import load_config
    from ocrfleet.plan.planning import make_plan
    from ocrfleet.records import ShardReport
    from ocrfleet.tasks.reporting import PROGRESS_KEY, SHARDS_KEY, SUMMARY_KEY, ProgressReporter, publish_summary
    from ocrfleet.reduce.summary import RunSummary, ShardSummary

    plan = make_plan(load_config(None, inputs=[str(word_pages)], output_dir=str(tmp_path), devices="cpu:2")).plan
    report = ShardReport(shard=0, device="cpu", pid=1, hostname="h", pages_planned=2, pages_resumed=0,
                         pages_ok=2, pages_failed=0, model_load_s=1.0, ocr_s=2.0, pages_per_s=1.25)
    summary = RunSummary(
        run_dir=str(tmp_path), pages_planned=4, pages_skipped=0, pages_ok=3, pages_failed=1, failure_rate=0.25, max_failure_rate=0.5,
        failures_by_class={"DecompressionBomb": 1}, wall_s=9.5, warnings=["no GPU found: 1 CPU worker"], problems=[],
        shards=[ShardSummary(shard=0, device="cpu", pages_planned=2, records=2, pages_ok=2, pages_failed=0,
                             report=report),
                ShardSummary(shard=1, device="cpu", pages_planned=2, records=2, pages_ok=1, pages_failed=1)])

    def progress(artifact_id) -> float:
        return float(api_call(api_url, f"artifacts/{artifact_id}")["data"])

    @task(cache_policy=NO_CACHE)
    def from_task_thread(reporter: ProgressReporter) -> None:
        reporter.observe("progress shard=0 done=1 total=2")

    @flow(name="ocrfleet-reporting-probe")
    def probe() -> tuple[str, str, list[float]]:
        reporter = ProgressReporter(pages_total=4, shards=2, min_interval_s=0)
        seen = [progress(reporter.artifact_id)]
        from_task_thread.submit(reporter).result()
        seen.append(progress(reporter.artifact_id))
        plain = threading.Thread(target=reporter.update, args=(1, 2))  # like launch's output reader
        plain.start()
        plain.join()
        seen.append(progress(reporter.artifact_id))
        slow = ProgressReporter(pages_total=4, shards=2, min_interval_s=3600)
        slow.update(0, 2)  # rate-limited: not published
        seen.append(progress(slow.artifact_id))
        reporter.finish(summary.pages_ok + summary.pages_failed)
        publish_summary(summary, plan)
        return str(get_run_context().flow_run.id), str(reporter.artifact_id), seen

    with temporary_settings({PREFECT_API_URL: api_url}):
        flow_run_id, progress_id, seen = probe()
        APILogWorker.drain_all(timeout=10)  # the probe's logs reach the server before it stops
    assert seen == [0.0, 25.0, 75.0, 0.0]
    artifacts = {artifact["id"]: artifact for artifact in run_artifacts(api_url, flow_run_id)}
    assert sorted(a["key"] for a in artifacts.values()) == [PROGRESS_KEY, PROGRESS_KEY, SHARDS_KEY, SUMMARY_KEY]
    assert artifacts[progress_id]["type"] == "progress" and float(artifacts[progress_id]["data"]) == 100.0
    artifacts = {artifact["key"]: artifact for artifact in artifacts.values() if artifact["key"] != PROGRESS_KEY}
    rows = json.loads(artifacts[SHARDS_KEY]["data"])
    figures = {"busy": None, "gpu util %": None}
    assert rows == [{"shard": 0, "device": "cpu", "pages": 2, "ok": 2, "failed": 0, "pages/s": 1.25, **figures},
                    {"shard": 1, "device": "cpu", "pages": 2, "ok": 1, "failed": 1, "pages/s": None, **figures}]
    markdown = artifacts[SUMMARY_KEY]["data"]
    for expected in ("3 pages ok, 1 failed", "`DecompressionBomb`: 1", "no GPU found", "results.jsonl", "valid"):
        assert expected in markdown
