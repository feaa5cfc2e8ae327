"""Real PaddleOCR, offline models, on CPU, through the Prefect flow and the CLI."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ocrfleet.flows.ocr_flow import RunInvalid, ocr_run
from ocrfleet.config import load_config
from ocrfleet.plan.models import DEFAULT_PRESET, PRESETS, default_cache_dir, materialize
from ocrfleet.records import PageRecord, read_jsonl
from tests.conftest import WORDS

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "pages"


def squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text).lower()


def results(run_dir: Path) -> list[PageRecord]:
    return list(read_jsonl(run_dir / "results.jsonl", PageRecord))


def content(records: list[PageRecord]) -> list[tuple]:
    """What OCR found, without where it ran."""
    return [(r.source, r.page, r.status, r.text, r.lines, r.error) for r in records]


def run(inputs, out, **settings):
    return ocr_run(config=load_config(None, inputs=[str(i) for i in inputs], output_dir=str(out), **settings))


def test_words_come_back_across_two_cpu_workers_identical_to_one(prefect_api, word_pages, tmp_path):
    summary = run([word_pages], tmp_path / "two", devices="cpu:2")
    assert summary.valid and summary.pages_ok == len(WORDS)
    models = json.loads((tmp_path / "two" / "run.json").read_text())["models"]  # the default: PP-OCRv6 small, ONNX
    assert (models["engine"], models["text_recognition_model_name"]) == ("onnxruntime", "PP-OCRv6_small_rec")
    assert sorted(shard.device for shard in summary.shards) == ["cpu", "cpu"]
    by_name = {os.path.relpath(r.source, word_pages): r for r in results(tmp_path / "two")}
    for name, lines in WORDS.items():
        for line in lines:
            assert squeeze(line) in squeeze(by_name[name].text), (name, by_name[name].text)
    assert {r.shard for r in by_name.values()} == {0, 1}
    assert all(len(line.box) == 4 for r in by_name.values() for line in r.lines)
    run([word_pages], tmp_path / "one", devices="cpu:1")
    assert content(results(tmp_path / "one")) == content(results(tmp_path / "two"))
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["problems"] == []


def test_scanned_samples_match_a_plain_in_process_paddleocr_loop(prefect_api, tmp_path):
    from paddleocr import PaddleOCR

    run([SAMPLES], tmp_path / "out", devices="cpu:2")
    det, rec = PRESETS[DEFAULT_PRESET]
    models = {name: str(materialize("onnxruntime", name, default_cache_dir())) for name in (det, rec)}
    ocr = PaddleOCR(text_detection_model_name=det, text_detection_model_dir=models[det],
                    text_recognition_model_name=rec, text_recognition_model_dir=models[rec],
                    use_doc_orientation_classify=False, use_doc_unwarping=False, use_textline_orientation=False,
                    text_recognition_batch_size=1,  # what ocrfleet uses on onnxruntime (REC_BATCH)
                    text_det_limit_side_len=960, text_det_limit_type="max",  # ocrfleet's DET_LIMIT
                    device="cpu", engine="onnxruntime")
    loop = {str(path): "\n".join(ocr.predict(str(path))[0]["rec_texts"]) for path in sorted(SAMPLES.iterdir())}
    assert {r.source: r.text for r in results(tmp_path / "out")} == loop
    assert "harborfreightlines" in squeeze(loop[str(SAMPLES / "invoice-0001.png")])


def test_the_paddle_engine_reads_the_same_text_as_onnxruntime(prefect_api, word_pages, tmp_path):
    pages = [word_pages / "alpha.png", word_pages / "beta.png"]
    # PP-OCRv4 mobile, the preset shipped in Paddle format too. The same recognition batch on both: the engines'
    # defaults differ (1 on onnxruntime, 6 on Paddle).
    v4 = {"models": "pp-ocrv4-mobile", "devices": "cpu:1", "text_recognition_batch_size": 1}
    run(pages, tmp_path / "paddle", engine="paddle", **v4)
    run(pages, tmp_path / "onnx", engine="onnxruntime", **v4)
    paddle, onnx = results(tmp_path / "paddle"), results(tmp_path / "onnx")
    assert [r.text for r in paddle] == [r.text for r in onnx]
    assert squeeze("Invoice 4821") in squeeze(paddle[0].text)


def test_a_corrupt_input_fails_its_page_and_the_run_still_completes(prefect_api, word_pages, tmp_path):
    bad = tmp_path / "in" / "corrupt.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not an image at all")
    summary = run([word_pages / "alpha.png", bad], tmp_path / "out", devices="cpu:2", max_failure_rate=0.5)
    assert (summary.pages_ok, summary.pages_failed) == (1, 1)
    failure = next(read_jsonl(tmp_path / "out" / "failures.jsonl", PageRecord))
    assert failure.source == str(bad) and failure.error_class == "NotAnImage"
    with pytest.raises(RunInvalid, match="above max_failure_rate"):
        run([word_pages / "alpha.png", bad], tmp_path / "strict", devices="cpu:1")
    assert json.loads((tmp_path / "strict" / "summary.json").read_text())["pages_failed"] == 1


def test_the_cli_exits_zero_only_for_a_valid_run(word_pages, tmp_path):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"")
    cli = [sys.executable, "-m", "ocrfleet.cli", "run", str(word_pages / "beta.png"), str(bad), "--devices", "cpu:1"]
    failed = subprocess.run(cli + ["--output", str(tmp_path / "strict")], capture_output=True, text=True)
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert "above max_failure_rate" in failed.stderr
    assert json.loads((tmp_path / "strict" / "summary.json").read_text())["pages_ok"] == 1
    passed = subprocess.run(cli + ["--output", str(tmp_path / "lenient"), "--max-failure-rate", "0.5"],
                            capture_output=True, text=True)
    assert passed.returncode == 0, passed.stderr[-2000:]
    assert "results:" in passed.stdout
    bad_usage = subprocess.run(cli[:3] + ["run", str(tmp_path / "nothing-here"), "--output", str(tmp_path / "x")],
                               capture_output=True, text=True)
    assert bad_usage.returncode == 2 and "no such file" in bad_usage.stderr

    # Reprocess only the failed page, once it is fixed, into a new output dir that says where it came from.
    bad.write_bytes((word_pages / "alpha.png").read_bytes())
    reprocess = cli[:3] + ["reprocess", str(tmp_path / "strict"), "--failed", "--output", str(tmp_path / "redo")]
    redone = subprocess.run(reprocess, capture_output=True, text=True)
    assert redone.returncode == 0, redone.stderr[-2000:]
    records = list(read_jsonl(tmp_path / "redo" / "results.jsonl", PageRecord))
    assert [(r.source, r.status) for r in records] == [(str(bad), "ok")]
    assert json.loads((tmp_path / "redo" / "summary.json").read_text())["derived_from"] == str(tmp_path / "strict")
    none_of_class = subprocess.run(reprocess[:-1] + [str(tmp_path / "redo2"), "--error-class", "WorkerCrashed"],
                                   capture_output=True, text=True)
    assert none_of_class.returncode == 2 and "no failed pages of class WorkerCrashed" in none_of_class.stderr


def test_the_cli_refuses_an_output_dir_another_run_holds(word_pages, tmp_path):
    from ocrfleet.run.lock import hold_run_dir

    with hold_run_dir(tmp_path / "out", "the first run"):
        busy = subprocess.run([sys.executable, "-m", "ocrfleet.cli", "run", str(word_pages), "--output",
                               str(tmp_path / "out"), "--devices", "cpu:1"], capture_output=True, text=True)
    assert busy.returncode == 2
    assert f"is in use by pid {os.getpid()}" in busy.stderr and "the first run" in busy.stderr


def test_a_shard_that_keeps_failing_fails_the_flow_after_writing_the_summary(prefect_api, word_pages, tmp_path):
    with pytest.raises(RunInvalid, match="ran past shard_timeout_s"):
        run([word_pages / "alpha.png"], tmp_path / "out", devices="cpu:1", shard_timeout_s=0.5, shard_retries=0)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert any("ran past shard_timeout_s" in problem for problem in summary["problems"])
    assert any("no done marker" in problem for problem in summary["problems"])
