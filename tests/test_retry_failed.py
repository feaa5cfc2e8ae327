"""Retrying the failed pages of a run in place: ok records kept as they are, failed ones done again, results.jsonl
updated with every page once, and summary.json saying what was retried."""

import json
import subprocess
import sys

from ocrfleet.config import load_config
from ocrfleet.plan.planning import prepare_run
from ocrfleet.records import PageRecord, read_jsonl
from tests.test_resilience import blank_pages, faulty, run_all  # noqa: F401 (faulty is a fixture)


def results(out):
    return {record.source: record for record in read_jsonl(out / "results.jsonl", PageRecord)}


def test_retrying_failed_pages_updates_results_in_place_with_every_page_once(word_pages, tmp_path):
    broken = tmp_path / "in" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"not yet a picture")
    out = tmp_path / "out"
    cli = [sys.executable, "-m", "ocrfleet.cli", "run", str(word_pages / "alpha.png"), str(word_pages / "gamma.jpg"),
           str(broken), "--devices", "cpu:1", "--output", str(out), "--max-failure-rate", "0.5"]
    first = subprocess.run(cli, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    before = (out / "results.jsonl").read_text().splitlines()
    assert results(out)[str(broken)].status == "failed"

    broken.write_bytes((word_pages / "beta.png").read_bytes())  # fixed upstream
    again = subprocess.run(cli + ["--retry-failed"], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    lines = (out / "results.jsonl").read_text().splitlines()
    records = [PageRecord.model_validate_json(line) for line in lines]
    assert sorted(record.source for record in records) == sorted(
        [str(word_pages / "alpha.png"), str(word_pages / "gamma.jpg"), str(broken)])  # every page once
    assert [line for line in lines if str(broken) not in line] == [line for line in before if str(broken) not in line]
    assert results(out)[str(broken)].status == "ok" and "Dock" in results(out)[str(broken)].text
    assert (out / "failures.jsonl").read_text() == ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["retried"] == {"pages": 1, "still_failed": 0, "earlier_records": str(out / "retried" / "00001.jsonl")}
    assert summary["pages_ok"] == 3 and summary["pages_skipped"] == 2
    [history] = read_jsonl(out / "retried" / "00001.jsonl", PageRecord)  # the failure it replaced is kept
    assert history.source == str(broken) and history.error_class == "NotAnImage"
    assert "retried 1 failed page: 1 now ok, 0 still failed" in again.stdout


def test_pages_that_still_fail_after_a_retry_are_named_in_the_verdict(faulty, tmp_path):
    faulty()
    pages = blank_pages(tmp_path / "in", range(100, 104))
    for name in ("bad-1.png", "bad-2.png"):
        (pages / name).write_bytes(b"not a png")
    out = tmp_path / "out"
    config = load_config(None, inputs=[str(pages)], output_dir=str(out), devices="cpu:1", max_failure_rate=0.5)
    first = run_all(out, prepare_run(config))
    assert first.pages_failed == 2 and first.retried is None
    (pages / "bad-1.png").write_bytes((pages / "w100.png").read_bytes())
    plan = prepare_run(config.model_copy(update={"retry_failed": True}))
    assert (plan.pages_skipped, plan.pages_retried, sum(spec.pages for spec in plan.shards)) == (4, 2, 2)
    summary = run_all(out, plan)
    assert (summary.pages_ok, summary.pages_failed, summary.valid) == (5, 1, True)
    assert (summary.retried.pages, summary.retried.still_failed) == (2, 1)
    assert "retried 2 failed pages: 1 now ok, 1 still failed" in summary.verdict()
    assert sorted(r.source.rsplit("/", 1)[1] for r in read_jsonl(out / "results.jsonl", PageRecord)) == \
        ["bad-1.png", "bad-2.png", "w100.png", "w101.png", "w102.png", "w103.png"]


def test_after_a_retry_the_plain_command_has_nothing_to_do_and_a_finished_retry_counts_as_finished(faulty, tmp_path):
    from ocrfleet.reduce.summary import finished, up_to_date

    faulty()
    pages = blank_pages(tmp_path / "in", range(100, 103))
    (pages / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    config = load_config(None, inputs=[str(pages)], output_dir=str(out), devices="cpu:1", max_failure_rate=0.5)
    run_all(out, prepare_run(config))
    retry = config.model_copy(update={"retry_failed": True})
    summary = run_all(out, prepare_run(retry))
    assert summary.retried.still_failed == 1
    # retry_failed is a request, not a setting of the run dir: without it, the rerun finds nothing to do...
    assert up_to_date(config) is not None
    # ...and a retry whose page still fails has finished (a lost API server judges it by its files).
    assert up_to_date(retry) is None and finished(retry) is not None
