"""Nothing lost, nothing done twice: worker deaths, hangs, memory recycling, incremental runs, locks."""

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
from PIL import Image

from ocrfleet.run import launch
from ocrfleet.config import load_config
from ocrfleet.run.launch import WorkerFailed, run_worker
from ocrfleet.run.lock import LOCK_NAME, RunDirBusy, hold_run_dir
from ocrfleet.plan.planning import prepare_run, shard_paths
from ocrfleet.records import PageRecord, complete_records, read_jsonl
from ocrfleet.reduce.summary import reduce_run
from ocrfleet.run.worker import run_shard
from tests.faulty_worker import FaultyEngine


def blank_pages(folder, widths):
    """Plain pages whose widths name them: the fake engine 'reads' a page as its width."""
    folder.mkdir(parents=True, exist_ok=True)
    for width in widths:
        Image.new("RGB", (width, 20), "white").save(folder / f"w{width}.png")
    return folder


@pytest.fixture
def faulty(monkeypatch, tmp_path):
    """Run workers as `tests.faulty_worker`, with the faults a test sets."""
    monkeypatch.setattr(launch, "WORKER_MODULE", "tests.faulty_worker")
    monkeypatch.setenv("OCRFLEET_TEST_STATE", str(tmp_path))

    def set_faults(**faults):
        monkeypatch.setenv("OCRFLEET_TEST_FAULTS", json.dumps(faults))

    return set_faults


def plan_cpu(tmp_path, widths, **settings):
    config = load_config(None, inputs=[str(blank_pages(tmp_path / "in", widths))], output_dir=str(tmp_path / "out"),
                         devices="cpu:1", **settings)
    return tmp_path / "out", prepare_run(config)


def run_all(out, plan, sink=lambda *_: None):
    for spec in plan.shards:
        run_worker(out, spec, sink=sink)
    return reduce_run(out)


def by_width(out):
    return {os.path.basename(r.source): r for r in read_jsonl(out / "results.jsonl", PageRecord)}


def test_a_page_that_kills_its_worker_twice_is_quarantined_and_the_rest_goes_on(faulty, tmp_path):
    faulty(crash=[104])
    out, plan = plan_cpu(tmp_path, range(100, 108))
    said = []
    summary = run_all(out, plan, sink=lambda level, text: said.append((level, text)))
    records = by_width(out)
    assert summary.problems == [] and summary.pages_failed == 1 and summary.pages_ok == 7
    assert records["w104.png"].error_class == "WorkerCrashed"
    assert "died 2 times" in records["w104.png"].error
    assert [r.text for name, r in sorted(records.items()) if name != "w104.png"] == \
        [f"w{w}" for w in (100, 101, 102, 103, 105, 106, 107)]
    warnings = [text for level, text in said if level == logging.WARNING]
    assert any("restarting it on cpu (1/2)" in text for text in warnings)
    assert any("w104.png" in text and "recorded as failed" in text for text in warnings)
    assert summary.failures_by_class == {"WorkerCrashed": 1}


def test_a_worker_that_dies_once_is_restarted_and_loses_nothing(faulty, tmp_path):
    faulty(crash_once=[102, 105])
    out, plan = plan_cpu(tmp_path, range(100, 108))
    summary = run_all(out, plan)
    assert summary.problems == [] and summary.pages_ok == 8 and summary.pages_failed == 0
    assert sorted(r.text for r in by_width(out).values()) == [f"w{w}" for w in range(100, 108)]
    log = shard_paths(out, 0)["log"].read_text()
    assert log.count("models loaded") == 3  # first start, and one restart per death


def test_a_worker_stopped_by_sigterm_is_not_restarted_and_a_rerun_resumes(faulty, tmp_path):
    faulty(terminate=[103])  # what cancelling the flow run does: SIGTERM to its whole process group
    out, plan = plan_cpu(tmp_path, range(100, 106))
    with pytest.raises(launch.WorkerStopped, match="stopped by SIGTERM, not restarted"):
        run_worker(out, plan.shards[0], sink=lambda *_: None)
    assert shard_paths(out, 0)["log"].read_text().count("models loaded") == 1
    assert len(complete_records(shard_paths(out, 0)["records"])) == 3  # the pages before it
    faulty()
    summary = run_all(out, prepare_run(plan.config))
    assert summary.pages_ok == 6 and summary.pages_skipped == 3


def test_a_run_that_reads_its_own_cancel_stops_its_workers_even_when_nobody_kills_it(prefect_api, faulty, tmp_path):
    """Prefect kills a cancelled run's process from outside, and misses a cancel that lands while the run's
    process starts. A flow called in-process has nobody outside at all: it must read its own cancel."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.states import Cancelling

    from ocrfleet.flows.ocr_flow import ocr_run

    faulty(hang=[103])  # until page_timeout_s, after which, if nothing stopped it, the run would complete
    out, plan = plan_cpu(tmp_path, range(100, 106), page_timeout_s=90)
    name = f"cancel-{tmp_path.name}"

    def cancel_once_pages_are_written():
        deadline = time.monotonic() + 120
        while len(complete_records(shard_paths(out, 0)["records"])) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        with get_client(sync_client=True) as client:
            [run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
            client.set_flow_run_state(run.id, Cancelling(message="from the test"), force=True)

    canceller = threading.Thread(target=cancel_once_pages_are_written, daemon=True)
    canceller.start()
    state = ocr_run.with_options(flow_run_name=name)(plan.config, return_state=True)
    assert state.is_cancelled() and "workers are stopped" in state.message, state
    with get_client(sync_client=True) as client:
        [run] = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
        assert run.state.type.value == "CANCELLED"
    assert len(complete_records(shard_paths(out, 0)["records"])) == 3
    assert not (out / "summary.json").exists()
    faulty()
    launch.reset_run(out)  # as the rerun's plan task does
    summary = run_all(out, prepare_run(plan.config))
    assert summary.pages_ok == 6 and summary.pages_skipped == 3


def test_a_page_that_hangs_is_killed_after_page_timeout_and_quarantined(faulty, tmp_path):
    faulty(hang=[101])
    out, plan = plan_cpu(tmp_path, range(100, 104), page_timeout_s=1.0)
    summary = run_all(out, plan)
    records = by_width(out)
    assert records["w101.png"].error_class == "PageTimeout"
    assert summary.pages_ok == 3 and summary.problems == []


def test_a_worker_past_its_memory_limit_is_recycled_between_pages_without_losing_records(faulty, tmp_path):
    faulty(leak_mb=120)
    out, plan = plan_cpu(tmp_path, range(100, 110), max_worker_rss_mb=256)
    said = []
    summary = run_all(out, plan, sink=lambda level, text: said.append(text))
    assert summary.problems == [] and summary.pages_ok == 10
    assert sum("recycled for memory" in text for text in said) >= 2
    assert [r.text for r in read_jsonl(out / "results.jsonl", PageRecord)] == [f"w{w}" for w in range(100, 110)]


def test_a_worker_that_dies_before_any_page_fails_the_shard_without_blaming_pages(monkeypatch, tmp_path):
    out, plan = plan_cpu(tmp_path, range(100, 103))
    monkeypatch.setattr(launch, "WORKER_MODULE", "tests.no_such_module")
    with pytest.raises(WorkerFailed, match="exited with code 1"):
        run_worker(out, plan.shards[0], sink=lambda *_: None)
    assert not shard_paths(out, 0)["records"].exists()


def test_a_worker_exits_when_its_parent_dies(tmp_path):
    """The worker watches its stdin: when the process holding the other end dies, so does the worker."""
    out, plan = plan_cpu(tmp_path, range(100, 102))
    env = {**os.environ, "OCRFLEET_TEST_FAULTS": json.dumps({"hang": [100]}), **plan.shards[0].env}
    worker = subprocess.Popen([sys.executable, "-m", "tests.faulty_worker", "--run-dir", str(out), "--shard", "0",
                               "--watch-parent"], stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert worker.stderr.readline()  # started and logging; now it hangs on the first page
    worker.stdin.close()  # what the parent's death does to the pipe
    assert worker.wait(timeout=20) == 6


# Incremental runs: a record is reused when its page, file content and settings are unchanged.

def run_fake(out, config):
    plan = prepare_run(config)
    for spec in plan.shards:
        run_shard(out, spec.shard, engine_factory=FaultyEngine)
    return plan, reduce_run(out)


def test_a_rerun_processes_only_new_and_changed_files_and_what_new_settings_affect(tmp_path):
    folder = blank_pages(tmp_path / "in", [100, 101, 102])
    out = tmp_path / "out"
    config = load_config(None, inputs=[str(folder)], output_dir=str(out), devices="cpu:2")
    plan, first = run_fake(out, config)
    assert (plan.pages_skipped, first.pages_ok) == (0, 3)
    results_before = (out / "results.jsonl").read_bytes()

    plan, again = run_fake(out, config)  # nothing new: nothing planned, same results byte for byte
    assert (plan.pages_skipped, len(plan.shards), again.pages_ok) == (3, 0, 3)
    assert (out / "results.jsonl").read_bytes() == results_before

    blank_pages(folder, [103])  # the nightly case: a new file
    Image.new("RGB", (110, 20), "white").save(folder / "w101.png")  # a file changed in place
    os.utime(folder / "w100.png")  # touched, content unchanged: a hash tells, no OCR
    plan, third = run_fake(out, config)
    assert plan.pages_skipped == 2 and sum(spec.pages for spec in plan.shards) == 2
    texts = {name: r.text for name, r in by_width(out).items()}
    assert texts == {"w100.png": "w100", "w101.png": "w110", "w102.png": "w102", "w103.png": "w103"}
    assert third.pages_skipped == 2 and third.problems == []

    paddle = config.model_copy(update={"engine": "paddle"})  # other models: everything is redone
    plan, _ = run_fake(out, paddle)
    assert plan.pages_skipped == 0 and sum(spec.pages for spec in plan.shards) == 4


def test_a_rerun_after_a_crash_reuses_what_the_killed_run_wrote(tmp_path):
    folder = blank_pages(tmp_path / "in", range(100, 106))
    out = tmp_path / "out"
    config = load_config(None, inputs=[str(folder)], output_dir=str(out), devices="cpu:2")
    plan = prepare_run(config)
    run_shard(out, 0, engine_factory=FaultyEngine)  # shard 1 never ran: the run was killed
    with open(shard_paths(out, 1)["records"], "w") as torn:
        torn.write('{"source": "/half')
    replanned, summary = run_fake(out, config)
    assert replanned.pages_skipped == plan.shards[0].pages
    assert summary.problems == [] and summary.pages_ok == 6
    assert [r.text for r in read_jsonl(out / "results.jsonl", PageRecord)] == [f"w{w}" for w in range(100, 106)]


def test_failed_records_from_a_vanished_file_are_retried_but_other_failures_are_kept(tmp_path):
    folder = blank_pages(tmp_path / "in", [100])
    (folder / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    config = load_config(None, inputs=[str(folder)], output_dir=str(out), devices="cpu:1",
                         max_failure_rate=1.0)
    run_fake(out, config)
    assert by_width(out)["bad.png"].status == "failed"
    plan, _ = run_fake(out, config)
    assert plan.pages_skipped == 2  # the unreadable file is not OCR'd again; `reprocess` is for that


# One run per output dir.

def test_a_second_run_on_a_held_output_dir_is_refused_naming_the_holder(tmp_path):
    with hold_run_dir(tmp_path, "first run"):
        with pytest.raises(RunDirBusy, match=rf"pid {os.getpid()} on .* \(first run\)"):
            with hold_run_dir(tmp_path, "second run"):
                pass
    with hold_run_dir(tmp_path, "third run"):  # released: free again
        assert json.loads((tmp_path / LOCK_NAME).read_text())["what"] == "third run"


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    code = ("import sys, time; from pathlib import Path; from ocrfleet.run.lock import hold_run_dir\n"
            "with hold_run_dir(Path(sys.argv[1]), 'doomed'):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(RunDirBusy, match=rf"pid {holder.pid} .*doomed"):
        with hold_run_dir(tmp_path):
            pass
    holder.kill()
    holder.wait()
    with hold_run_dir(tmp_path, "successor"):  # the kernel released the dead holder's lock
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_gpu_locks_make_a_second_run_wait_for_the_gpu(tmp_path, monkeypatch):
    from ocrfleet.plan.devices import Device
    from ocrfleet.run.lock import hold_devices

    monkeypatch.setenv("OCRFLEET_LOCK_DIR", str(tmp_path))
    gpu = Device(name="gpu:3", gpu_id=3, cuda_visible="3", uuid="GPU-3333")
    order, said = [], []
    with hold_devices([gpu], "run A"):
        def second():
            with hold_devices([gpu], "run B", poll_s=0.05, say=said.append):
                order.append("B")
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.5)
        order.append("A done")
    thread.join(10)
    assert order == ["A done", "B"]
    assert "GPU GPU-3333 is in use by" in said[0] and "run A" in said[0]


def test_the_progress_bar_counts_records_as_workers_write_them(tmp_path):
    import io

    from ocrfleet.run.progress import ProgressBar, RecordCounter, bar

    out, plan = plan_cpu(tmp_path, range(100, 104))
    stream = io.StringIO()
    with ProgressBar(out, stream=stream, interval_s=0.05):
        counter = RecordCounter(out)
        assert counter.count() == 0
        run_shard(out, 0, engine_factory=FaultyEngine)
        assert counter.count() == 4
        time.sleep(0.3)
    assert stream.getvalue().splitlines()[-1].startswith("[" + "#" * 30 + "] 4/4 pages 100.0%")
    assert bar(1, 4, 2.0).endswith("ETA 0m01s")


# The run's own storage failing is the machine's fault: the run stops, no page is blamed, no temporary stays.

def leftovers(out):
    return sorted(str(path) for path in out.rglob(".*.tmp"))


def test_a_full_disk_stops_the_shard_blames_no_page_and_a_rerun_with_space_finishes(faulty, tmp_path):
    faulty(disk_bytes=1000)  # room for two records
    out, plan = plan_cpu(tmp_path, range(100, 108))
    with pytest.raises(launch.StorageFailed, match=r"storage failed.*no page is blamed.*No space left on device"):
        run_worker(out, plan.shards[0], sink=lambda *_: None)
    records = complete_records(shard_paths(out, 0)["records"])
    assert 0 < len(records) < 8 and all(record.status == "ok" for record in records)
    assert shard_paths(out, 0)["log"].read_text().count("models loaded") == 1  # stopped, not restarted
    assert leftovers(out) == []
    faulty()  # space freed
    launch.reset_run(out)  # a new run in this process, as the flow starts one
    summary = run_all(out, plan)
    assert (summary.pages_ok, summary.pages_failed, summary.problems) == (8, 0, [])


def test_a_full_disk_fails_the_flow_run_with_the_storage_error_before_any_reduce(prefect_api, faulty, tmp_path):
    from ocrfleet.flows.ocr_flow import ocr_run

    faulty(disk_bytes=1000)
    out = tmp_path / "out"
    config = load_config(None, inputs=[str(blank_pages(tmp_path / "in", range(100, 108)))], output_dir=str(out),
                         devices="cpu:2")
    state = ocr_run(config=config, return_state=True)
    error = state.result(raise_on_failure=False)
    assert state.is_failed() and isinstance(error, launch.StorageFailed), error
    assert "No space left on device" in str(error)
    assert not (out / "summary.json").exists() and leftovers(out) == []
    faulty()  # space freed: the same run again finishes, every page ok
    assert ocr_run(config=config).pages_ok == 8


def test_an_atomic_write_that_fails_leaves_no_temporary_file(tmp_path, monkeypatch):
    from ocrfleet.records import write_atomic
    from ocrfleet.reduce.outputs import write_bytes_atomic

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(tmp_path / "results.jsonl", "{}\n")
    with pytest.raises(OSError, match="No space left"):
        write_bytes_atomic(tmp_path / "summary.bin", b"{}")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs, where the test may mount one (root, outside a locked-down container)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_really_full_file_system_stops_the_run_without_blaming_pages(faulty, small_disk, tmp_path):
    faulty()
    inputs = blank_pages(tmp_path / "in", range(100, 300))
    config = load_config(None, inputs=[str(inputs)], output_dir=str(small_disk / "out"), devices="cpu:1")
    plan = prepare_run(config)
    with pytest.raises(launch.StorageFailed, match="No space left on device"):
        run_worker(small_disk / "out", plan.shards[0], sink=lambda *_: None)
    records = complete_records(shard_paths(small_disk / "out", 0)["records"])
    assert 0 < len(records) < 200 and all(record.status == "ok" for record in records)
    assert leftovers(small_disk) == []
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)  # space freed
    launch.reset_run(small_disk / "out")
    summary = run_all(small_disk / "out", plan)
    assert (summary.pages_ok, summary.pages_failed, summary.problems) == (200, 0, [])


def test_a_file_replaced_while_its_page_is_read_gets_the_hash_of_the_content_it_was_read_from(tmp_path, monkeypatch):
    from ocrfleet.inputs.pages import PageReader
    from ocrfleet.plan.ledger import file_sha256

    folder = blank_pages(tmp_path / "in", [100])
    out = tmp_path / "out"
    config = load_config(None, inputs=[str(folder)], output_dir=str(out), devices="cpu:1")
    read = PageReader.load

    def replaced_while_read(self, source, page):
        pixels = read(self, source, page)  # the old content, read...
        if not (tmp_path / "replaced").exists():  # ...then the file is replaced, once, as a scanner re-saving it
            (tmp_path / "replaced").write_text("")
            Image.new("RGB", (150, 20), "white").save(tmp_path / "new.png")
            os.replace(tmp_path / "new.png", folder / "w100.png")
        return pixels

    monkeypatch.setattr(PageReader, "load", replaced_while_read)
    run_fake(out, config)
    record = by_width(out)["w100.png"]
    assert (record.text, record.sha256) == ("w150", file_sha256(str(folder / "w100.png")))
    monkeypatch.undo()
    plan, again = run_fake(out, config)  # the next run reuses it: its text is the file's
    assert plan.pages_skipped == 1 and by_width(out)["w100.png"].text == "w150"
