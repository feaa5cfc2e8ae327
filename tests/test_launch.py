import logging

import pytest

from ocrfleet.config import load_config
from ocrfleet.run.launch import WorkerFailed, run_worker
from ocrfleet.plan.planning import prepare_run
from tests.pages import draw_page


def test_a_worker_past_its_timeout_is_killed_and_reported(tmp_path):
    draw_page(tmp_path / "in" / "a.png", ["slow"], size=(80, 40), font_px=12)
    out = tmp_path / "out"
    plan = prepare_run(load_config(None, inputs=[str(tmp_path / "in")], output_dir=str(out), devices="cpu"))
    lines = []
    with pytest.raises(WorkerFailed, match="shard_timeout_s=0.5s"):
        run_worker(out, plan.shards[0], timeout_s=0.5, sink=lambda level, text: lines.append((level, text)))
    assert (out / "logs" / "00000.log").exists()
    assert not (out / "done" / "00000").exists()


def test_worker_warnings_reach_the_sink_and_the_full_log_is_kept(tmp_path):
    out = tmp_path / "out"
    draw_page(tmp_path / "in" / "a.png", ["x"], size=(80, 40), font_px=12)
    plan = prepare_run(load_config(None, inputs=[str(tmp_path / "in")], output_dir=str(out), devices="cpu"))
    (tmp_path / "in" / "a.png").write_bytes(b"broken after planning")
    lines = []
    run_worker(out, plan.shards[0], sink=lambda level, text: lines.append((level, text)))
    assert any(level == logging.WARNING and "a.png page 0 failed" in text for level, text in lines)
    assert any(text.startswith("progress shard=0 done=1 total=1") for _, text in lines)
    assert "models loaded" in (out / "logs" / "00000.log").read_text()


def test_stopping_a_run_kills_its_running_workers_and_refuses_new_ones(tmp_path):
    import threading

    from ocrfleet.run.launch import RunAborted, abort_run, reset_run

    for name in ("a", "b"):
        draw_page(tmp_path / "in" / f"{name}.png", ["x"], size=(80, 40), font_px=12)
    out = tmp_path / "out"
    plan = prepare_run(load_config(None, inputs=[str(tmp_path / "in")], output_dir=str(out), devices="cpu:2"))
    raised = []

    def shard_zero():
        try:
            run_worker(out, plan.shards[0], sink=lambda *_: None)
        except RunAborted as exc:
            raised.append(exc)

    thread = threading.Thread(target=shard_zero)
    thread.start()
    while not (out / "logs" / "00000.log").exists():
        thread.join(0.05)
    abort_run(out, "shard 1 landed on the wrong GPU")
    thread.join(30)
    assert raised and "landed on the wrong GPU" in str(raised[0])
    with pytest.raises(RunAborted, match="not started"):
        run_worker(out, plan.shards[1], sink=lambda *_: None)
    reset_run(out)
    run_worker(out, plan.shards[1], sink=lambda *_: None)
    assert (out / "done" / "00001").exists() and not (out / "done" / "00000").exists()
