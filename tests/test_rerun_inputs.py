"""Reruns over awkward inputs: the run's own output dir inside the input folder, broken symlinks, reused records."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from ocrfleet.config import load_config
from ocrfleet.inputs.listing import InputError
from ocrfleet.plan.ledger import reusable
from ocrfleet.plan.planning import make_plan, prepare_run
from ocrfleet.records import Page, PageRecord, RecordIdentity, read_jsonl
from ocrfleet.reduce.summary import reduce_run, up_to_date
from ocrfleet.run.worker import run_shard
from tests.faulty_worker import FaultyEngine


def blank(path: Path, width: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, 20), "white").save(path)
    return path


def run(config) -> None:
    plan = prepare_run(config)
    for spec in plan.shards:
        run_shard(Path(config.output_dir), spec.shard, engine_factory=FaultyEngine)
    reduce_run(Path(config.output_dir))


def test_a_run_never_reads_its_own_output_dir_inside_the_input_folder(tmp_path, caplog):
    folder = tmp_path / "in"
    blank(folder / "a.png")
    out = folder / "ocr"
    blank(out / "vis" / "a.png.png")  # as `vis` output leaves it
    blank(out / "deep" / "b.png")
    for inputs in ([str(folder)], [str(folder / "**" / "*.png")]):
        config = load_config(None, inputs=inputs, output_dir=str(out), devices="cpu:1")
        with caplog.at_level(logging.INFO, logger="ocrfleet.inputs.locations"):
            plan = make_plan(config).plan
        assert plan.pages_total == 1, inputs
        assert "left out of the inputs: it is this run's own output dir" in caplog.text


def test_broken_symlinks_fail_once_and_a_rerun_reuses_them_until_the_link_changes(tmp_path):
    folder = tmp_path / "in"
    blank(folder / "a.png")
    (folder / "dangling.png").symlink_to(tmp_path / "gone.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    config = load_config(None, inputs=[str(folder)], output_dir=str(tmp_path / "out"), devices="cpu:1")
    run(config)
    records = {Path(r.source).name: r for r in read_jsonl(tmp_path / "out" / "results.jsonl", PageRecord)}
    assert {name: r.error_class for name, r in records.items()} == {
        "a.png": None, "dangling.png": "FileVanished", "loop.png": "SymlinkLoop"}
    assert make_plan(config).plan.pages_skipped == 3 and up_to_date(config) is not None  # nothing to do
    (folder / "dangling.png").unlink()
    blank(tmp_path / "gone.png")
    (folder / "dangling.png").symlink_to(tmp_path / "gone.png")  # repaired: redone
    planned = make_plan(config)
    assert [Path(page.source).name for pages in planned.shard_pages for page in pages] == ["dangling.png"]


def test_an_input_folder_inside_the_output_dir_is_refused_saying_so(tmp_path):
    blank(tmp_path / "out" / "scans" / "a.png")
    config = load_config(None, inputs=[str(tmp_path / "out" / "scans")], output_dir=str(tmp_path / "out"),
                         devices="cpu:1")
    with pytest.raises(InputError, match="scans: this run's output dir, or inside it"):
        make_plan(config)


def test_a_file_that_vanished_for_a_while_is_tried_again_unlike_a_dangling_link(tmp_path):
    back = blank(tmp_path / "back.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    for path, reused in ((back, False), (tmp_path / "dangling.png", True)):
        found = os.lstat(path)
        page = Page(str(path), 0, 1.0, found.st_size, found.st_mtime_ns)
        record = RecordIdentity(source=str(path), page=0, status="failed", error_class="FileVanished",
                                size=found.st_size, mtime_ns=found.st_mtime_ns, settings="s")
        assert reusable(record, page, "s", lambda source: None) is reused, path
