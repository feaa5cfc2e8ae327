"""Corpus runs: chunk planning and the corpus reduce (plain, fast), and one real multi-worker run on a server."""

import contextlib
import json
from pathlib import Path

import pytest

from ocrfleet.config import JobConfig
from ocrfleet.corpus import (ChunkRun, CorpusConfig, StallWatch, chunk_job, manifest_rows, page_ranges,
                          plan_corpus, read_corpus_plan, reduce_corpus, write_corpus_plan)
from ocrfleet.inputs.listing import collect_pages
from ocrfleet.records import PageRecord


def corpus_inputs(folder: Path) -> Path:
    """A manifest naming 3 PDFs and 6 images with costs (never opened: costs are given), 28 pages in all."""
    rows = []
    for name, pages, cost in (("a.pdf", "1-12", 100.0), ("b.pdf", "1-6", 300.0), ("c.pdf", "2-4,9", 50.0)):
        (folder / name).write_bytes(b"%PDF-1.4 stand-in: never opened")
        rows.append({"path": name, "pages": pages, "cost": cost})
    for number in range(6):
        (folder / f"img{number}.png").write_bytes(b"stand-in")
        rows.append({"path": f"img{number}.png", "cost": 40.0 + number})
    manifest = folder / "corpus.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest


def config_for(inputs: Path, output: Path, **extra) -> CorpusConfig:
    return CorpusConfig.model_validate({"job": {"inputs": [str(inputs)], "output_dir": str(output)}, **extra})


def test_every_page_lands_in_exactly_one_chunk_and_chunks_are_balanced_by_cost(tmp_path):
    config = config_for(corpus_inputs(tmp_path), tmp_path / "out", chunks=4)
    plan, members = plan_corpus(config)
    keys = [page.key for group in members for page in group]
    every = [page.key for page in collect_pages([str(tmp_path / "corpus.jsonl")])]
    assert plan.pages_total == len(every) == 28
    assert sorted(keys) == sorted(every) and len(set(keys)) == len(keys)
    costs = [spec.cost for spec in plan.chunks]
    assert len(costs) == 4 and max(costs) - min(costs) <= 300.0  # within the costliest page
    assert [spec.pages for spec in plan.chunks] == [len(group) for group in members]


def test_a_chunk_manifest_names_exactly_its_pages_with_consecutive_pages_as_ranges(tmp_path):
    config = config_for(corpus_inputs(tmp_path), tmp_path / "out", chunks=3)
    plan, members = plan_corpus(config)
    write_corpus_plan(plan, members)
    for spec, group in zip(plan.chunks, members):
        rows = [json.loads(line) for line in Path(spec.manifest).read_text().splitlines()]
        assert len({row["path"] for row in rows}) == len(rows)  # one row per document (and cost)
        # What the chunk's own run reads back from it: the same pages, with the same costs.
        again = collect_pages([spec.manifest])
        assert [(p.source, p.page, p.cost) for p in again] == [(p.source, p.page, p.cost) for p in group]
    assert page_ranges([0, 1, 2, 7, 9, 10]) == "1-3,8,10-11"
    whole = collect_pages([str(tmp_path / "corpus.jsonl")])
    rows = {Path(row["path"]).name: row["pages"] for row in manifest_rows(whole)}
    assert rows["a.pdf"] == "1-12" and rows["c.pdf"] == "2-4,9" and rows["img0.png"] == "1"
    assert read_corpus_plan(tmp_path / "out") == plan


def test_the_same_inputs_give_the_same_chunks_byte_for_byte(tmp_path):
    inputs = corpus_inputs(tmp_path)
    snapshots = []
    for output in (tmp_path / "one", tmp_path / "one", tmp_path / "two"):
        write_corpus_plan(*plan_corpus(config_for(inputs, output, chunks=5)))
        snapshots.append({path.relative_to(output): path.read_bytes() for path in sorted(output.rglob("*.jsonl"))})
    assert len(snapshots[0]) == 5 and snapshots[0] == snapshots[1] == snapshots[2]
    assert (tmp_path / "one" / "corpus.json").read_text().replace("one", "two") == \
        (tmp_path / "two" / "corpus.json").read_text()


def test_file_urls_become_paths_and_an_object_store_output_dir_is_refused_pointing_to_publish_to(tmp_path):
    config = CorpusConfig.model_validate(
        {"job": {"inputs": [f"file://{tmp_path}/scans", "s3://bucket/scans/"], "output_dir": f"file://{tmp_path}/out",
                 "publish_to": "s3://bucket/ocr/"}})
    assert config.job.inputs == (f"{tmp_path}/scans", "s3://bucket/scans/") and config.job.output_dir == tmp_path / "out"
    with pytest.raises(ValueError, match="not a POSIX file system.*publish_to: s3://bucket/out.*docs/scale-out.md"):
        CorpusConfig.model_validate({"job": {"inputs": ["s3://bucket/scans"], "output_dir": "s3://bucket/out"}})
    with pytest.raises(ValueError, match="(?s)deploymnet.*Extra inputs are not permitted"):
        CorpusConfig.model_validate({"job": {"inputs": ["x"], "output_dir": "y"}, "deploymnet": "z"})


def test_a_chunk_runs_the_job_on_its_manifest_and_never_fails_for_page_failures(tmp_path):
    config = CorpusConfig.model_validate({"job": {"inputs": [str(corpus_inputs(tmp_path))],
                                                  "output_dir": str(tmp_path / "out"), "publish_to": "s3://b/ocr"},
                                          "chunks": 2})
    plan, _ = plan_corpus(config)
    job = JobConfig.model_validate(chunk_job(config, plan.chunks[1]))
    assert job.inputs == (plan.chunks[1].manifest,) and job.output_dir == tmp_path / "out" / "chunks" / "00001"
    assert job.max_failure_rate == 1.0 and job.outputs == () and job.devices == "auto"
    assert job.publish_to is None  # the corpus publishes its outputs, once, not each chunk


def write_chunk_results(spec, keys, status="ok") -> None:
    records = [PageRecord(source=source, page=page, status=status, text=f"{Path(source).name} {page}", shard=0,
                          device="cpu") for source, page in keys]
    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.jsonl").write_text("".join(record.model_dump_json() + "\n" for record in records))


def test_the_corpus_reduce_names_missing_duplicate_and_unplanned_records(tmp_path):
    config = config_for(corpus_inputs(tmp_path), tmp_path / "out", chunks=3)
    plan, members = plan_corpus(config)
    write_corpus_plan(plan, members)
    keys = [[page.key for page in group] for group in members]
    write_chunk_results(plan.chunks[0], keys[0] + [keys[0][0]])  # one page twice
    write_chunk_results(plan.chunks[1], keys[1][1:])  # one page missing
    write_chunk_results(plan.chunks[2], keys[2] + [keys[0][1]])  # another chunk's page
    runs = {n: ChunkRun(chunk=n, flow_run_ids=["f"], workers=["w"], state="COMPLETED") for n in range(3)}
    summary = reduce_corpus(plan, runs)
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["problems"] == summary.problems and not summary.valid
    source, page = keys[1][0]
    assert summary.problems == [
        f"chunk 0: duplicate record {keys[0][0][0]} page {keys[0][0][1]}",
        f"chunk 1: {len(keys[1])} pages planned, {len(keys[1]) - 1} records (missing {source} page {page})",
        f"chunk 2: unplanned record {keys[0][1][0]} page {keys[0][1][1]}",
        "28 pages in the corpus, 27 with a record",
    ]


def test_a_complete_corpus_is_valid_and_its_results_are_every_chunk_in_page_order(tmp_path):
    config = config_for(corpus_inputs(tmp_path), tmp_path / "out", chunks=3)
    plan, members = plan_corpus(config)
    write_corpus_plan(plan, members)
    for spec, group in zip(plan.chunks, members):
        write_chunk_results(spec, [page.key for page in group], status="failed" if spec.chunk == 2 else "ok")
    runs = {0: ChunkRun(chunk=0, flow_run_ids=["a", "b"], workers=["m1", "m2"], state="COMPLETED"),
            1: ChunkRun(chunk=1, flow_run_ids=["c"], workers=["m2"], state="COMPLETED"),
            2: ChunkRun(chunk=2, flow_run_ids=["d", "e", "f"], workers=["m1"] * 3, state="FAILED",
                        error="gave up after 3 attempt(s); the last ended FAILED: boom")}
    summary = reduce_corpus(plan, runs)
    assert summary.problems == ["chunk 2: gave up after 3 attempt(s); the last ended FAILED: boom"]
    assert [chunk.attempts for chunk in summary.chunks] == [2, 1, 3]
    results = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [(r["source"], r["page"]) for r in results] == sorted(page.key for group in members for page in group)
    failures = (tmp_path / "out" / "failures.jsonl").read_text().splitlines()
    assert len(failures) == summary.pages_failed == len(members[2]) and summary.pages_ok == 28 - len(members[2])
    assert (tmp_path / "out" / "results.parquet").exists()


def test_a_rerun_that_finds_every_chunk_done_keeps_their_attempt_history_in_the_summary(tmp_path):
    config = config_for(corpus_inputs(tmp_path), tmp_path / "out", chunks=2)
    plan, members = plan_corpus(config)
    write_corpus_plan(plan, members)
    for spec, group in zip(plan.chunks, members):
        write_chunk_results(spec, [page.key for page in group])
    first = reduce_corpus(plan, {0: ChunkRun(chunk=0, flow_run_ids=["a", "b"], workers=["m1", "m2"], state="COMPLETED"),
                                 1: ChunkRun(chunk=1, flow_run_ids=["c"], workers=["m2"], state="COMPLETED")})
    # The rerun starts nothing: each chunk is seen done from the control side.
    again = reduce_corpus(plan, {0: ChunkRun(chunk=0, state="COMPLETED"), 1: ChunkRun(chunk=1, state="COMPLETED")})
    history = [(2, ["a", "b"], ["m1", "m2"]), (1, ["c"], ["m2"])]
    assert [(c.attempts, c.flow_run_ids, c.workers) for c in first.chunks] == history
    assert [(c.attempts, c.flow_run_ids, c.workers) for c in again.chunks] == history
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [chunk["flow_run_ids"] for chunk in saved["chunks"]] == [["a", "b"], ["c"]]


def test_a_chunk_is_presumed_dead_only_after_its_dir_is_silent_while_it_runs(tmp_path):
    now = [0.0]
    watch = StallWatch(tmp_path, stall_s=10, clock=lambda: now[0])
    assert not watch.stalled("SCHEDULED")
    now[0] = 100
    assert not watch.stalled("SCHEDULED")  # waiting for a machine is not a stall
    assert not watch.stalled("RUNNING")
    now[0] = 108
    (tmp_path / "records.jsonl").write_text("one page\n")
    assert not watch.stalled("RUNNING")
    now[0] = 117
    assert not watch.stalled("RUNNING")
    now[0] = 119
    assert watch.stalled("RUNNING") and watch.quiet_s() == 11


class CancellingForever:
    """An API client whose chunk run stays Cancelling: its machine died, so no worker ever stops it."""

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.forced: list[tuple[str, str]] = []
        self.task_run = SimpleNamespace(id="task-run-1")

    def read_flow_run(self, flow_run_id):
        from types import SimpleNamespace

        from prefect.client.schemas.objects import StateType

        ended = next((state for run, state in self.forced if run == flow_run_id), None)
        state_type = StateType(ended) if ended else StateType.CANCELLING
        return SimpleNamespace(state_type=state_type, state=SimpleNamespace(message="cancelled"))

    def set_flow_run_state(self, flow_run_id, state, force=False):
        assert force, "a dead run takes no part in orchestration: only a forced state lands"
        self.forced.append((flow_run_id, state.type.value))

    def read_task_runs(self, **filters):
        return [self.task_run]

    def set_task_run_state(self, task_run_id, state, force=False):
        self.forced.append((task_run_id, state.type.value))


def test_a_cancelled_chunk_whose_machine_never_stops_it_is_forced_cancelled_with_its_task_runs(tmp_path, monkeypatch):
    import uuid

    from ocrfleet.tasks import corpus_tasks

    config = config_for(corpus_inputs(tmp_path), tmp_path / "out", chunks=1, poll_s=0.01)
    plan, members = plan_corpus(config)
    monkeypatch.setattr(corpus_tasks, "CANCEL_GRACE_S", 0.05)
    corpus_tasks._hold_starts(config.job.output_dir, "stopped by SIGINT")
    try:
        client, chunk_run = CancellingForever(), uuid.uuid4()
        state, why = corpus_tasks._follow(client, chunk_run, plan.chunks[0], config)
    finally:
        corpus_tasks.reset_corpus(config.job.output_dir)
    assert state == "CANCELLED" and "presumed dead" in why
    assert client.forced == [(chunk_run, "CANCELLED"), ("task-run-1", "CANCELLED")]


def test_an_attempt_refused_for_a_busy_chunk_dir_is_a_wait_not_one_of_the_chunks_attempts(tmp_path, monkeypatch):
    """Orchestration only: the API and the chunk runs are stand-ins; each attempt's end is given."""
    import logging
    import uuid
    from types import SimpleNamespace

    from ocrfleet.tasks import corpus_tasks

    config = config_for(corpus_inputs(tmp_path), tmp_path / "out", chunks=1, chunk_attempts=1, poll_s=0.01)
    plan, members = plan_corpus(config)
    write_corpus_plan(plan, members)
    ends = iter([("FAILED", "Flow run encountered an exception: RunDirBusy: held by pid 7 on machine-a"),
                 ("COMPLETED", "All states completed.")])
    names: list[str] = []
    client = SimpleNamespace(read_flow_run=lambda flow_run_id: SimpleNamespace(labels={"prefect.worker.name": "m1"}))
    monkeypatch.setattr(corpus_tasks, "get_run_logger", lambda: logging.getLogger("test"))
    monkeypatch.setattr(corpus_tasks, "get_client", lambda sync_client: contextlib.nullcontext(client))
    monkeypatch.setattr(corpus_tasks, "wait_until_free", lambda *args: None)
    monkeypatch.setattr(corpus_tasks, "_start_attempt", lambda config, spec, parameters, name: names.append(name)
                        or uuid.uuid4())
    monkeypatch.setattr(corpus_tasks, "_follow", lambda client, flow_run_id, spec, config: next(ends))
    run = corpus_tasks.run_chunk.fn(config, plan.chunks[0], "nightly-corpus")
    assert run.state == "COMPLETED" and run.error is None and len(run.flow_run_ids) == 2
    assert names == ["nightly-corpus-chunk-00000-try1", "nightly-corpus-chunk-00000-try2"]


class MachineKiller:
    """Watches one machine's process tree and kills all of it at once, as a power cut would, mid-chunk.

    "Mid-chunk": one of its OCR workers has written at least one record of its shard and is not done.
    """

    def __init__(self, machine) -> None:
        import threading

        self.machine, self.stop = machine, threading.Event()
        self.killed: tuple[Path, int] | None = None  # the chunk's run dir, records written before the kill
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        import psutil

        while not self.stop.wait(0.05):
            try:
                family = [psutil.Process(self.machine.pid), *psutil.Process(self.machine.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for process in family:
                try:
                    command = process.cmdline()
                except psutil.Error:
                    continue
                if "ocrfleet.run.worker" not in command:
                    continue
                run_dir, shard = Path(command[command.index("--run-dir") + 1]), int(command[command.index("--shard") + 1])
                records = run_dir / "records" / f"{shard:05d}.jsonl"
                written = len(records.read_text().splitlines()) if records.exists() else 0
                if written and not (run_dir / "done" / f"{shard:05d}").exists():
                    for member in family:
                        with contextlib.suppress(psutil.Error):
                            member.kill()
                    self.killed = (run_dir, written)
                    return


@contextlib.contextmanager
def machine(api_url: str, home: Path, name: str, devices: str):
    """A process worker standing in for one GPU machine: its own name, `OCRFLEET_DEVICES`, and limit 1."""
    import subprocess

    from tests.prefect_server import PREFECT, ROOT, quiet_env, stop_tree

    home.mkdir(parents=True, exist_ok=True)
    env = quiet_env(home, PREFECT_API_URL=api_url, OCRFLEET_DEVICES=devices, PREFECT_WORKER_QUERY_SECONDS="1")
    with open(home / "worker.log", "wb") as log:
        process = subprocess.Popen([*PREFECT, "worker", "start", "--pool", "ocrfleet", "--name", name, "--limit", "1"],
                                   cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        yield process
    finally:
        stop_tree(process)


def texts(results: Path) -> dict[tuple[str, int], str]:
    return {(r["source"], r["page"]): r["text"] for r in map(json.loads, results.read_text().splitlines())}


@pytest.mark.prefect_server
def test_a_corpus_over_two_machines_completes_exactly_once_when_one_dies_mid_chunk(tmp_path, model_cache):
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ocrfleet.flows.corpus_flow import corpus_run
    from ocrfleet.flows.ocr_flow import ocr_run
    from ocrfleet.tasks.deploy import deploy
    from tests.pages import draw_page
    from tests.prefect_server import ROOT, api_call, prefect_server, run_artifacts

    shared = tmp_path / "nfs"  # what every machine sees at the same path
    for number in range(12):
        lines = [f"Corpus page {number}", f"Ledger {number * 7} entries", "Harbor freight dock", "Friday batch"]
        draw_page(shared / "scans" / f"page-{number:02d}.png", lines, size=(1000, 620))
    config = CorpusConfig.model_validate({
        "job": {"inputs": [f"file://{shared}/scans"], "output_dir": f"file://{shared}/corpus",
                "publish_to": f"file://{tmp_path}/published"},
        "chunks": 4, "chunk_stall_s": 20, "poll_s": 1})
    home = tmp_path / "prefect"
    with contextlib.ExitStack() as stack:
        api_url = stack.enter_context(prefect_server(home / "server"))
        assert deploy(ROOT, api_url=api_url) == ["ocrfleet", "ocrfleet-control"]
        doomed = stack.enter_context(machine(api_url, home / "a", "machine-a", "cpu:1"))
        stack.enter_context(machine(api_url, home / "b", "machine-b", "cpu:2"))
        killer = MachineKiller(doomed)
        killer.thread.start()
        stack.callback(killer.stop.set)
        with temporary_settings({PREFECT_API_URL: api_url}):
            state = corpus_run(config, return_state=True)
            summary = state.result(raise_on_failure=False)
            assert state.is_completed(), summary
            assert killer.killed, "machine-a was never caught mid-chunk"
            single = ocr_run(JobConfig(inputs=(str(shared / "scans"),), output_dir=tmp_path / "single",
                                       devices="cpu:2"))
            first_results = (shared / "corpus" / "results.jsonl").read_bytes()
            # The same corpus again: every chunk is seen done from the control side, no machine is asked.
            again = corpus_run(config, return_state=True)
            assert again.is_completed(), again
            rerun = again.result()
            # This process's logs and events reach the server before it stops, not at interpreter exit.
            APILogWorker.drain_all(timeout=60)
            EventsWorker.drain_all(timeout=60)
        corpus_flow_run = str(state.state_details.flow_run_id)
        children = {chunk.chunk: [api_call(api_url, f"flow_runs/{run_id}") for run_id in chunk.flow_run_ids]
                    for chunk in summary.chunks}
        parents = {api_call(api_url, f"task_runs/{run['parent_task_run_id']}")["flow_run_id"]
                   for runs in children.values() for run in runs}
        artifacts = {artifact["key"]: artifact for artifact in run_artifacts(api_url, corpus_flow_run)}
        logs = [entry["message"] for entry in api_call(api_url, "logs/filter", {
            "logs": {"flow_run_id": {"any_": [corpus_flow_run]}}, "limit": 200})]

    out = shared / "corpus"
    assert summary.valid and summary.pages_planned == summary.pages_ok == single.pages_ok == 12
    assert texts(out / "results.jsonl") == texts(tmp_path / "single" / "results.jsonl")  # exactly once, same text
    published = tmp_path / "published"  # the corpus outputs, once, summary last; never a chunk's
    assert (published / "results.jsonl").read_bytes() == (out / "results.jsonl").read_bytes()
    assert (published / "summary.json").read_bytes() == (out / "summary.json").read_bytes()
    assert sorted(path.name for path in published.iterdir()) == [".ocrfleet-published.json", "failures.jsonl",
                                                                "results.jsonl", "results.parquet", "summary.json",
                                                                "text"]
    assert parents == {corpus_flow_run}  # every chunk attempt is a subflow of the corpus run
    killed_dir, written = killer.killed
    [killed] = [chunk for chunk in summary.chunks if Path(chunk.output_dir) == killed_dir]
    assert killed.attempts == 2 and killed.workers == ["machine-a", "machine-b"], killed
    first, second = children[killed.chunk]
    assert first["state_type"] == "CRASHED" and "presumed dead" in first["state"]["message"]
    assert second["state_type"] == "COMPLETED"
    assert any(f"chunk {killed.chunk}: attempt 1 ended CRASHED: RUNNING with no new bytes" in line
               and "presumed dead" in line for line in logs), logs  # the corpus run says why it started one again
    resumed = json.loads((killed_dir / "summary.json").read_text())
    assert resumed["pages_skipped"] >= written  # the dead machine's records were kept, not redone
    assert {worker for chunk in summary.chunks for worker in chunk.workers} == {"machine-a", "machine-b"}
    assert all(chunk.attempts == 1 for chunk in summary.chunks if chunk is not killed)
    assert rerun.valid and rerun.pages_ok == 12
    # Nothing was started again, and the summary keeps the attempts that did the work.
    assert [(c.attempts, c.workers) for c in rerun.chunks] == [(c.attempts, c.workers) for c in summary.chunks]
    assert (out / "results.jsonl").read_bytes() == first_results
    # The corpus run's own artifacts: progress at 100%, a row per chunk, and the verdict.
    assert artifacts["ocrfleet-progress"]["data"] == 100.0
    rows = json.loads(artifacts["ocrfleet-corpus-chunks"]["data"])
    assert [(row["chunk"], row["attempts"]) for row in rows] == [(c.chunk, c.attempts) for c in summary.chunks]
    verdict = artifacts["ocrfleet-corpus-summary"]["data"]
    assert "corpus run: valid" in verdict and f"chunk {killed.chunk}: 2 attempts, on machine-a then machine-b" in verdict


def chunk_runs(api_url: str, corpus_flow_run_id: str) -> list[dict]:
    from tests.prefect_server import api_call

    return api_call(api_url, "flow_runs/filter",
                    {"flow_runs": {"parent_flow_run_id": {"any_": [corpus_flow_run_id]}}})


def chunk_runs_once_stopped(api_url: str, corpus_flow_run_id: str, shared: Path, timeout_s: float = 60) -> list[dict]:
    """The corpus run's chunk runs once no OCR worker is left and each ended Cancelled or Completed (or at timeout)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and (ocr_workers(shared) or not {
            child["state_type"] for child in chunk_runs(api_url, corpus_flow_run_id)} <= {"CANCELLED", "COMPLETED"}):
        time.sleep(0.5)
    return chunk_runs(api_url, corpus_flow_run_id)


def stuck_report(api_url: str, children: list[dict], home: Path) -> str:
    """Each chunk run's end state, the state history of those not ended, and the machines' worker logs."""
    from tests.prefect_server import api_call

    lines = [f"chunk runs: {sorted(child['state_type'] for child in children)}"]
    for child in children:
        if child["state_type"] not in {"CANCELLED", "COMPLETED"}:
            history = api_call(api_url, f"flow_run_states/?flow_run_id={child['id']}")
            steps = " -> ".join(f"{state['name']} [{state['timestamp'][11:23]}] {state.get('message') or ''}".strip()
                                for state in history)
            where = f"run_count {child['run_count']}, pid {child['infrastructure_pid']}"
            lines.append(f"{child['name']} ({where}): {steps}")
    for log in sorted(home.glob("*/worker*.log")):
        lines.append(f"--- {log.parent.name}\n" + log.read_text(errors="replace")[-3000:])
    return "\n".join(lines)


def ocr_workers(under: Path) -> list:
    """Live OCR worker processes whose run dir is under `under` (other tests' workers may be running)."""
    import psutil

    return [process for process in psutil.process_iter(["cmdline", "status"])
            if "ocrfleet.run.worker" in (process.info["cmdline"] or []) and process.info["status"] != psutil.STATUS_ZOMBIE
            and any(str(under) in part for part in process.info["cmdline"])]


@pytest.mark.prefect_server
def test_cancelling_a_corpus_run_cancels_its_chunk_runs_running_and_queued(tmp_path, model_cache):
    import re
    import time

    from ocrfleet.tasks.deploy import deploy
    from tests.pages import draw_page
    from tests.prefect_server import ROOT, api_call, prefect_cli, prefect_server, process_worker, wait_for_state

    shared = tmp_path / "nfs"
    for number in range(160):  # 8 chunks on one machine: several are still queued when the cancel lands
        draw_page(shared / "scans" / f"page-{number:02d}.png",
                  [f"Cancel page {number}", *(f"Ledger line {line} of a slow page" for line in range(10))],
                  size=(1400, 1000))
    config = {"job": {"inputs": [str(shared / "scans")], "output_dir": str(shared / "corpus"),
                      "progress_interval_s": 3600}, "chunks": 8, "poll_s": 1}
    home = tmp_path / "prefect"
    with contextlib.ExitStack() as stack:
        # The server's own subflow clean-up is off: the corpus run must stop its chunks itself.
        api_url = stack.enter_context(prefect_server(
            home / "server", PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED="false"))
        deploy(ROOT, api_url=api_url)
        stack.enter_context(machine(api_url, home / "a", "machine-a", "cpu:1"))  # one machine: 7 chunks queue
        control = stack.enter_context(process_worker(api_url, home / "control", "control", pool="ocrfleet-control",
                                                     PREFECT_WORKER_QUERY_SECONDS="1"))
        output = prefect_cli(api_url, home, "deployment", "run", "ocrfleet-corpus/corpus",
                             "--params", json.dumps({"config": config}))
        corpus = re.search(r"UUID: ([0-9a-f-]{36})", output)[1]
        deadline = time.monotonic() + 240
        while not ocr_workers(shared) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert ocr_workers(shared), control.read_text()[-4000:]
        api_call(api_url, f"flow_runs/{corpus}/set_state", {"state": {"type": "CANCELLING"}, "force": True})
        run = wait_for_state(api_url, corpus, {"CANCELLED", "COMPLETED", "FAILED", "CRASHED"}, timeout_s=90)
        assert run["state_type"] == "CANCELLED", control.read_text()[-4000:]
        children = chunk_runs_once_stopped(api_url, corpus, shared)
        assert ocr_workers(shared) == []
        ended = sorted(child["state_type"] for child in children)
        # Chunks may finish while the cancel travels (Prefect's runner takes up to ~30 s to stop the corpus
        # run's process); every other one is cancelled, running or queued, and none is left going.
        assert set(ended) <= {"CANCELLED", "COMPLETED"} and len(ended) == 8, stuck_report(api_url, children, home)
        never_started = [child for child in children if child["state_type"] == "CANCELLED" and child["run_count"] == 0]
        assert never_started, "no queued chunk run was cancelled"
        assert not (shared / "corpus" / "results.jsonl").exists()


@pytest.mark.prefect_server
def test_a_corpus_run_started_in_process_reads_its_own_cancel_and_stops_its_chunk_runs(tmp_path, model_cache):
    """`ocrfleet corpus` runs the corpus flow in its own process: no worker is there to kill it or run its
    hooks on a cancel, so the run must read the cancel itself, stop every chunk run and end Cancelled."""
    import threading
    import time

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from ocrfleet.flows.corpus_flow import corpus_run
    from ocrfleet.tasks.deploy import deploy
    from tests.pages import draw_page
    from tests.prefect_server import ROOT, api_call, prefect_server

    shared = tmp_path / "nfs"
    for number in range(60):
        draw_page(shared / "scans" / f"page-{number:02d}.png",
                  [f"Cancel page {number}", *(f"Ledger line {line} of a slow page" for line in range(10))],
                  size=(1400, 1000))
    config = CorpusConfig.model_validate({"job": {"inputs": [str(shared / "scans")], "output_dir": str(shared / "out"),
                                                  "progress_interval_s": 3600}, "chunks": 6, "poll_s": 1})
    home = tmp_path / "prefect"
    with contextlib.ExitStack() as stack:
        api_url = stack.enter_context(prefect_server(
            home / "server", PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED="false"))
        deploy(ROOT, api_url=api_url)
        stack.enter_context(machine(api_url, home / "a", "machine-a", "cpu:1"))

        def cancel_once_a_chunk_ocrs():
            deadline = time.monotonic() + 240
            while not ocr_workers(shared) and time.monotonic() < deadline:
                time.sleep(0.3)
            [corpus] = api_call(api_url, "flow_runs/filter", {"flow_runs": {"parent_task_run_id": {"is_null_": True},
                                                                            "name": {"any_": ["cancel-me"]}}})
            api_call(api_url, f"flow_runs/{corpus['id']}/set_state", {"state": {"type": "CANCELLING"}, "force": True})

        threading.Thread(target=cancel_once_a_chunk_ocrs, daemon=True).start()
        with temporary_settings({PREFECT_API_URL: api_url}):
            state = corpus_run.with_options(flow_run_name="cancel-me")(config, return_state=True)
            # This process's logs and events reach the server before it stops, not at interpreter exit
            # (where they would be retried against a server that is gone, and hold the exit).
            APILogWorker.drain_all(timeout=60)
            EventsWorker.drain_all(timeout=60)
        assert state.is_cancelled(), state
        corpus = str(state.state_details.flow_run_id)
        children = chunk_runs_once_stopped(api_url, corpus, shared)
        assert ocr_workers(shared) == []
        assert {child["state_type"] for child in children} <= {"CANCELLED", "COMPLETED"}, \
            stuck_report(api_url, children, home)
        assert any(child["state_type"] == "CANCELLED" and child["run_count"] == 0 for child in children)
        assert not (shared / "out" / "results.jsonl").exists()


def corpus_command(api_url: str, home: Path, scans: Path, out: Path, chunks: int):
    """`ocrfleet corpus` as its own process (and session), as an operator starts it; its output in home/cli.log."""
    import subprocess
    import sys

    from tests.prefect_server import ROOT, quiet_env

    log = open(home / "cli.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "ocrfleet.cli", "corpus", str(scans), "--output", str(out),
                             "--chunks", str(chunks), "--api-url", api_url],
                            cwd=ROOT, env=quiet_env(home, PREFECT_API_URL=api_url), stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def runs_tagged(api_url: str, tag: str) -> list[dict]:
    from tests.prefect_server import api_call

    return api_call(api_url, "flow_runs/filter", {"flow_runs": {"tags": {"all_": [tag]}}})


def slow_scans(folder: Path, pages: int) -> Path:
    from tests.pages import draw_page

    for number in range(pages):
        draw_page(folder / f"page-{number:02d}.png",
                  [f"Signal page {number}", *(f"Ledger line {line} of a slow page" for line in range(6))],
                  size=(1200, 800))
    return folder


@pytest.mark.prefect_server
def test_sigint_to_ocrfleet_corpus_cancels_every_chunk_run_queued_or_running_and_stops_all_ocr(tmp_path, model_cache):
    import signal
    import time

    from ocrfleet.tasks.corpus_tasks import chunk_of_tag, corpus_tag
    from ocrfleet.tasks.deploy import deploy
    from tests.prefect_server import ROOT, prefect_server

    shared, home = tmp_path / "nfs", tmp_path / "prefect"
    scans, out = slow_scans(shared / "scans", 24), shared / "corpus"
    with contextlib.ExitStack() as stack:
        api_url = stack.enter_context(prefect_server(
            home / "server", PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED="false"))
        deploy(ROOT, api_url=api_url)
        stack.enter_context(machine(api_url, home / "a", "machine-a", "cpu:1"))  # one machine: 2 of 3 chunks queue
        controller = corpus_command(api_url, home, scans, out, chunks=3)
        deadline = time.monotonic() + 240
        while not ocr_workers(shared) and time.monotonic() < deadline and controller.poll() is None:
            time.sleep(0.3)
        assert ocr_workers(shared), (home / "cli.log").read_text()[-4000:]
        controller.send_signal(signal.SIGINT)  # the controller alone, as `kill -INT PID`
        code = controller.wait(timeout=60)
        stopped = time.monotonic()
        log = (home / "cli.log").read_text()
        assert code == 130 and "stopped by SIGINT" in log, log[-4000:]
        going = {"SCHEDULED", "PENDING", "RUNNING"}
        while time.monotonic() - stopped < 15 and (ocr_workers(shared) or going & {
                run["state_type"] for run in runs_tagged(api_url, chunk_of_tag(out))}):
            time.sleep(0.5)
        children = runs_tagged(api_url, chunk_of_tag(out))
        assert ocr_workers(shared) == []
        assert len(children) == 3 and not going & {child["state_type"] for child in children}, \
            stuck_report(api_url, children, home)
        assert any(child["state_type"] == "CANCELLED" and child["run_count"] == 0 for child in children)
        [corpus] = runs_tagged(api_url, corpus_tag(out))
        assert corpus["state_type"] == "CANCELLED"
        time.sleep(5)  # nothing starts after the stop: no chunk run created later
        assert len(runs_tagged(api_url, chunk_of_tag(out))) == 3


@pytest.mark.prefect_server
def test_after_kill_9_of_the_controller_a_rerun_adopts_its_chunk_runs_and_marks_it_crashed(tmp_path, model_cache):
    import time

    from ocrfleet.tasks.corpus_tasks import chunk_of_tag, corpus_tag
    from ocrfleet.tasks.deploy import deploy
    from tests.prefect_server import ROOT, prefect_server

    shared, home = tmp_path / "nfs", tmp_path / "prefect"
    scans, out = slow_scans(shared / "scans", 6), shared / "corpus"
    with contextlib.ExitStack() as stack:
        api_url = stack.enter_context(prefect_server(home / "server"))
        deploy(ROOT, api_url=api_url)
        stack.enter_context(machine(api_url, home / "a", "machine-a", "cpu:1"))
        dead = corpus_command(api_url, home, scans, out, chunks=3)
        deadline = time.monotonic() + 240
        while not ocr_workers(shared) and time.monotonic() < deadline and dead.poll() is None:
            time.sleep(0.3)
        assert ocr_workers(shared), (home / "cli.log").read_text()[-4000:]
        dead.kill()
        dead.wait()
        rerun = corpus_command(api_url, home, scans, out, chunks=3)
        assert rerun.wait(timeout=600) == 0, (home / "cli.log").read_text()[-6000:]
        children = runs_tagged(api_url, chunk_of_tag(out))
        corpus_runs = runs_tagged(api_url, corpus_tag(out))

    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == [] and summary["pages_ok"] == 6
    assert sorted(run["state_type"] for run in corpus_runs) == ["COMPLETED", "CRASHED"]  # none left Running
    # The dead controller's chunk runs were followed, not raced: no attempt failed on a busy chunk dir, and
    # each chunk ran exactly once.
    assert all(child["state_type"] == "COMPLETED" for child in children), [
        (child["name"], child["state_type"], child["state"]["message"]) for child in children]
    assert len(children) == 3 and all(chunk["attempts"] <= 1 for chunk in summary["chunks"])
    [first] = [run for run in corpus_runs if run["state_type"] == "CRASHED"]
    # Chunk runs are named after their corpus run; the dead one had started some (how many depends on when it
    # was killed), which the rerun adopted, and the rerun started the others.
    assert sorted(child["name"].rsplit("-chunk-", 1)[1] for child in children) == [f"{n:05d}-try1" for n in range(3)]
    assert {child["name"].rsplit("-chunk-", 1)[0] for child in children} <= {run["name"] for run in corpus_runs}
    assert any(child["name"].startswith(f"{first['name']}-chunk-") for child in children)
    followed = {run_id for chunk in summary["chunks"] for run_id in chunk["flow_run_ids"]}
    assert followed and followed <= {child["id"] for child in children}
