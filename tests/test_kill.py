"""Kill the real `ocrfleet run` (and its workers) at several points; the same command again gives a clean run's results."""

import os
import random
import signal
import subprocess
import sys
import time

import psutil
import pytest

from ocrfleet.records import PageRecord, read_jsonl
from tests.pages import draw_page



@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kill-corpus")
    for i in range(12):
        draw_page(folder / f"page {i:02d}.png", [f"Ledger {i} entry", f"Crate {i * 7} shipped"], size=(560, 150),
                  font_px=30)
    return folder


def start(corpus, out):
    # A session of its own, so the test can kill the run's whole process group as `kill -9` of a job would.
    return subprocess.Popen([sys.executable, "-m", "ocrfleet.cli", "run", str(corpus), "--output", str(out),
                             "--devices", "cpu:2", "--threads-per-worker", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def finish(corpus, out):
    result = subprocess.run([sys.executable, "-m", "ocrfleet.cli", "run", str(corpus), "--output", str(out),
                             "--devices", "cpu:2", "--threads-per-worker", "1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def records_written(out):
    return sum(len(path.read_bytes().splitlines()) for path in (out / "records").glob("*.jsonl")) \
        if (out / "records").exists() else 0


def wait_for(condition, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def content(out):
    return [(r.source, r.page, r.status, r.text, r.lines) for r in read_jsonl(out / "results.jsonl", PageRecord)]


def workers_of(out):
    return [p for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and "ocrfleet.run.worker" in p.info["cmdline"] and str(out) in p.info["cmdline"]]


def test_killing_the_run_at_any_point_then_rerunning_gives_the_clean_results_exactly_once(corpus, tmp_path):
    clean = tmp_path / "clean"
    finish(corpus, clean)
    expected = content(clean)
    assert len(expected) == 12 and all(status == "ok" for _, _, status, _, _ in expected)

    out = tmp_path / "killed"
    rng = random.Random(7)
    # Points: while planning, after the first records, and a random number of records in.
    for point in (lambda: (out / "run.json").exists(), lambda: records_written(out) >= 1,
                  lambda n=rng.randint(3, 9): records_written(out) >= n):
        run = start(corpus, out)
        wait_for(point)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        wait_for(lambda: not workers_of(out), timeout=30)  # no orphan keeps running (or writing)
    before = records_written(out)
    finish(corpus, out)
    assert content(out) == expected
    summary = (out / "summary.json").read_text()
    assert '"problems": []' in summary
    assert before > 0

    # Once more: nothing new, so no Prefect run and no model load, and the results stay byte for byte.
    results = (out / "results.jsonl").read_bytes()
    again = finish(corpus, out)
    assert "nothing to do: all 12 pages are done already" in again.stdout
    assert (out / "results.jsonl").read_bytes() == results and "Created flow run" not in again.stderr


def test_a_worker_killed_mid_shard_is_restarted_and_the_run_completes(corpus, tmp_path):
    out = tmp_path / "out"
    run = start(corpus, out)
    wait_for(lambda: records_written(out) >= 1)
    # A worker that has written records (so it had loaded its model and was mid-shard) dies at once.
    busy = next(path.stem for path in (out / "records").glob("*.jsonl") if path.read_bytes().count(b"\n"))
    victim = next(p for p in workers_of(out) if p.info["cmdline"][p.info["cmdline"].index("--shard") + 1] == str(int(busy)))
    victim.kill()
    assert run.wait(timeout=300) == 0
    results = content(out)
    assert len(results) == 12 and len({(s, p) for s, p, *_ in results}) == 12
    logs = "".join(path.read_text() for path in (out / "logs").glob("*.log"))
    assert logs.count("models loaded") == 3  # two workers, one restarted


def family_of(run):
    """The run's processes below it: its workers and its temporary Prefect API server."""
    return psutil.Process(run.pid).children(recursive=True)


def is_api_server(process):
    try:
        return "uvicorn" in process.cmdline()
    except psutil.Error:
        return False


def start_logged(corpus, out):
    return subprocess.Popen([sys.executable, "-m", "ocrfleet.cli", "run", str(corpus), "--output", str(out),
                             "--devices", "cpu:2", "--threads-per-worker", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_run_process_alone_stops_it_with_its_workers_and_api_server_and_a_rerun_resumes(
        corpus, tmp_path, signum):
    out = tmp_path / "out"
    run = start_logged(corpus, out)
    wait_for(lambda: records_written(out) >= 1)
    family = family_of(run)
    assert any(is_api_server(process) for process in family) and workers_of(out)
    run.send_signal(signum)  # to the main process only, not its group: as `kill PID` or a service manager does
    _, stderr = run.communicate(timeout=60)  # before the fix: the whole shards ran (SIGTERM) or ~220 s (SIGINT)
    assert run.returncode == 128 + signum, stderr[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in stderr and "resumes" in stderr
    _, alive = psutil.wait_procs(family, timeout=30)
    assert alive == []  # no worker, no temporary API server left behind
    before = records_written(out)
    assert 0 < before < 12
    finish(corpus, out)
    assert len(content(out)) == 12 and '"problems": []' in (out / "summary.json").read_text()


def test_kill_9_of_the_run_process_alone_leaves_no_worker_or_api_server_running(corpus, tmp_path):
    out = tmp_path / "out"
    run = start(corpus, out)
    wait_for(lambda: records_written(out) >= 1)
    family = family_of(run)
    assert any(is_api_server(process) for process in family)
    run.kill()
    run.wait()
    _, alive = psutil.wait_procs(family, timeout=30)  # workers watch a pipe; the server gets a death signal
    assert alive == []


def test_a_run_whose_api_server_dies_stops_its_workers_and_exits_instead_of_hanging(corpus, tmp_path):
    out = tmp_path / "out"
    run = start_logged(corpus, out)
    wait_for(lambda: records_written(out) >= 1)
    family = family_of(run)
    next(process for process in family if is_api_server(process)).kill()
    _, stderr = run.communicate(timeout=120)  # before the fix: minutes of retries against the dead server
    assert run.returncode == 1 and "temporary Prefect API server exited" in stderr, stderr[-3000:]
    assert "run interrupted" in stderr and "resumes" in stderr
    _, alive = psutil.wait_procs(family, timeout=30)
    assert alive == []
    finish(corpus, out)
    assert len(content(out)) == 12
