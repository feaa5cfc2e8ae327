"""Outputs: the standard files made from a run's final records, besides `results.jsonl`.

- `pages/`: one JSON per ok page in PaddleOCR 3's own result layout (what `result.save_to_json()` writes);
- `results.parquet`: one row per page, the lines as a nested column;
- `text/`: the text of each input document, its pages in order separated by form feeds (`\\f`);
- `vis/`: a sample of ok pages with their line boxes drawn.

Files under `pages/`, `text/` and `vis/` mirror each source's absolute path (`/data/a.pdf` page 2 ->
`pages/data/a.pdf.p00002.json`; `s3://bucket/a.pdf` -> `pages/s3/bucket/a.pdf.p00002.json`), so names
are unique and stable whatever else the run holds. Every
file is written beside its target and renamed; a file whose bytes would not change is left alone, and
files an earlier reduce wrote that no record accounts for any more are removed (each folder's `OWN_FILES`
lists what the run wrote there: nothing else in it is ever removed). The same records give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Collection, Iterable, Sequence
from itertools import groupby
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from ocrfleet.inputs.pages import PageError, load_page
from ocrfleet.records import PageRecord, escape_surrogates
from ocrfleet.inputs.storage import is_url

log = logging.getLogger(__name__)

# The pipeline settings `ocrfleet.run.engine` runs PaddleOCR 3 with, as its result JSON reports them.
_MODEL_SETTINGS = {"use_doc_preprocessor": False, "use_textline_orientation": False}
_TEXT_DET_PARAMS = {"limit_side_len": 64, "limit_type": "min", "thresh": 0.3, "max_side_limit": 4000,
                    "box_thresh": 0.6, "unclip_ratio": 1.5}
_PAGED_SUFFIXES = (".pdf", ".tif", ".tiff")  # PaddleOCR gives page_index for documents, null for images
_MAX_NAME = 200  # bytes; file systems allow 255 per name


def write_outputs(run_dir: Path, records: Sequence[PageRecord], kinds: Collection[str], *, dpi: int = 100,
                  max_pixels: int = 100_000_000, vis_sample: int = 10) -> dict[str, Path]:
    """Write each output in `kinds` from the final records (sorted by source, page); where each went."""
    writers = {
        "pages": lambda: _write_tree(run_dir / "pages", _page_jsons(records)),
        "parquet": lambda: _write_parquet(run_dir / "results.parquet", records),
        "text": lambda: _write_tree(run_dir / "text", _document_texts(records)),
        "vis": lambda: _write_tree(run_dir / "vis", _visualizations(records, dpi, max_pixels, vis_sample)),
    }
    unknown = set(kinds) - set(writers)
    if unknown:
        raise ValueError(f"unknown outputs {sorted(unknown)} (known: {', '.join(writers)})")
    return {kind: writers[kind]() for kind in writers if kind in kinds}


def mirrored(source: str, suffix: str) -> Path:
    """Where a source's output goes inside an output folder: its absolute path, plus `suffix`.

    A URL's goes under its scheme: `s3://bucket/a.pdf` -> `s3/bucket/a.pdf...`.
    """
    if is_url(source):
        scheme, path = source.split("://", 1)
        # Keys may hold `..` or empty segments: none may climb out of the output folder.
        parts = [scheme] + [part if part != ".." else "__" for part in path.split("/") if part not in ("", ".")]
        folder, name = "/".join(parts[:-1]), parts[-1]
    else:
        folder, name = os.path.split(os.path.abspath(source))
    name += suffix
    if len(os.fsencode(name)) > _MAX_NAME:  # keep it a legal name, still unique by the full name's hash
        name = f"{name[:80]}-{hashlib.sha256(os.fsencode(name)).hexdigest()[:16]}{suffix}"
    return Path(folder.lstrip(os.sep)) / name


def paddleocr_result(record: PageRecord) -> dict:
    """The page as PaddleOCR 3's `OCRResult` JSON: same keys, order and value types."""
    polys = [[[_number(x), _number(y)] for x, y in line.box] for line in record.lines]
    boxes = [[min(p[0] for p in poly), min(p[1] for p in poly), max(p[0] for p in poly), max(p[1] for p in poly)]
             for poly in polys]
    paged = record.source.lower().endswith(_PAGED_SUFFIXES)
    return {
        "input_path": record.source, "page_index": record.page if paged else None,
        "model_settings": _MODEL_SETTINGS, "dt_polys": polys, "text_det_params": _TEXT_DET_PARAMS,
        "text_type": "general", "textline_orientation_angles": [-1] * len(polys), "text_rec_score_thresh": 0.0,
        "return_word_box": False, "rec_texts": [line.text for line in record.lines],
        "rec_scores": [line.score for line in record.lines], "rec_polys": polys, "rec_boxes": boxes,
    }


def _number(value: float) -> int | float:
    # PaddleOCR's polygons are integer pixels; keep any fractional value an engine might give.
    return int(value) if float(value).is_integer() else value


def _page_jsons(records: Iterable[PageRecord]) -> Iterable[tuple[Path, bytes]]:
    for record in records:
        if record.status == "ok":
            # indent=4 and ensure_ascii=False: exactly PaddleOCR's JsonWriter; a name's undecodable bytes as in records.
            text = escape_surrogates(json.dumps(paddleocr_result(record), indent=4, ensure_ascii=False))
            yield mirrored(record.source, f".p{record.page:05d}.json"), text.encode("utf-8")


def _document_texts(records: Iterable[PageRecord]) -> Iterable[tuple[Path, bytes]]:
    for source, pages in groupby(records, key=lambda record: record.source):
        # A failed page stays as an empty page, so page N of the text is page N of the document.
        text = "\f".join(record.text if record.status == "ok" else "" for record in pages)
        yield mirrored(source, ".txt"), (text + "\n").encode("utf-8")


def _visualizations(records: Sequence[PageRecord], dpi: int, max_pixels: int, sample: int) -> Iterable[tuple[Path, bytes]]:
    import io

    for record in [record for record in records if record.status == "ok"][:sample]:
        try:
            pixels = load_page(record.source, record.page, dpi=dpi, max_pixels=max_pixels)
        except PageError as exc:
            log.warning("vis: skipping %s page %d: %s", record.source, record.page, exc)
            continue
        image = Image.fromarray(pixels[:, :, ::-1])
        draw = ImageDraw.Draw(image)
        for line in record.lines:
            draw.polygon([tuple(point) for point in line.box], outline=(230, 30, 30), width=2)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        yield mirrored(record.source, f".p{record.page:05d}.png"), buffer.getvalue()


# In each output folder: every file a reduce of this run dir wrote there, as JSON strings, one a line. Only files
# listed there are ever removed as stale: whatever else the folder holds is not the run's.
OWN_FILES = ".ocrfleet-files"


def _write_tree(folder: Path, files: Iterable[tuple[Path, bytes]]) -> Path:
    """Write `files` under `folder`, skip unchanged ones, then remove what an earlier reduce wrote that no
    longer belongs there. Each name is listed in `OWN_FILES` before its file is written, so a reduce killed
    midway leaves no file of its own unlisted."""
    listed = own_files(folder) or set()
    kept: set[str] = set()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / OWN_FILES, "a", encoding="utf-8") as journal:
        for relative, data in files:
            name = relative.as_posix()
            if name not in listed and name not in kept:
                journal.write(json.dumps(name) + "\n")
                journal.flush()
            kept.add(name)
            _write_if_changed(folder / relative, data)
    _remove_stale(folder, listed - kept)
    _write_if_changed(folder / OWN_FILES, "".join(json.dumps(name) + "\n" for name in sorted(kept)).encode())
    return folder


def own_files(folder: Path) -> set[str] | None:
    """The files (relative POSIX paths) reduces of the run wrote under `folder`; None when it has no list."""
    try:
        text = (folder / OWN_FILES).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    names = set()
    for line in text.splitlines():
        try:
            names.add(json.loads(line))
        except ValueError:
            continue  # a line torn by a crash: its file, if any, was never written
    return names


def _write_if_changed(target: Path, data: bytes) -> None:
    try:
        if target.stat().st_size == len(data) and target.read_bytes() == data:
            return
    except OSError:
        pass
    write_bytes_atomic(target, data, durable=False)


def write_bytes_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write beside the target and rename: readers see the old file or the new one, never half.

    `durable=False` skips the fsync, for files that can be rebuilt from `results.jsonl` after a crash;
    a million fsyncs would dominate the time.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name[:_MAX_NAME]}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk: no half-written temporary stays behind
        raise


def _remove_stale(folder: Path, stale: set[str]) -> None:
    """Remove the files named in `stale` (relative to `folder`), then the folders they leave empty."""
    emptied: set[Path] = set()
    for name in stale:
        path = folder / name
        if ".." not in Path(name).parts and path.is_file() and not path.is_symlink():
            path.unlink()
            emptied.update(parent for parent in path.parents if folder in parent.parents)
    for parent in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        try:
            parent.rmdir()  # only succeeds when empty
        except OSError:
            pass


_LINE = pa.struct([("text", pa.string()), ("score", pa.float64()),
                   ("box", pa.list_(pa.list_(pa.float64(), 2), 4))])
SCHEMA = pa.schema([
    ("source", pa.string()), ("page", pa.int32()), ("status", pa.string()), ("text", pa.string()),
    ("error", pa.string()), ("error_class", pa.string()), ("n_lines", pa.int32()),
    ("mean_score", pa.float64()), ("lines", pa.list_(_LINE)), ("shard", pa.int32()), ("device", pa.string()),
])


def _utf8(name: str) -> str:
    """Parquet strings are UTF-8: a name's undecodable bytes are written as `\\xNN` there (results.jsonl is exact)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return name


def _write_parquet(path: Path, records: Sequence[PageRecord]) -> Path:
    """`results.parquet`, built column by column (flat arrays plus offsets: fast for millions of lines)."""
    offsets, texts, scores, coords = [0], [], [], []
    for record in records:
        for line in record.lines:
            texts.append(line.text)
            scores.append(line.score)
            coords.extend(value for point in line.box for value in point)
        offsets.append(len(texts))
    boxes = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(pa.array(coords, pa.float64()), 2), 4)
    lines = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.StructArray.from_arrays(
        [pa.array(texts, pa.string()), pa.array(scores, pa.float64()), boxes], fields=list(_LINE)))
    counts = [len(record.lines) for record in records]
    table = pa.Table.from_arrays([
        pa.array([_utf8(record.source) for record in records], pa.string()),
        pa.array([record.page for record in records], pa.int32()),
        pa.array([record.status for record in records], pa.string()),
        pa.array([record.text for record in records], pa.string()),
        pa.array([record.error and _utf8(record.error) for record in records], pa.string()),
        pa.array([record.error_class for record in records], pa.string()),
        pa.array(counts, pa.int32()),
        pa.array([sum(line.score for line in record.lines) / n if n else None for record, n in zip(records, counts)],
                 pa.float64()),
        lines,
        pa.array([record.shard for record in records], pa.int32()),
        pa.array([record.device for record in records], pa.string()),
    ], schema=SCHEMA)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # No timestamps go into Parquet metadata: the same records and pyarrow version give the same bytes.
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
