"""Object stores: inputs listed and read through fsspec from a local S3 (moto), outputs published, summary last."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from ocrfleet.inputs import listing as remote_inputs, storage
from ocrfleet.run import launch
from ocrfleet.config import load_config
from ocrfleet.inputs.listing import InputError, collect_pages
from ocrfleet.run.launch import run_worker
from ocrfleet.inputs.pages import PageError, PageReader
from ocrfleet.plan.planning import failed_pages, prepare_run
from ocrfleet.reduce.publish import LISTING, PublishRefused, is_published, publish
from ocrfleet.records import PageRecord, read_jsonl
from ocrfleet.reduce.summary import reduce_run
from ocrfleet.run.worker import run_shard
from tests.faulty_worker import FaultyEngine
from tests.test_pages import write_pdf, write_tiff


def s3():
    return storage.split_url("s3://")[0]


def upload(folder: Path, url: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3().pipe_file(storage.split_url(f"{url}/{path.relative_to(folder).as_posix()}")[1], path.read_bytes())


def blank(path: Path, width: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, 20), "white").save(path)
    return path


def scans(folder: Path) -> Path:
    blank(folder / "a.png", 30)
    blank(folder / "sub" / "b.jpg", 40)
    write_pdf(folder / "doc.pdf", [["one"], ["two"], ["three"]], size=(72, 36))
    write_tiff(folder / "stack.tif", [(10, 10), (20, 10)])
    (folder / "notes.doc").write_text("not a page")
    return folder


def test_an_s3_prefix_lists_like_a_folder_with_sizes_mtimes_and_pdf_pages(bucket, tmp_path):
    local = scans(tmp_path / "scans")
    upload(local, f"{bucket}/scans")
    pages = collect_pages([f"{bucket}/scans/"], dpi=144)
    assert [(page.source, page.page) for page in pages] == [
        (f"{bucket}/scans/a.png", 0), *((f"{bucket}/scans/doc.pdf", n) for n in range(3)),
        (f"{bucket}/scans/stack.tif", 0), (f"{bucket}/scans/stack.tif", 1), (f"{bucket}/scans/sub/b.jpg", 0)]
    sizes = {page.source: page.size for page in pages}
    assert sizes[f"{bucket}/scans/doc.pdf"] == os.path.getsize(local / "doc.pdf")
    info = s3().info(storage.split_url(f"{bucket}/scans/a.png")[1])
    assert pages[0].mtime_ns // 10**6 == int(info["LastModified"].timestamp()) * 10**3 > 0  # ETag below a ms
    # Multi-page documents are read for their page count; plain images are costed from their size, unread.
    assert [page.cost for page in pages[1:6]] == [144 * 72.0] * 3 + [100.0, 200.0]
    assert pages[0].cost == os.path.getsize(local / "a.png") * remote_inputs.PIXELS_PER_BYTE

    assert [page.source for page in collect_pages([f"{bucket}/scans/**/*.jpg"])] == [f"{bucket}/scans/sub/b.jpg"]
    assert [page.page for page in collect_pages([f"{bucket}/scans/doc.pdf[2-3]"])] == [1, 2]
    kept = collect_pages([f"{bucket}/scans/"], include_globs=["*.pdf", "*.png"], exclude_globs=[f"{bucket}/*/a.*"])
    assert {page.source for page in kept} == {f"{bucket}/scans/doc.pdf"}
    costed = tmp_path / "costed.jsonl"  # a cost but no pages: the document is still read for its page count
    costed.write_text(json.dumps({"path": f"{bucket}/scans/doc.pdf", "cost": 9}) + "\n")
    assert [(page.page, page.cost) for page in collect_pages([str(costed)])] == [(0, 9.0), (1, 9.0), (2, 9.0)]
    mixed = collect_pages([f"{bucket}/scans/a.png", str(local / "sub")])  # a URL and a local folder together
    assert [page.source for page in mixed] == [str(local / "sub" / "b.jpg"), f"{bucket}/scans/a.png"]
    with pytest.raises(InputError, match="no such object or prefix"):
        collect_pages([f"{bucket}/nothing-here/"])


def test_manifests_at_a_url_or_naming_urls_give_pages_without_reading_the_documents(bucket, tmp_path, monkeypatch):
    upload(scans(tmp_path / "scans"), f"{bucket}/scans")
    storage.split_url(bucket)[0].pipe_file(storage.split_url(f"{bucket}/lists/m.csv")[1],
                                           b"path,pages,cost\n../scans/doc.pdf,1-2,50\n../scans/a.png,,\n")
    local = tmp_path / "m.jsonl"
    local.write_text(json.dumps({"path": f"{bucket}/scans/doc.pdf", "pages": "3"}) + "\n"
                     + json.dumps({"path": f"{bucket}/scans/stack.tif", "pages": "2", "cost": 7}) + "\n")
    monkeypatch.setattr(remote_inputs, "probe_data", lambda *a, **k: pytest.fail("read a document"))
    monkeypatch.setattr(storage, "_LIST_MIN", 2)  # the folder is listed once instead of a request per object
    pages = collect_pages([f"{bucket}/lists/m.csv", str(local)], dpi=100)
    assert [(p.source.rsplit("/", 1)[1], p.page, p.cost) for p in pages] == [
        ("a.png", 0, (tmp_path / "scans" / "a.png").stat().st_size * 8.0), ("doc.pdf", 0, 50.0), ("doc.pdf", 1, 50.0),
        ("doc.pdf", 2, 8.5 * 11 * 100 * 100), ("stack.tif", 1, 7.0)]
    assert all(page.size > 0 and page.mtime_ns > 0 for page in pages)
    local.write_text(json.dumps({"path": f"{bucket}/scans/gone.png"}) + "\n")
    with pytest.raises(InputError, match=f"(?s)m.jsonl:1: {bucket}/scans/gone.png: no such object"):
        collect_pages([str(local)])


def test_a_manifest_at_a_url_reports_every_bad_row_with_its_line_as_a_local_one_does(bucket, tmp_path):
    upload(scans(tmp_path / "scans"), f"{bucket}/scans")
    rows = ['{"path": "../scans/a.png"}', "{not json", '{"name": "a.png"}', '"a.png"', '{"path": "../scans/gone.png"}',
            '{"path": "../scans/a.png", "pages": "x"}', '{"path": "../scans/a.png", "cost": -1}',
            '{"path": "../scans/a.png", "cost": "inf"}', '{"path": "/etc/a.png"}']
    fs, path = storage.split_url(f"{bucket}/lists/m.jsonl")
    fs.pipe_file(path, ("\n".join(rows) + "\n").encode())
    with pytest.raises(InputError) as caught:
        collect_pages([f"{bucket}/lists/m.jsonl"])
    message = str(caught.value)
    for line in range(2, 10):
        assert f"m.jsonl:{line}:" in message, message
    assert "m.jsonl:1:" not in message and "not valid JSON" in message and "expected a JSON object" in message
    assert "m.jsonl:8: bad cost 'inf'" in message and "gone.png: no such object" in message


def test_workers_read_s3_pages_and_a_vanished_object_fails_as_file_vanished(bucket, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    for width in (100, 101, 102):
        blank(folder / f"w{width}.png", width)
    write_pdf(folder / "doc.pdf", [["one"], ["two"]], size=(72, 36))  # 100 px wide at 100 dpi: "w100"
    (folder / "empty.png").write_bytes(b"")
    upload(folder, f"{bucket}/in")
    config = load_config(None, inputs=[f"{bucket}/in/"], output_dir=str(tmp_path / "out"), devices="cpu:1",
                         max_failure_rate=1.0, pdf_dpi=100)
    plan = prepare_run(config)
    s3().rm_file(storage.split_url(f"{bucket}/in/w102.png")[1])  # deleted after planning
    monkeypatch.setattr(launch, "WORKER_MODULE", "tests.faulty_worker")  # the real worker, a fake engine
    for spec in plan.shards:
        run_worker(tmp_path / "out", spec, sink=lambda *_: None)
    summary = reduce_run(tmp_path / "out")
    records = {(r.source.rsplit("/", 1)[1], r.page): r for r in read_jsonl(tmp_path / "out" / "results.jsonl",
                                                                          PageRecord)}
    assert summary.problems == [] and (summary.pages_ok, summary.pages_failed) == (4, 2)
    assert {key: r.text for key, r in records.items() if r.status == "ok"} == {
        ("doc.pdf", 0): "w100", ("doc.pdf", 1): "w100", ("w100.png", 0): "w100", ("w101.png", 0): "w101"}
    assert (records[("w102.png", 0)].error_class, records[("empty.png", 0)].error_class) == ("FileVanished",
                                                                                             "EmptyFile")
    assert records[("w101.png", 0)].sha256 == hashlib.sha256((folder / "w101.png").read_bytes()).hexdigest()

    upload(folder, f"{bucket}/in")  # the vanished object is back: reprocessing sees it as it is now
    redo = load_config(None, output_dir=str(tmp_path / "redo"), derived_from=str(tmp_path / "out"), only_failed=True)
    now = {page.source.rsplit("/", 1)[1]: page for page in failed_pages(redo)}
    assert sorted(now) == ["empty.png", "w102.png"] and now["empty.png"].size == 0
    assert now["w102.png"].size == (folder / "w102.png").stat().st_size and now["w102.png"].mtime_ns > 0


@pytest.mark.parametrize("raised, error_class", [(PermissionError("AccessDenied"), "PermissionDenied"),
                                                 (ConnectionError("endpoint unreachable"), "StorageUnavailable"),
                                                 (IsADirectoryError("a prefix"), "NotAFile")])
def test_store_errors_become_the_page_error_classes_of_files(monkeypatch, raised, error_class):
    def fail(url):
        raise raised

    monkeypatch.setattr("ocrfleet.inputs.pages.read_object", fail)
    with PageReader(dpi=100, max_pixels=10**8) as reader, pytest.raises(PageError) as caught:
        reader.load("s3://bucket/a.png", 0)
    assert caught.value.error_class == error_class and "s3://bucket/a.png" in str(caught.value)


def test_a_rerun_over_s3_reuses_unchanged_objects_and_redoes_rewritten_ones(bucket, tmp_path):
    folder = tmp_path / "in"
    for width in (100, 101, 102):
        blank(folder / f"w{width}.png", width)
    upload(folder, f"{bucket}/in")
    out = tmp_path / "out"
    config = load_config(None, inputs=[f"{bucket}/in/"], output_dir=str(out), devices="cpu:1")

    def run():
        plan = prepare_run(config)
        for spec in plan.shards:
            run_shard(out, spec.shard, engine_factory=FaultyEngine)
        return plan, reduce_run(out)

    assert run()[0].pages_skipped == 0
    blank(folder / "w101.png", 111)  # rewritten in place, in the same second, the same size: another ETag
    assert (folder / "w101.png").stat().st_size == (folder / "w100.png").stat().st_size
    upload(folder, f"{bucket}/in")  # and the others put again, byte for byte the same
    plan, summary = run()
    assert (plan.pages_skipped, sum(spec.pages for spec in plan.shards)) == (2, 1)
    assert [r.text for r in read_jsonl(out / "results.jsonl", PageRecord)] == ["w100", "w111", "w102"]
    assert summary.problems == [] and run()[0].pages_skipped == 3


def finished_run(folder: Path) -> Path:
    """A run dir as reduce leaves it, with what is not an output beside (plan, records, a crashed temp file)."""
    for name, text in {"results.jsonl": "r\n", "failures.jsonl": "", "results.parquet": "PAR1",
                       "text/s3/b/a.png.txt": "alpha\n", "text/s3/b/.x.png.txt.9.tmp": "torn",
                       "run.json": "{}", "records/00000.jsonl": "r\n", "summary.json": '{"pages_ok": 1}\n'}.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_publishing_to_a_path_renames_each_file_into_place_and_removes_what_the_run_no_longer_has(tmp_path):
    run_dir = finished_run(tmp_path / "run")
    target = tmp_path / "published"
    earlier = finished_run(tmp_path / "earlier")
    (earlier / "text" / "old.txt").write_text("an earlier run's document")
    publish(earlier, str(target))
    (target / "README").write_text("not ours")
    published = publish(run_dir, f"file://{target}")
    files = sorted(path.relative_to(target).as_posix() for path in target.rglob("*") if path.is_file())
    assert files == [LISTING, "README", "failures.jsonl", "results.jsonl", "results.parquet", "summary.json",
                     "text/s3/b/a.png.txt"]
    assert (published.files, published.removed) == (5, 1)
    assert (target / "summary.json").read_bytes() == (run_dir / "summary.json").read_bytes()
    assert is_published(run_dir, str(target))
    (run_dir / "summary.json").write_text('{"pages_ok": 2}\n')
    assert not is_published(run_dir, str(target))


def test_publishing_to_an_object_store_puts_whole_objects_with_summary_json_last(bucket, tmp_path, monkeypatch):
    run_dir = finished_run(tmp_path / "run")
    fs = s3()
    earlier = finished_run(tmp_path / "earlier")
    (earlier / "summary.json").write_text("an earlier run's")
    publish(earlier, f"{bucket}/ocr")
    order = []
    real_put_file = type(fs)._put_file

    async def put_file(self, lpath, rpath, *args, **kwargs):
        order.append((rpath.rsplit("/ocr/", 1)[1], await self._exists(f"{bucket}/ocr/summary.json")))
        return await real_put_file(self, lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(type(fs), "_put_file", put_file)  # what fs.put calls for each file, concurrently
    real_sync = fs.put_file
    monkeypatch.setattr(fs, "put_file", lambda lpath, rpath, **kw: (order.append(
        (rpath.rsplit("/ocr/", 1)[1], fs.exists(f"{bucket}/ocr/summary.json"))), real_sync(lpath, rpath, **kw)))
    publish(run_dir, f"{bucket}/ocr/")
    assert order[-1][0] == "summary.json" and sorted(name for name, _ in order[:-1]) == [
        "failures.jsonl", "results.jsonl", "results.parquet", "text/s3/b/a.png.txt"]
    assert not any(marker_there for _, marker_there in order)  # absent while the outputs change
    assert fs.cat_file(storage.split_url(f"{bucket}/ocr/text/s3/b/a.png.txt")[1]) == b"alpha\n"
    assert is_published(run_dir, f"{bucket}/ocr")


def _target(where: str, tmp_path: Path, bucket_url: str | None) -> str:
    return f"{bucket_url}/pub" if where == "s3" else f"file://{tmp_path / 'pub'}"


def _put(target: str, name: str, data: bytes) -> None:
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(storage.local_path(target))
    fs.makedirs(os.path.dirname(f"{root}/{name}"), exist_ok=True)  # a no-op on S3, needed on a local disk
    fs.pipe_file(f"{root}/{name}", data)


def _files(target: str) -> dict[str, bytes]:
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(storage.local_path(target))
    fs.invalidate_cache()
    return {path[len(root.rstrip("/")) + 1:]: fs.cat_file(path) for path in fs.find(root)}


@pytest.fixture(params=["local", "s3"])
def where(request):
    return request.param


@pytest.fixture
def target(where, tmp_path, request):
    return _target(where, tmp_path, request.getfixturevalue("bucket") if where == "s3" else None)


def test_a_publish_leaves_a_users_files_in_place_and_a_republish_removes_only_its_own_stale_files(target, tmp_path):
    _put(target, "text/notes.txt", b"the user's own notes")
    first = finished_run(tmp_path / "first")
    (first / "text" / "s3" / "b" / "z.png.txt").write_text("a page the next run no longer has\n")
    publish(first, target)
    assert _files(target)["text/notes.txt"] == b"the user's own notes"
    second = finished_run(tmp_path / "second")
    published = publish(second, target)
    assert published.removed == 1
    assert sorted(_files(target)) == [LISTING, "failures.jsonl", "results.jsonl", "results.parquet", "summary.json",
                                      "text/notes.txt", "text/s3/b/a.png.txt"]
    assert _files(target)["text/notes.txt"] == b"the user's own notes"
    assert is_published(second, target)


@pytest.mark.parametrize("theirs", ["results.jsonl", "summary.json", "text/s3/b/a.png.txt"])
def test_a_publish_that_would_overwrite_a_file_it_did_not_write_is_refused_and_changes_nothing(target, theirs,
                                                                                              tmp_path):
    _put(target, theirs, b"someone else's")
    _put(target, "text/notes.txt", b"the user's own notes")
    before = _files(target)
    with pytest.raises(PublishRefused, match=theirs):
        publish(finished_run(tmp_path / "run"), target)
    assert _files(target) == before


def published_records(results: bytes) -> dict[tuple[str, int], tuple]:
    """What OCR found, per page, from a published results.jsonl, with sources made relative to the inputs."""
    records = [PageRecord.model_validate_json(line) for line in results.decode().splitlines()]
    return {(r.source.rsplit("/scans/", 1)[1], r.page): (r.status, r.text, r.lines, r.error) for r in records}


def test_the_cli_reads_s3_inputs_and_publishes_to_s3_what_a_local_run_publishes_to_a_folder(bucket, word_pages,
                                                                                            tmp_path):
    import shutil
    import subprocess
    import sys

    from tests.test_end_to_end import squeeze

    local = tmp_path / "scans"
    shutil.copytree(word_pages, local)
    write_pdf(local / "ledger.pdf", [["Okafor ledger 42"], ["Pallet wrap"]], size=(400, 150), font_pt=28)
    upload(local, f"{bucket}/scans")
    cli = [sys.executable, "-m", "ocrfleet.cli", "run", f"{bucket}/scans/", "--output", str(tmp_path / "s3run"),
           "--devices", "cpu:1", "--publish-to", f"{bucket}/published"]
    done = subprocess.run(cli, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"published: {bucket}/published" in done.stdout

    # The same pages from a folder, through the same workers, published to a file:// URL.
    config = load_config(None, inputs=[str(local)], output_dir=str(tmp_path / "local"), devices="cpu:1")
    for spec in prepare_run(config).shards:
        run_worker(tmp_path / "local", spec, sink=lambda *_: None)
    assert reduce_run(tmp_path / "local").valid
    publish(tmp_path / "local", f"file://{tmp_path / 'pub'}")

    fs, name = s3(), storage.split_url(bucket)[1]
    from_s3 = published_records(fs.cat_file(f"{name}/published/results.jsonl"))
    from_folder = published_records((tmp_path / "pub" / "results.jsonl").read_bytes())
    assert from_s3 == from_folder and len(from_s3) == 6
    assert squeeze("Invoice 4821") in squeeze(from_s3[("alpha.png", 0)][1])
    assert squeeze("Okafor ledger") in squeeze(from_s3[("ledger.pdf", 0)][1])
    assert fs.cat_file(f"{name}/published/text/s3/{name}/scans/alpha.png.txt").decode().strip() == \
        from_s3[("alpha.png", 0)][1]
    assert fs.cat_file(f"{name}/published/summary.json") == (tmp_path / "s3run" / "summary.json").read_bytes()
    assert (tmp_path / "pub" / "summary.json").read_bytes() == (tmp_path / "local" / "summary.json").read_bytes()

    again = subprocess.run(cli, capture_output=True, text=True)  # nothing changed in the bucket: nothing to do
    assert again.returncode == 0 and "nothing to do: all 6 pages" in again.stdout, again.stderr[-3000:]

