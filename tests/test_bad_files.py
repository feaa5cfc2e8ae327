"""One bad file never stops the batch: odd names, damaged documents, and names that are not files all get records."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pypdfium2 as pdfium
import pytest
from PIL import Image

from ocrfleet.config import load_config
from ocrfleet.inputs.listing import collect_pages
from ocrfleet.inputs.pages import PageError, PageReader
from ocrfleet.plan.ledger import file_sha256
from ocrfleet.plan.planning import prepare_run, read_manifest, read_plan
from ocrfleet.records import PageRecord, PageRef, read_jsonl
from ocrfleet.reduce.summary import reduce_run
from ocrfleet.run.worker import run_shard
from tests.faulty_worker import FaultyEngine
from tests.pages import draw_page
from tests.test_pages import write_encrypted_pdf, write_pdf, write_tiff

# Every class a page may fail with (the README's list); a Python exception's name is never one of them.
CLASSES = {"EmptyFile", "Truncated", "NotAnImage", "DecompressionBomb", "ImageTooSmall", "PermissionDenied",
           "FileVanished", "SymlinkLoop", "NotAFile", "EncryptedPdf", "EmptyPdf", "CorruptPdf", "PageOutOfRange",
           "UnreadableImage", "OutOfMemory", "StorageUnavailable", "ReadError"}
NON_UTF8 = os.fsdecode(b"bad\xff\xfename.png")  # as Python lists such a name: "bad\udcff\udcfename.png"
BROKEN_NON_UTF8 = os.fsdecode(b"caf\xe9.pdf")  # Latin-1, as old scanners name files


def squeeze(text: str) -> str:
    return "".join(text.split()).lower()


def run_with_fake_engine(inputs: list[str], out: Path, **settings) -> dict[str, list[PageRecord]]:
    config = load_config(None, inputs=inputs, output_dir=str(out), devices="cpu:1", max_failure_rate=1.0,
                         **settings)
    prepare_run(config)
    run_shard(out, 0, engine_factory=FaultyEngine)
    summary = reduce_run(out)
    assert summary.problems == []
    records: dict[str, list[PageRecord]] = {}
    for record in read_jsonl(out / "results.jsonl", PageRecord):
        records.setdefault(os.path.basename(record.source), []).append(record)
    return records


def test_a_name_that_is_not_utf8_round_trips_through_manifests_records_and_the_ledger(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("RGB", (140, 30), "white").save(folder / NON_UTF8)
    Image.new("RGB", (141, 30), "white").save(folder / "plain.png")
    (folder / BROKEN_NON_UTF8).write_bytes(b"%PDF-1.7 not really")
    out = tmp_path / "out"

    records = run_with_fake_engine([str(folder)], out)

    assert {name: [r.text or r.error_class for r in found] for name, found in records.items()} == {
        NON_UTF8: ["w140"], "plain.png": ["w141"], BROKEN_NON_UTF8: ["CorruptPdf"]}
    assert [page.source for page in read_manifest(out, 0)] == [
        str(folder / NON_UTF8), str(folder / BROKEN_NON_UTF8), str(folder / "plain.png")]
    [failure] = read_jsonl(out / "failures.jsonl", PageRecord)
    assert failure.source == str(folder / BROKEN_NON_UTF8) and str(folder / BROKEN_NON_UTF8) in failure.error
    record = records[NON_UTF8][0]
    assert open(record.source, "rb").read() == (folder / NON_UTF8).read_bytes()  # the name finds the file again
    line = (out / "results.jsonl").read_bytes().splitlines()[0]  # sorted by name: bad\xff... first
    assert b'bad\\udcff\\udcfename.png' in line and line.decode("ascii")  # an escape, valid UTF-8 for any reader
    assert (out / "text" / str(folder / NON_UTF8).lstrip("/")).with_name(NON_UTF8 + ".txt").read_text() == "w140\n"

    again = prepare_run(load_config(None, inputs=[str(folder)], output_dir=str(out), devices="cpu:1",
                                    max_failure_rate=1.0))
    assert (again.pages_total, again.pages_skipped) == (3, 3)  # the ledger knows each page by its name


def test_manifests_name_files_that_are_not_utf8(tmp_path):
    Image.new("RGB", (145, 30), "white").save(tmp_path / NON_UTF8)
    (tmp_path / "list.txt").write_bytes(b"bad\xff\xfename.png\n")  # as `ls > list.txt` writes it
    (tmp_path / "list.csv").write_bytes(b"path\nbad\xff\xfename.png\n")
    (tmp_path / "list.jsonl").write_text('{"path": "bad\\udcff\\udcfename.png"}\n')  # the records' own escape

    for manifest in ("list.txt", "list.csv", "list.jsonl"):
        assert [page.source for page in collect_pages([str(tmp_path / manifest)])] == [str(tmp_path / NON_UTF8)]


def test_a_plan_whose_inputs_are_not_utf8_is_written_and_read_back(tmp_path):
    image = tmp_path / NON_UTF8
    Image.new("RGB", (142, 30), "white").save(image)
    out = tmp_path / "out"
    config = load_config(None, inputs=[str(image)], output_dir=str(out), devices="cpu:1")

    prepare_run(config)

    assert read_plan(out).config.inputs == (str(image),)
    assert PageRef.model_validate_json(PageRef(source=str(image)).model_dump_json()).source == str(image)


def mutants(original: bytes, count: int, seed: int) -> list[bytes]:
    """`count` copies of `original`, each with 1 to 8 bytes overwritten at random places (seeded: the same every run)."""
    rng = random.Random(seed)
    found = []
    for _ in range(count):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        found.append(bytes(data))
    return found


def test_damaged_tiffs_and_pdfs_never_stop_planning_and_each_gets_a_record(tmp_path):
    tiff = write_tiff(tmp_path / "stack.tiff", [(12, 8), (10, 9), (9, 12)]).read_bytes()
    pdf = write_pdf(tmp_path / "doc.pdf", [["one"], ["two"]], size=(60, 40)).read_bytes()
    folder = tmp_path / "in"
    folder.mkdir()
    for number, data in enumerate(mutants(tiff, 100, seed=17)):
        (folder / f"t{number:03d}.tiff").write_bytes(data)
    for number, data in enumerate(mutants(pdf, 100, seed=18)):
        (folder / f"p{number:03d}.pdf").write_bytes(data)

    records = run_with_fake_engine([str(folder)], tmp_path / "out", max_image_pixels=100_000)

    assert len(records) == 200  # every file, however damaged, has its records
    failed = [r for found in records.values() for r in found if r.status == "failed"]
    assert {r.error_class for r in failed} <= CLASSES
    assert failed and any(r.status == "ok" for found in records.values() for r in found)


def test_a_tiff_damaged_after_its_first_frame_plans_its_readable_frames_and_fails_the_next(tmp_path):
    tiff = write_tiff(tmp_path / "stack.tiff", [(12, 8), (10, 9), (9, 12)])
    data = bytearray(tiff.read_bytes())
    second = Image.open(tiff)
    second.seek(1)
    offset = second._frame_pos[1]  # the second frame's directory: entry count, then 12-byte entries
    data[offset + 2:offset + 2 + 12 * 3] = bytes(12 * 3)  # wipe its first entries (ImageWidth among them)
    tiff.write_bytes(bytes(data))

    pages = collect_pages([str(tiff)])

    assert [page.page for page in pages] == [0, 1]
    with PageReader(dpi=100, max_pixels=10**6) as reader:
        assert reader.load(str(tiff), 0).shape == (8, 12, 3)
        with pytest.raises(PageError) as caught:
            reader.load(str(tiff), 1)
    assert caught.value.error_class == "UnreadableImage"


def test_a_fifo_and_a_link_to_a_device_are_not_files_and_never_block(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / "pipe.png")  # no writer: opening it to read would block for ever
    (folder / "zero.png").symlink_to("/dev/zero")  # reading it would never end
    Image.new("RGB", (143, 30), "white").save(folder / "fine.png")
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(records=run_with_fake_engine([str(folder)],
                                                                                         tmp_path / "out")),
                              daemon=True)
    worker.start()
    worker.join(120)  # a bound on a hang, not a timing: the run takes well under a second

    assert not worker.is_alive(), "a FIFO or /dev/zero blocked the run"
    assert {name: found[0].error_class for name, found in result["records"].items()} == {
        "pipe.png": "NotAFile", "zero.png": "NotAFile", "fine.png": None}
    assert file_sha256(str(folder / "pipe.png")) is None and file_sha256(str(folder / "zero.png")) is None


def test_a_folder_named_like_an_image_gets_a_record_when_it_holds_none(tmp_path):
    folder = tmp_path / "in"
    (folder / "empty.png").mkdir(parents=True)
    (folder / "album.tif").mkdir()
    Image.new("RGB", (144, 30), "white").save(folder / "album.tif" / "inside.png")
    (tmp_path / "list.txt").write_text(f"{folder / 'album.tif'}\n")

    records = run_with_fake_engine([str(folder)], tmp_path / "out")
    named = run_with_fake_engine([str(tmp_path / "list.txt")], tmp_path / "out-manifest")

    assert {name: found[0].error_class for name, found in records.items()} == {"empty.png": "NotAFile",
                                                                               "inside.png": None}
    assert {name: found[0].error_class for name, found in named.items()} == {"album.tif": "NotAFile"}


def test_a_pdf_without_pages_is_empty_whatever_failed_before_it(tmp_path):
    locked = write_encrypted_pdf(tmp_path / "locked.pdf")
    empty = tmp_path / "empty.pdf"
    document = pdfium.PdfDocument.new()
    buffer = io.BytesIO()
    document.save(buffer)
    empty.write_bytes(buffer.getvalue())

    classes = []
    with PageReader(dpi=100, max_pixels=10**6) as reader:
        for source in (locked, empty, locked, empty):
            with pytest.raises(PageError) as caught:
                reader.load(str(source), 0)
            classes.append(caught.value.error_class)

    assert classes == ["EncryptedPdf", "EmptyPdf", "EncryptedPdf", "EmptyPdf"]


def test_the_cli_reads_a_file_whose_name_is_not_utf8_with_real_paddleocr_into_every_output(tmp_path):
    folder = tmp_path / "in"
    draw_page(folder / NON_UTF8, ["Invoice 4821", "Harbor Freight"], size=(700, 220), font_px=36)
    out = tmp_path / "out"
    (tmp_path / "outputs.yaml").write_text("outputs: [pages, parquet, text, vis]\n")
    cli = [sys.executable, "-m", "ocrfleet.cli", "run", str(folder), "--output", str(out), "--devices", "cpu:1",
           "--config", str(tmp_path / "outputs.yaml")]

    first = subprocess.run(cli, capture_output=True, text=True)
    second = subprocess.run(cli, capture_output=True, text=True)

    assert first.returncode == 0, first.stderr[-3000:]
    [record] = read_jsonl(out / "results.jsonl", PageRecord)
    assert record.source == str(folder / NON_UTF8) and record.status == "ok"
    assert "invoice4821" in squeeze(record.text) and "harborfreight" in squeeze(record.text)
    mirrored = Path(str(folder / NON_UTF8).lstrip("/"))
    assert squeeze((out / "text" / mirrored.with_name(NON_UTF8 + ".txt")).read_text()) == squeeze(record.text)
    page_json = json.loads((out / "pages" / mirrored.with_name(NON_UTF8 + ".p00000.json")).read_text())
    assert page_json["input_path"] == record.source  # the same escape as in results.jsonl
    assert Image.open(out / "vis" / mirrored.with_name(NON_UTF8 + ".p00000.png")).size == (700, 220)
    parquet = pq.read_table(out / "results.parquet").to_pylist()
    assert [row["source"] for row in parquet] == [str(folder / "bad\\xff\\xfename.png")]
    assert second.returncode == 0 and "nothing to do: the 1 page is done already" in second.stdout, second.stderr

    named = subprocess.run(cli[:4] + [str(folder / NON_UTF8)] + cli[5:-2], capture_output=True, text=True)
    assert named.returncode == 2 and "not UTF-8" in named.stderr  # refused before Prefect, saying what to do
