"""The CLI checks inputs, output and devices before any flow starts, and says what and where in one line."""

from __future__ import annotations

import sys
import types

import pytest
from PIL import Image

from ocrfleet import cli
from ocrfleet.plan.devices import DeviceError, parse_devices
from tests.test_pages import write_pdf


class FlowStarted(Exception):
    pass


@pytest.fixture
def flow(monkeypatch):
    """`ocrfleet.flows.ocr_flow` replaced: a run that gets past the CLI's checks raises FlowStarted."""
    def ocr_run(**kwargs):
        raise FlowStarted(kwargs["config"])

    monkeypatch.setitem(sys.modules, "ocrfleet.flows.ocr_flow", types.SimpleNamespace(ocr_run=ocr_run))


def run(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["run", *args, "--devices", "cpu:1"])
    return code, capsys.readouterr().err


def test_a_page_range_input_is_run_as_plan_takes_it(tmp_path, flow):
    pdf = write_pdf(tmp_path / "doc.pdf", [["a"], ["b"]], size=(72, 72))
    with pytest.raises(FlowStarted):
        cli.main(["run", f"{pdf}[1]", "--output", str(tmp_path / "out"), "--devices", "cpu:1"])


@pytest.mark.parametrize("make, message", [
    (lambda folder: folder, "no images found in"),
    (lambda folder: folder.joinpath("m.txt").write_text("a.png\ngone.png\n") and folder / "m.txt",
     "m.txt:2: gone.png: no such file"),
    (lambda folder: folder.joinpath("m.csv").write_text("name\na.png\n") and folder / "m.csv", "no 'path' column"),
])
def test_empty_folders_and_bad_manifests_exit_2_before_a_flow_starts(tmp_path, flow, capsys, make, message):
    folder = tmp_path / "in"
    folder.mkdir()
    if "m.txt" in message:
        Image.new("RGB", (30, 20), "white").save(folder / "a.png")
    code, err = run(capsys, str(make(folder)), "--output", str(tmp_path / "out"))
    assert code == 2 and message in err and "Traceback" not in err


def test_an_output_path_that_is_a_file_is_named_with_what_is_wrong(tmp_path, flow, capsys):
    Image.new("RGB", (30, 20), "white").save(tmp_path / "a.png")
    (tmp_path / "taken").write_text("a file")
    code, err = run(capsys, str(tmp_path / "a.png"), "--output", str(tmp_path / "taken"))
    assert code == 2 and str(tmp_path / "taken") in err and "[Errno" not in err and "is not a folder" in err


@pytest.mark.parametrize("spec", ["cpu:2,gpu:1", "gpu:0,cpu:2", "gpu:0,auto"])
def test_a_devices_spec_mixing_kinds_says_so(spec):
    with pytest.raises(DeviceError, match="mixes kinds of device"):
        parse_devices(spec)
