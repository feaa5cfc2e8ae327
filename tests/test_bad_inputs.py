"""A folder salted with broken files: every one becomes a failed record with its class, and the shard goes on."""

import collections
import io
import os

from PIL import Image

from ocrfleet.config import load_config
from ocrfleet.plan.planning import prepare_run
from ocrfleet.records import PageRecord, read_jsonl
from ocrfleet.reduce.summary import reduce_run
from ocrfleet.run.worker import run_shard
from tests.faulty_worker import FaultyEngine


def png(size, mode="RGB", fmt="PNG", **save) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, "white" if mode in ("RGB", "RGBA") else 255).save(buffer, format=fmt, **save)
    return buffer.getvalue()


BROKEN = {
    "empty.png": (b"", "EmptyFile"),
    "cut.png": (png((300, 200))[:-40], "Truncated"),
    "cut.jpg": (png((300, 200), fmt="JPEG")[:200], "Truncated"),
    "shopping-list.png": (b"eggs, milk, bread\n", "NotAnImage"),
    "dot.png": (png((1, 1)), "ImageTooSmall"),
    "bomb.png": (png((3000, 1000), mode="L"), "DecompressionBomb"),
    "broken.pdf": (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage", "CorruptPdf"),
}

# Unusual but readable: decoded to BGR, so the fake engine reports their width.
READABLE = {
    "jpeg-named.png": png((120, 30), fmt="JPEG"),
    "gray16.png": png((121, 30), mode="I;16"),
    "cmyk.jpg": png((122, 30), mode="CMYK", fmt="JPEG"),
    "palette.png": png((123, 30), mode="P"),
    "animated.gif": png((124, 30), mode="P", fmt="GIF", save_all=True,
                        append_images=[Image.new("P", (124, 30), 3)]),
    "with space.png": png((125, 30)),
    "quote'\"s.png": png((126, 30)),
    "ünïcödé.png": png((127, 30)),
    "new\nline.png": png((128, 30)),
    "-leading-dash.png": png((129, 30)),
    "$(touch pwned).png": png((130, 30)),
}


def test_every_broken_file_is_a_failed_record_with_its_class_and_the_rest_is_read(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name, (content, _) in BROKEN.items():
        (folder / name).write_bytes(content)
    for name, content in READABLE.items():
        (folder / name).write_bytes(content)
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "vanishes.png").write_bytes(png((131, 30)))
    out = tmp_path / "out"
    config = load_config(None, inputs=[str(folder)], output_dir=str(out), devices="cpu:1", max_failure_rate=1.0,
                         max_image_pixels=2_000_000)
    plan = prepare_run(config)
    (folder / "vanishes.png").unlink()  # gone between planning and reading

    report = run_shard(out, 0, engine_factory=FaultyEngine)
    summary = reduce_run(out)

    records = {os.path.basename(r.source): r for r in read_jsonl(out / "results.jsonl", PageRecord)}
    expected = {name: error for name, (_, error) in BROKEN.items()} | {"loop.png": "SymlinkLoop",
                                                                       "vanishes.png": "FileVanished"}
    assert {name: r.error_class for name, r in records.items() if r.status == "failed"} == expected
    assert {name: r.text for name, r in records.items() if r.status == "ok"} == {
        name: f"w{Image.open(io.BytesIO(content)).size[0]}" for name, content in READABLE.items()}
    assert report.pages_planned == plan.pages_total == len(BROKEN) + len(READABLE) + 2
    assert summary.problems == [] and summary.failures_by_class == dict(collections.Counter(expected.values()))
    failures = list(read_jsonl(out / "failures.jsonl", PageRecord))
    assert {os.path.basename(r.source) for r in failures} == set(expected)
    assert all(r.error and r.error_class for r in failures)
    assert not (tmp_path / "pwned").exists() and not (folder / "pwned").exists()  # no shell anywhere
