"""The run dir: a run writes only into a folder it owns, removes only files it wrote, and a run refused before it
starts leaves nothing on disk."""

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from ocrfleet.cli import main
from ocrfleet.config import ConfigError, load_config
from ocrfleet.plan.planning import prepare_run
from ocrfleet.reduce.summary import reduce_run
from ocrfleet.run.lock import hold_run_dir
from ocrfleet.run.rundir import MARKER, RunDirRefused
from ocrfleet.run.worker import run_shard
from tests.faulty_worker import FaultyEngine


def blank_pages(folder: Path, widths) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for width in widths:
        Image.new("RGB", (width, 20), "white").save(folder / f"w{width}.png")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def run_fake(out: Path, config) -> None:
    """A whole run with the fake engine, holding the run dir as the flow does."""
    with hold_run_dir(out):
        plan = prepare_run(config)
        for spec in plan.shards:
            run_shard(out, spec.shard, engine_factory=FaultyEngine)
        reduce_run(out)


def test_a_non_empty_folder_that_is_not_a_run_dir_is_refused_and_left_untouched(tmp_path, capsys):
    inputs = blank_pages(tmp_path / "in", [100])
    mine = tmp_path / "mine"
    for name in ("notes.txt", "records/ledger.csv", "reports/q3.xlsx", "text/draft.txt"):
        (mine / name).parent.mkdir(parents=True, exist_ok=True)
        (mine / name).write_text(name)
    before = snapshot(mine)
    assert main(["run", str(inputs), "--output", str(mine), "--devices", "cpu:1"]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "not an ocrfleet run dir" in err
    assert snapshot(mine) == before and sorted(os.listdir(mine)) == ["notes.txt", "records", "reports", "text"]
    with pytest.raises(RunDirRefused, match="not an ocrfleet run dir"):
        with hold_run_dir(mine):
            pass
    assert snapshot(mine) == before


def test_the_refusal_names_the_folder_and_says_what_to_do(tmp_path, capsys):
    inputs = blank_pages(tmp_path / "in", [100])
    scans = blank_pages(tmp_path / "scans", [101])  # a folder of the user's, not this run's input
    assert main(["run", str(inputs), "--output", str(scans), "--devices", "cpu:1"]) == 2
    err = capsys.readouterr().err
    assert f"{scans}: not empty (w101.png) and not an ocrfleet run dir" in err and "another --output" in err
    assert os.listdir(scans) == ["w101.png"]


def test_an_empty_output_path_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(blank_pages(tmp_path / "cwd", []))
    with pytest.raises(SystemExit) as exited:
        main(["run", str(blank_pages(tmp_path / "in", [100])), "--output", "", "--devices", "cpu:1"])
    assert exited.value.code == 2 and "--output" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="output_dir is empty"):
        load_config(None, inputs=["x.png"], output_dir="")
    assert os.listdir(tmp_path / "cwd") == []


def test_a_missing_parent_is_refused_and_not_created(tmp_path, capsys):
    inputs = blank_pages(tmp_path / "in", [100])
    out = tmp_path / "data" / "ocr" / "nightly"
    assert main(["run", str(inputs), "--output", str(out), "--devices", "cpu:1"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_a_cli_run_refused_for_its_inputs_creates_nothing(tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "no-such-folder"), "--output", str(out), "--devices", "cpu:1"]) == 2
    assert not out.exists()


def test_an_empty_or_new_folder_becomes_a_marked_run_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "empty", tmp_path / "new"):
        with hold_run_dir(folder):
            assert json.loads((folder / MARKER).read_text())["ocrfleet_run_dir"] == 1
        with hold_run_dir(folder):  # marked: taken again, however full it is now
            (folder / "results.jsonl").write_text("")


def test_a_run_dir_of_an_earlier_version_is_adopted(tmp_path):
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "summary.json").write_text("{}")
    (earlier / "results.jsonl").write_text("")
    with hold_run_dir(earlier):
        pass
    assert (earlier / MARKER).is_file()


def test_a_rerun_removes_only_files_the_run_wrote(tmp_path):
    inputs = blank_pages(tmp_path / "in", [100, 101, 102])
    out = tmp_path / "out"
    config = load_config(None, inputs=[str(inputs)], output_dir=str(out), devices="cpu:2", outputs=["text"])
    run_fake(out, config)
    theirs = {"notes.txt": b"mine", "records/ledger.csv": b"1,2", "records/scan.jsonl": b"{}",
              "reports/q3.xlsx": b"xlsx", "shards/readme": b"hi", "done/keep": b"", "text/notes.txt": b"mine too",
              "records/w9.png": b"png"}
    for name, data in theirs.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    own_text = {path.name for path in (out / "text").rglob("*.txt")} - {"notes.txt"}
    assert own_text == {"w100.png.txt", "w101.png.txt", "w102.png.txt"}

    (inputs / "w101.png").unlink()  # its text is stale now: the run wrote it, the run removes it
    blank_pages(inputs, [103])  # a new page: a new plan replaces the previous one's shards and records
    run_fake(out, config)
    for name, data in theirs.items():
        assert (out / name).read_bytes() == data, name
    own_text = {path.name for path in (out / "text").rglob("*.txt")} - {"notes.txt"}
    assert own_text == {"w100.png.txt", "w102.png.txt", "w103.png.txt"}
    assert sorted(path.name for path in (out / "records").iterdir()) == ["00000.jsonl", "ledger.csv", "scan.jsonl",
                                                                           "w9.png"]


def test_a_flow_run_refused_for_its_inputs_creates_nothing(prefect_api, tmp_path):
    from ocrfleet.flows.ocr_flow import ocr_run
    from ocrfleet.inputs.listing import InputError

    empty = tmp_path / "scans"
    empty.mkdir()
    out = tmp_path / "out"
    config = load_config(None, inputs=[str(empty)], output_dir=str(out), devices="cpu:1")
    state = ocr_run(config=config, return_state=True)
    assert state.is_failed() and isinstance(state.result(raise_on_failure=False), InputError)
    assert not out.exists()
    refused = load_config(None, inputs=[str(empty)], output_dir=str(tmp_path / "a" / "b"), devices="cpu:1")
    state = ocr_run(config=refused, return_state=True)
    assert isinstance(state.result(raise_on_failure=False), RunDirRefused)
    assert not (tmp_path / "a").exists()


def test_a_corpus_flow_refused_for_its_inputs_creates_nothing(prefect_api, tmp_path):
    from ocrfleet.corpus import CorpusConfig
    from ocrfleet.flows.corpus_flow import corpus_run
    from ocrfleet.inputs.listing import InputError

    empty = tmp_path / "scans"
    empty.mkdir()
    config = CorpusConfig.model_validate({"job": {"inputs": [str(empty)], "output_dir": str(tmp_path / "corpus")},
                                          "chunks": 2})
    state = corpus_run(config=config, return_state=True)
    assert state.is_failed() and isinstance(state.result(raise_on_failure=False), InputError)
    assert sorted(os.listdir(tmp_path)) == ["scans"]
