"""Outputs: PaddleOCR-layout page JSON, Parquet, text per document and box pictures, deterministic and atomic."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ocrfleet.reduce.outputs import OWN_FILES, mirrored, paddleocr_result, write_outputs
from ocrfleet.records import PageRecord, TextLine
from tests.test_pages import write_pdf

BOX = ((10.0, 12.0), (90.0, 12.0), (90.0, 30.0), (10.0, 30.0))


def line(text: str, score: float = 0.9, shift: float = 0.0) -> TextLine:
    return TextLine(text=text, score=score, box=tuple((x, y + shift) for x, y in BOX))


def ok(source: Path | str, page: int, *texts: str) -> PageRecord:
    lines = tuple(line(text, 0.5 + 0.1 * n, 30.0 * n) for n, text in enumerate(texts))
    return PageRecord(source=str(source), page=page, status="ok", text="\n".join(texts), lines=lines,
                      shard=0, device="cpu")


def failed(source: Path | str, page: int) -> PageRecord:
    return PageRecord(source=str(source), page=page, status="failed", error_class="Truncated", error="cut short", shard=1,
                      device="cpu")


@pytest.fixture
def records(tmp_path) -> list[PageRecord]:
    docs = tmp_path / "docs"
    return [ok(docs / "a" / "scan.pdf", 0, "Invoice 4821", "Harbor Freight"), failed(docs / "a" / "scan.pdf", 1),
            ok(docs / "a" / "scan.pdf", 2, "Über naïve 文字"), ok(docs / "b" / "scan.pdf", 0, "other folder"),
            ok(docs / "empty.png", 0)]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_page_json_is_byte_identical_to_what_paddleocr_saves_for_the_same_result(tmp_path, records):
    from paddlex.inference.pipelines.ocr.result import OCRResult

    write_outputs(tmp_path / "run", records, ["pages"])
    for record in [records[0], records[4]]:
        ours = (tmp_path / "run" / "pages" / mirrored(record.source, f".p{record.page:05d}.json")).read_bytes()
        polys = [np.array(line.box, dtype=np.int16) for line in record.lines]
        theirs = OCRResult({**paddleocr_result(record), "dt_polys": polys, "rec_polys": polys,
                            "rec_scores": np.array([line.score for line in record.lines], dtype=np.float64),
                            "rec_boxes": np.array([[p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()]
                                                   for p in polys], dtype=np.int16).reshape(-1, 4),
                            "textline_orientation_angles": np.array([-1] * len(polys))})
        theirs.save_to_json(str(tmp_path / "theirs.json"))
        assert ours == (tmp_path / "theirs.json").read_bytes()


def test_page_json_reads_back_with_paddleocrs_keys_one_file_per_ok_page(tmp_path, records):
    folder = write_outputs(tmp_path / "run", records, ["pages"])["pages"]
    found = {path.name: json.loads(path.read_text(encoding="utf-8")) for path in folder.rglob("*.json")}
    assert len(list(folder.rglob("*.json"))) == 4  # same-named scan.pdf in two folders, no failed page
    first = json.loads((folder / mirrored(records[0].source, ".p00000.json")).read_text(encoding="utf-8"))
    assert first["input_path"] == records[0].source and first["page_index"] == 0
    assert first["rec_texts"] == ["Invoice 4821", "Harbor Freight"]
    assert first["rec_scores"] == [0.5, 0.6]
    assert first["rec_polys"][0] == [[10, 12], [90, 12], [90, 30], [10, 30]]
    assert first["rec_boxes"][1] == [10, 42, 90, 60]
    assert found["empty.png.p00000.json"]["page_index"] is None and found["empty.png.p00000.json"]["rec_texts"] == []


def test_parquet_has_one_row_per_page_with_nested_lines_readable_by_pyarrow_and_pandas(tmp_path, records):
    path = write_outputs(tmp_path / "run", records, ["parquet"])["parquet"]
    table = pq.read_table(path)
    assert table.column("source").to_pylist() == [record.source for record in records]
    frame = pd.read_parquet(path)
    assert frame["page"].tolist() == [0, 1, 2, 0, 0]
    assert frame["status"].tolist() == ["ok", "failed", "ok", "ok", "ok"]
    assert frame["n_lines"].tolist() == [2, 0, 1, 1, 0]
    assert pd.isna(frame["error_class"][0]) and frame["error_class"][1] == "Truncated"
    assert frame["mean_score"][0] == pytest.approx(0.55) and pd.isna(frame["mean_score"][1])
    lines = table.column("lines").to_pylist()[0]
    assert [item["text"] for item in lines] == ["Invoice 4821", "Harbor Freight"]
    assert lines[1]["box"] == [[10.0, 42.0], [90.0, 42.0], [90.0, 60.0], [10.0, 60.0]]


def test_text_per_document_joins_pages_with_form_feeds_and_keeps_failed_pages_empty(tmp_path, records):
    folder = write_outputs(tmp_path / "run", records, ["text"])["text"]
    text = (folder / mirrored(records[0].source, ".txt")).read_text(encoding="utf-8")
    assert text.split("\f") == ["Invoice 4821\nHarbor Freight", "", "Über naïve 文字\n"]
    assert (folder / mirrored(records[3].source, ".txt")).read_text(encoding="utf-8") == "other folder\n"
    assert len(list(folder.rglob("*.txt"))) == 3


def test_the_same_records_give_byte_identical_outputs(tmp_path, records):
    for run in ("one", "two"):
        write_outputs(tmp_path / run, records, ["pages", "parquet", "text"])
    assert tree(tmp_path / "one") == tree(tmp_path / "two")
    before = {path: path.stat().st_mtime_ns for path in (tmp_path / "one").rglob("*") if path.is_file()}
    write_outputs(tmp_path / "one", records, ["pages", "parquet", "text"])
    after = {path: path.stat().st_mtime_ns for path in (tmp_path / "one").rglob("*") if path.is_file()}
    assert {p: t for p, t in after.items() if p.suffix != ".parquet"} == {p: t for p, t in before.items()
                                                                          if p.suffix != ".parquet"}


def test_a_rewrite_removes_files_of_pages_no_longer_present_and_leaves_no_temporaries(tmp_path, records):
    write_outputs(tmp_path / "run", records, ["pages", "text"])
    write_outputs(tmp_path / "run", records[:1], ["pages", "text"])
    assert sorted(tree(tmp_path / "run")) == sorted([
        os.path.join("pages", str(mirrored(records[0].source, ".p00000.json"))), os.path.join("pages", OWN_FILES),
        os.path.join("text", str(mirrored(records[0].source, ".txt"))), os.path.join("text", OWN_FILES)])


def test_odd_and_very_long_source_names_get_unique_legal_output_names(tmp_path):
    long_a, long_b = "x" * 240 + "a.png", "x" * 240 + "b.png"
    records = [ok(tmp_path / name, 0, "t") for name in (long_a, long_b, "new\nline $(x).png", "-dash.png")]
    folder = write_outputs(tmp_path / "run", records, ["pages"])["pages"]
    assert len(list(folder.rglob("*.json"))) == 4
    assert all(len(path.name.encode()) <= 255 for path in folder.rglob("*"))


def test_vis_draws_the_boxes_of_a_sample_of_ok_pages(tmp_path):
    pdf = write_pdf(tmp_path / "doc.pdf", [["one"], ["two"], ["three"]], size=(144, 72))
    records = [ok(pdf, page, "x") for page in range(3)] + [ok(tmp_path / "gone.png", 0, "y")]
    folder = write_outputs(tmp_path / "run", records, ["vis"], dpi=72, vis_sample=2)["vis"]
    pictures = sorted(folder.rglob("*.png"))
    assert [path.name for path in pictures] == ["doc.pdf.p00000.png", "doc.pdf.p00001.png"]
    pixels = np.asarray(Image.open(pictures[0]))
    assert pixels.shape == (72, 144, 3) and tuple(pixels[12, 50]) == (230, 30, 30)  # on the box's top edge


def test_an_unknown_output_kind_is_refused(tmp_path, records):
    with pytest.raises(ValueError, match="unknown outputs"):
        write_outputs(tmp_path, records, ["pdf"])
