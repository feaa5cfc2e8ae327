"""Allowed roots: a run outside the worker machine's allowed roots is refused before any file is created."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ocrfleet.cli import main
from ocrfleet.config import load_config
from ocrfleet.policy import Policy, PolicyError, check_run, load_policy
from ocrfleet.records import PageRef, PageRecord
from tests.pages import draw_page


@pytest.fixture
def site(tmp_path, monkeypatch):
    """An allowed input root with a page, an allowed output root, and a secret page outside both."""
    scans, results, elsewhere = tmp_path / "scans", tmp_path / "results", tmp_path / "elsewhere"
    draw_page(scans / "a.png", ["Allowed page"], size=(300, 100))
    draw_page(elsewhere / "secret.png", ["Secret page"], size=(300, 100))
    results.mkdir()
    monkeypatch.setenv("OCRFLEET_ALLOWED_INPUT_ROOTS", str(scans))
    monkeypatch.setenv("OCRFLEET_ALLOWED_OUTPUT_ROOTS", str(results))
    monkeypatch.setenv("OCRFLEET_ALLOWED_PUBLISH_PREFIXES", f"s3://shared/ocr,{results / 'published'}")
    monkeypatch.delenv("OCRFLEET_POLICY_FILE", raising=False)
    return tmp_path


def _inputs_escaping(site: Path, how: str) -> str:
    scans = site / "scans"
    if how == "direct":
        return str(site / "elsewhere" / "secret.png")
    if how == "manifest row with ..":
        (scans / "list.txt").write_text("a.png\n../elsewhere/secret.png\n")
        return str(scans / "list.txt")
    if how == "symlinked file":
        (scans / "innocent.png").symlink_to(site / "elsewhere" / "secret.png")
        return str(scans)
    (scans / "more").symlink_to(site / "elsewhere", target_is_directory=True)
    return str(scans / "more" / "*.png")


@pytest.mark.parametrize("how", ["direct", "manifest row with ..", "symlinked file", "glob through a symlinked dir"])
def test_an_input_outside_the_allowed_roots_is_refused_before_any_file_is_created(site, how, capsys):
    out = site / "results" / "run"
    assert main(["run", _inputs_escaping(site, how), "-o", str(out), "--devices", "cpu"]) == 2
    assert "allowed_input_roots" in capsys.readouterr().err
    assert not out.exists()


def test_an_output_dir_outside_the_allowed_roots_is_refused(site, capsys):
    out = site / "elsewhere" / "run"
    assert main(["run", str(site / "scans"), "-o", str(out), "--devices", "cpu"]) == 2
    assert "allowed_output_roots" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("target", ["s3://shared/ocr/../other-team", "s3://shared/ocr-other", "{site}/elsewhere/pub",
                                    "{site}/results/published/../../elsewhere"])
def test_a_publish_target_outside_the_allowed_prefixes_is_refused(site, target, capsys):
    out = site / "results" / "run"
    argv = ["run", str(site / "scans"), "-o", str(out), "--devices", "cpu", "--publish-to", target.format(site=site)]
    assert main(argv) == 2
    assert "allowed_publish_prefixes" in capsys.readouterr().err
    assert not out.exists()


def test_plan_is_refused_too_and_runs_inside_the_roots(site, capsys):
    assert main(["plan", str(site / "elsewhere"), "-o", str(site / "results" / "r"), "--devices", "cpu"]) == 2
    assert main(["plan", str(site / "scans"), "-o", str(site / "results" / "r"), "--devices", "cpu",
                 "--publish-to", "s3://shared/ocr/run1"]) == 0
    assert "1 page," in capsys.readouterr().out


def test_the_flow_refuses_a_run_outside_the_roots_before_creating_its_run_dir(site, prefect_api):
    from ocrfleet.flows.ocr_flow import ocr_run

    out = site / "results" / "run"
    config = load_config(None, inputs=[str(site / "elsewhere")], output_dir=str(out), devices="cpu")
    state = ocr_run(config=config, return_state=True)
    assert state.is_failed()
    assert isinstance(state.result(raise_on_failure=False), PolicyError)
    assert not out.exists()


def test_the_corpus_flow_refuses_a_corpus_outside_the_roots_before_creating_its_dir(site, prefect_api):
    from ocrfleet.corpus import CorpusConfig
    from ocrfleet.flows.corpus_flow import corpus_run

    out = site / "results" / "corpus"
    config = CorpusConfig.model_validate({"job": {"inputs": [str(site / "scans")], "output_dir": str(out),
                                                  "publish_to": "s3://other-team/ocr"}, "chunks": 2})
    state = corpus_run(config=config, return_state=True)
    assert state.is_failed()
    assert "allowed_publish_prefixes" in str(state.result(raise_on_failure=False))
    assert not out.exists()


def test_reprocessing_checks_the_earlier_run_and_every_failed_page_it_would_redo(site):
    earlier = site / "elsewhere" / "earlier"
    earlier.mkdir()
    secret = PageRef(source=str(site / "elsewhere" / "secret.png"), page=0)
    record = PageRecord.failed(secret, "WorkerCrashed", "died", shard=0, device="cpu", settings="s")
    (earlier / "failures.jsonl").write_text(record.model_dump_json() + "\n")
    config = load_config(None, output_dir=str(site / "results" / "redo"), derived_from=str(earlier), only_failed=True)
    with pytest.raises(PolicyError, match="derived_from .* allowed_input_roots"):  # neither an input nor output root
        check_run(config)
    moved = site / "results" / "earlier"  # an earlier run in an allowed output root may be read back
    earlier.rename(moved)
    config = config.model_copy(update={"derived_from": moved})
    with pytest.raises(PolicyError, match=f"a page source {secret.source} is outside"):
        check_run(config)


def test_unset_settings_check_nothing(tmp_path, monkeypatch):
    for name in ("INPUT_ROOTS", "OUTPUT_ROOTS", "PUBLISH_PREFIXES"):
        monkeypatch.delenv(f"OCRFLEET_ALLOWED_{name}", raising=False)
    monkeypatch.delenv("OCRFLEET_POLICY_FILE", raising=False)
    draw_page(tmp_path / "anywhere" / "a.png", ["Anything"], size=(300, 100))
    config = load_config(None, inputs=[str(tmp_path / "anywhere")], output_dir=str(tmp_path / "o"),
                         publish_to="s3://any/where")
    assert check_run(config).unset() == ["allowed_input_roots", "allowed_output_roots", "allowed_publish_prefixes"]


def test_the_policy_file_is_read_and_each_variable_overrides_its_key(tmp_path):
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(json.dumps({"allowed_input_roots": ["/data/scans"], "allowed_output_roots": ["/data/ocr"],
                                       "allowed_publish_prefixes": []}))
    policy = load_policy({"OCRFLEET_POLICY_FILE": str(policy_file),
                          "OCRFLEET_ALLOWED_INPUT_ROOTS": "s3://scans/in:/nfs/scans,gs://b"})
    assert policy == Policy(allowed_input_roots=("s3://scans/in", "/nfs/scans", "gs://b"),
                            allowed_output_roots=("/data/ocr",), allowed_publish_prefixes=())
    config = load_config(None, inputs=["s3://scans/in/x.png"], output_dir="/data/ocr/r", publish_to="/data/ocr/p")
    with pytest.raises(PolicyError, match=r"publish_to /data/ocr/p is outside .* allowed_publish_prefixes \(nothing\)"):
        check_run(config, policy)


def test_the_check_never_takes_the_runs_own_output_as_input(site):
    scans = site / "scans"
    vis = scans / "out" / "vis"
    vis.mkdir(parents=True)
    (vis / "link.png").symlink_to(site / "elsewhere" / "secret.png")  # what an earlier run's output might hold
    config = load_config(None, inputs=[str(scans)], output_dir=str(scans / "out"), devices="cpu:1")
    check_run(config, load_policy({"OCRFLEET_ALLOWED_INPUT_ROOTS": str(scans)}))  # the run never reads out/


def test_a_check_the_cli_made_for_its_flow_is_reused_once_and_only_then(site):
    scans = site / "scans"
    config = load_config(None, inputs=[str(scans)], output_dir=str(site / "results" / "run"), devices="cpu:1")
    policy = load_policy({"OCRFLEET_ALLOWED_INPUT_ROOTS": str(scans)})
    check_run(config, policy, before_flow=True)
    (scans / "innocent.png").symlink_to(site / "elsewhere" / "secret.png")
    check_run(config, policy)  # the flow the CLI starts a moment later: answered by the CLI's check
    with pytest.raises(PolicyError, match="a page source"):
        check_run(config, policy)  # any later check is made in full
