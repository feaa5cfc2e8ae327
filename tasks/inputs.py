"""Inputs: turn the user's files, directories, glob patterns and manifests into a sorted list of pages.

What an input may be:
- a file: an image, a multi-page TIFF or a PDF (each page a `PageRef`, `page` counting from 0);
- a directory, searched recursively (directory symlinks are not followed, so a loop cannot recurse);
- a glob pattern (`**` recursive);
- a page range after a file name, 1-based and inclusive as people write them: `scan.pdf[1-5,8]`
  (used only when no file has that exact name);
- a manifest named directly: `.txt` (one path per line, `#` comments, the same `[range]` suffix),
  `.csv` (a header row; the path column is `manifest_path_column`, optional `pages` and `cost`
  columns) or `.jsonl` (one object per line with the same keys). Relative paths are relative to
  the manifest's folder. Every bad row is reported at once (up to ten of them), naming file and line;
- a URL (`s3://bucket/scans/`, a glob, an object, a manifest), or a manifest naming URLs: listed
  through fsspec by `tasks.remote_inputs`, with the same meanings.

A page's cost is its pixel count: from the PDF page size at `dpi`, from each TIFF frame's header, or
from a plain image's header. Reading headers costs ~30-70 us a file, so above `PROBE_LIMIT` plain
images their cost is estimated from the file size instead (a manifest's `cost` column skips both).
"""

from __future__ import annotations

import csv
import fnmatch
import functools
import glob
import json
import os
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tasks.pages import probe_pages
from tasks.records import PageRef

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
DOCUMENT_SUFFIXES = IMAGE_SUFFIXES | {".pdf"}
MANIFEST_SUFFIXES = frozenset({".txt", ".csv", ".jsonl"})
MULTI_PAGE_SUFFIXES = frozenset({".pdf", ".tif", ".tiff"})
PROBE_LIMIT = 20_000
PIXELS_PER_BYTE = 8.0  # a compressed document scan holds roughly this many pixels per byte
_MAX_LISTED = 10
_RANGE_SUFFIX = re.compile(r"(.+)\[([0-9][0-9,\- ]*)\]", re.DOTALL)
_RANGE_PART = re.compile(r"([0-9]+)(?:-([0-9]+))?")

Pages = frozenset[int] | None  # None: every page of the document
Named = tuple[str, Pages, "float | None", "str | None"]  # path, pages, cost per page, manifest line


_NO_COSTS: dict = {}  # shared and never mutated: `add` replaces it


class _Wanted:
    """What the inputs ask of one file: all pages or some, and any costs a manifest gave (None: any page)."""

    __slots__ = ("every_page", "pages", "costs", "origin", "stat")

    def __init__(self) -> None:
        self.stat: os.stat_result | None = None
        self.origin: str | None = None  # the manifest line that first named it
        self.every_page = False
        self.pages: set[int] | None = None  # made when first needed: most inputs name whole files
        self.costs: dict[int | None, float] = _NO_COSTS

    def add(self, pages: Pages, cost: float | None, origin: str | None) -> None:
        self.origin = self.origin or origin
        if pages is None:
            self.every_page = True
        else:
            self.pages = (self.pages or set()) | pages
        if cost is not None:
            self.costs = {**self.costs, **dict.fromkeys(pages or (None,), cost)}

    def selection(self) -> Pages:
        return None if self.every_page else frozenset(self.pages or ())


class InputError(ValueError):
    """An input argument or manifest row that names nothing usable."""


def collect_pages(inputs: Sequence[str], *, dpi: int = 100, include_globs: Sequence[str] = (),
                  exclude_globs: Sequence[str] = (), manifest_path_column: str = "path") -> list[PageRef]:
    """Every page named by `inputs`, sorted by (source, page) and de-duplicated, with its cost."""
    from tasks.remote_inputs import collect_remote, names_remote  # it imports this module

    if any(map(names_remote, inputs)):  # URLs, and manifests naming them, are listed through fsspec
        local = functools.partial(collect_pages, dpi=dpi, include_globs=include_globs, exclude_globs=exclude_globs,
                                  manifest_path_column=manifest_path_column)
        return collect_remote(inputs, local, dpi=dpi, include_globs=include_globs, exclude_globs=exclude_globs,
                              manifest_path_column=manifest_path_column)
    wanted: dict[str, _Wanted] = {}
    problems: list[str] = []
    for spec in inputs:
        for path, pages, cost, origin in _expand(spec, manifest_path_column, problems):
            (wanted.get(path) or wanted.setdefault(path, _Wanted())).add(pages, cost, origin)
    kept = {path: entry for path, entry in wanted.items() if _selected(path, include_globs, exclude_globs)} \
        if include_globs or exclude_globs else wanted
    if not kept:
        why = f" ({len(wanted)} found, all left out by include/exclude globs)" if wanted else ""
        raise InputError(f"no images found in {list(inputs)}{why} (looked for {', '.join(sorted(DOCUMENT_SUFFIXES))})")
    for (path, entry), found in zip(kept.items(), _stat_all(list(kept))):
        entry.stat = found
        if entry.origin and (entry.stat is None or not stat.S_ISREG(entry.stat.st_mode)):
            problems.append(f"{entry.origin}: no such file")
    _raise_if(problems, "inputs that cannot be used")
    probe = sum(1 for path in kept if _suffix(path) not in MULTI_PAGE_SUFFIXES) <= PROBE_LIMIT
    refs: list[PageRef] = []
    for path in sorted(kept):
        refs.extend(_page_refs(path, kept[path], dpi=dpi, probe=probe, problems=problems))
    _raise_if(problems, "pages asked for do not exist")
    return refs


def parse_page_range(text: str) -> frozenset[int]:
    """`"1-5,8"` (1-based, inclusive) as 0-based page indices; `ValueError` on anything else."""
    pages: set[int] = set()
    for part in text.replace(" ", "").split(","):
        match = _RANGE_PART.fullmatch(part)
        if not match:
            raise ValueError(f"bad page range {text!r}: write pages like 1-5,8 (counting from 1)")
        start, stop = int(match[1]), int(match[2] or match[1])
        if start < 1 or stop < start:
            raise ValueError(f"bad page range {text!r}: pages count from 1 and ranges go up, like 3-7")
        pages.update(range(start - 1, stop))
    return frozenset(pages)


def _expand(spec: str, column: str, problems: list[str]) -> list[Named]:
    path = Path(spec).expanduser()
    if path.is_dir():
        return [(found, None, None, None) for found in _walk(_absolute(path))]
    if path.exists() or path.is_symlink():
        if _suffix(spec) in MANIFEST_SUFFIXES:
            return _read_manifest(path, column, problems)
        if _suffix(spec) not in DOCUMENT_SUFFIXES:
            raise InputError(f"{spec}: not a supported image type, PDF or manifest ({', '.join(sorted(DOCUMENT_SUFFIXES | MANIFEST_SUFFIXES))})")
        return [(_absolute(path), None, None, None)]
    ranged = _RANGE_SUFFIX.fullmatch(spec)
    if ranged and Path(ranged[1]).expanduser().is_file():
        try:
            return [(_absolute(Path(ranged[1]).expanduser()), parse_page_range(ranged[2]), None, None)]
        except ValueError as exc:
            raise InputError(f"{spec}: {exc}") from None
    matches = sorted(glob.glob(str(path), recursive=True))
    if not matches:
        raise InputError(f"{spec}: no such file or directory, and no file matches it as a glob pattern")
    found: list[Named] = []
    for match in map(Path, matches):
        if match.is_dir():
            found.extend((_absolute(inner), None, None, None) for inner in _walk(match))
        elif _suffix(match.name) in DOCUMENT_SUFFIXES:
            found.append((_absolute(match), None, None, None))
    return found


def _read_manifest(manifest: Path, column: str, problems: list[str]) -> list[Named]:
    """The good rows of a manifest; each bad one is added to `problems`, naming file and line."""
    rows: list[Named] = []
    folder = _absolute(manifest.parent)
    for line, row in _manifest_rows(manifest, column, problems):
        try:
            rows.append((*_manifest_row(folder, row, column), f"{manifest}:{line}: {row.get(column)}"))
        except (ValueError, TypeError) as exc:
            problems.append(f"{manifest}:{line}: {exc}")
    return rows


def _manifest_rows(manifest: Path, column: str, problems: list[str]) -> Iterator[tuple[int, dict]]:
    suffix = _suffix(manifest.name)
    try:
        with open(manifest, encoding="utf-8", newline="" if suffix == ".csv" else None) as handle:
            if suffix == ".csv":
                reader = csv.DictReader(handle)
                if column not in (reader.fieldnames or []):
                    raise InputError(f"{manifest}:1: no {column!r} column (columns: {reader.fieldnames}); "
                                     "set manifest_path_column to the column holding the paths")
                for row in reader:
                    yield reader.line_num, row
                return
            for number, text in enumerate(handle, 1):
                if suffix == ".txt":
                    text = text.strip()
                    if text and not text.startswith("#"):
                        yield number, {column: text, "_txt": True}
                elif text.strip():
                    try:
                        row = json.loads(text)
                    except json.JSONDecodeError as exc:
                        problems.append(f"{manifest}:{number}: not valid JSON ({exc.msg})")
                        continue
                    yield number, row if isinstance(row, dict) else {"_not_object": row}
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{manifest}: cannot read the manifest: {exc}") from exc


def _manifest_row(folder: str, row: dict, column: str) -> tuple[str, Pages, float | None]:
    # Plain string paths, not pathlib: a million-row manifest spends most of its time here.
    if "_not_object" in row:
        raise ValueError(f"expected a JSON object with a {column!r} key, got {row['_not_object']!r}")
    name = row.get(column)
    if not isinstance(name, str) or not name:
        raise ValueError(f"no path in {column!r}")
    pages, cost = _row_pages(row.get("pages")), _row_cost(row.get("cost"))
    path = _row_path(folder, name)
    if row.get("_txt") and name.endswith("]") and not os.path.lexists(path) and _RANGE_SUFFIX.fullmatch(name):
        ranged = _RANGE_SUFFIX.fullmatch(name)
        path, pages = _row_path(folder, ranged[1]), parse_page_range(ranged[2])
    if _suffix(path) in MANIFEST_SUFFIXES:
        raise ValueError(f"{name}: a manifest cannot name another manifest")
    return path, pages, cost


def _row_path(folder: str, name: str) -> str:
    return os.path.normpath(os.path.join(folder, os.path.expanduser(name) if name[0] == "~" else name))


def _row_pages(value: object) -> Pages:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return parse_page_range(str(value))
    if isinstance(value, list) and all(isinstance(item, int) for item in value):
        return parse_page_range(",".join(map(str, value)))
    if isinstance(value, str):
        return parse_page_range(value)
    raise ValueError(f"bad pages {value!r}: write pages like \"1-5,8\" (counting from 1)")


def _row_cost(value: object) -> float | None:
    if value is None or value == "":
        return None
    cost = float(value)  # type: ignore[arg-type]
    if not cost >= 0:
        raise ValueError(f"bad cost {value!r}: a number of pixels, 0 or more")
    return cost


def _page_refs(path: str, wanted: _Wanted, *, dpi: int, probe: bool, problems: list[str]) -> list[PageRef]:
    size, mtime_ns = (wanted.stat.st_size, wanted.stat.st_mtime_ns) if wanted.stat else (0, 0)
    pages, costs = wanted.selection(), wanted.costs
    plain = _suffix(path) not in MULTI_PAGE_SUFFIXES
    if _all_costed(pages, costs, plain):
        listed = [(page, costs.get(page, costs.get(None, 0.0))) for page in sorted(pages or {0})]
    elif plain and not probe and pages in (None, frozenset({0})):
        listed = [(0, size * PIXELS_PER_BYTE)]
    else:
        probed = probe_pages(path, dpi=dpi)
        if probed is None:  # unreadable: one unit, which the worker turns into a failed record saying why
            probed, pages = [(min(pages or {0}), 0.0)], None
        present = {page for page, _ in probed}
        if pages is not None and pages - present:
            missing = ", ".join(str(page + 1) for page in sorted(pages - present)[:5])
            problems.append(f"{path}: page(s) {missing} asked for, but it has {len(present)} page(s)")
        listed = [(page, costs.get(page, costs.get(None, page_cost))) for page, page_cost in probed
                  if pages is None or page in pages]
    # Validating construction is faster than model_construct for these five plain fields (2 us against 4).
    return [PageRef(source=path, page=page, cost=float(page_cost), size=size, mtime_ns=mtime_ns)
            for page, page_cost in listed]


def _all_costed(pages: Pages, costs: dict[int | None, float], plain: bool) -> bool:
    # A manifest's costs spare opening the file when they cover every page it asks for.
    if pages is None:
        return plain and None in costs
    return None in costs or all(page in costs for page in pages)


def _selected(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    name = os.path.basename(path)
    if include and not any(fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(name, g) for g in include):
        return False
    return not any(fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(name, g) for g in exclude)


def _raise_if(problems: list[str], what: str) -> None:
    if problems:
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise InputError(f"{what}:\n  " + "\n  ".join(problems[:_MAX_LISTED]) + more)


def _walk(folder: str) -> Iterable[str]:
    """The documents under an absolute folder, as absolute paths (strings: a million Path objects cost seconds)."""
    # os.walk does not follow directory symlinks, so a symlink loop cannot recurse forever.
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in names:
            if _suffix(name) in DOCUMENT_SUFFIXES:
                yield os.path.join(root, name)


def _suffix(name: str | os.PathLike) -> str:
    name = os.fspath(name)
    return name[name.rfind("."):].lower() if "." in name else ""  # only ever compared with known suffixes



def _absolute(path: Path) -> str:
    # abspath keeps symlinks as named: the record's source is the path the user gave, made absolute.
    return os.path.abspath(path)


def _stat_all(paths: list[str], threads: int = 16) -> list[os.stat_result | None]:
    """`_stat` of every path, on several threads: stat releases the GIL, and on NFS each one is a round trip."""
    if len(paths) < 2000:
        return [_stat(path) for path in paths]
    size = -(-len(paths) // threads)
    with ThreadPoolExecutor(threads, thread_name_prefix="stat") as pool:
        parts = pool.map(lambda start: [_stat(path) for path in paths[start:start + size]],
                         range(0, len(paths), size))
        return [found for part in parts for found in part]


def _stat(source: str) -> os.stat_result | None:
    try:
        return os.stat(source)
    except OSError:
        return None  # unreadable now: the worker turns it into a failed record with the reason
