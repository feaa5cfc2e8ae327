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
- a URL (`s3://bucket/scans/`, a glob, an object, a page range, a manifest, whose relative rows resolve
  against its own folder URL), or a manifest naming URLs: the same meanings, listed through fsspec.

Local paths and URLs go through this one module; `ocrfleet.inputs.locations` answers only what differs
(what a folder holds, a glob, a manifest's text, sizes and mtimes). A folder is read once under the first
name the inputs reach it by (a symlink to a folder already named adds nothing); the run's own output dir
(`leave_out`) is never taken from a folder or a glob; a folder that cannot be listed is an error.

`collect_pages` gives `PageRef` models; `list_pages` the same pages as `Page` tuples, which is what
planning a million inputs can afford (a model costs about 1 KB and 7 us).

A page's cost is its pixel count: from the PDF page size at `dpi`, from each TIFF frame's header, or
from a plain image's header. Reading headers costs ~30-70 us a file, so above `PROBE_LIMIT` plain
images their cost is estimated from the file size instead (a manifest's `cost` column skips both).
An object's headers would cost a request each: a plain image's cost is estimated from its size, and only
a PDF or TIFF whose pages the inputs do not name is fetched (on threads) to count them; a page of one
that is named but not read costs a letter page at `dpi` (a PDF) or its share of the file size (a TIFF).
"""

from __future__ import annotations

import csv
import fnmatch
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from ocrfleet.inputs.locations import Facts, LocalFiles, Location, StoreFiles, file_facts, is_local, local_facts
from ocrfleet.inputs.pages import probe_data, probe_pages
from ocrfleet.inputs.storage import is_url
from ocrfleet.records import Page, PageRef

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"})
DOCUMENT_SUFFIXES = IMAGE_SUFFIXES | {".pdf"}
MANIFEST_SUFFIXES = frozenset({".txt", ".csv", ".jsonl"})
MULTI_PAGE_SUFFIXES = frozenset({".pdf", ".tif", ".tiff"})
PROBE_LIMIT = 20_000
PIXELS_PER_BYTE = 8.0  # a compressed document scan holds roughly this many pixels per byte
LETTER_INCHES = 8.5 * 11  # the cost of a PDF page not read at planning: a letter page at `dpi`
_MANIFEST_ENDINGS = tuple(MANIFEST_SUFFIXES)  # `_suffix(path) in MANIFEST_SUFFIXES`, for the lowercased end
_MAX_LISTED = 10
_RANGE_SUFFIX = re.compile(r"(.+)\[([0-9][0-9,\- ]*)\]", re.DOTALL)
_RANGE_PART = re.compile(r"([0-9]+)(?:-([0-9]+))?")

Pages = frozenset[int] | None  # None: every page of the document
Named = tuple[str, Pages, "float | None", "str | None"]  # path, pages, cost per page, manifest line


class _Wanted:
    """What the inputs ask of one file: all pages or some, and any costs a manifest gave (None: any page)."""

    __slots__ = ("every_page", "pages", "costs", "origin")

    def __init__(self) -> None:
        self.origin: str | None = None  # the manifest line that first named it
        self.every_page = False
        self.pages: set[int] | None = None  # made when first needed: most inputs name whole files
        self.costs: dict[int | None, float] | None = None

    def add(self, pages: Pages, cost: float | None, origin: str | None) -> None:
        self.origin = self.origin or origin
        if pages is None:
            self.every_page = True
        elif self.pages is None:
            self.pages = set(pages)
        else:
            self.pages |= pages  # in place: a file named on 20,000 rows must not copy its pages 20,000 times
        if cost is not None:
            self.costs = self.costs or {}
            self.costs.update(dict.fromkeys(pages or (None,), cost))

    def selection(self) -> Pages:
        return None if self.every_page else frozenset(self.pages or ())


# What is asked of a file: a string when it is the whole file and no cost is given, as for nearly all of a
# million inputs (the manifest line that first named it, "" if none), a `_Wanted` for anything more.
Entry = str | _Wanted


class InputError(ValueError):
    """An input argument or manifest row that names nothing usable."""


def collect_pages(inputs: Sequence[str], *, dpi: int = 100, include_globs: Sequence[str] = (),
                  exclude_globs: Sequence[str] = (), manifest_path_column: str = "path",
                  leave_out: str | None = None) -> list[PageRef]:
    """Every page named by `inputs`, sorted by (source, page) and de-duplicated, with its cost."""
    return [page.ref() for page in list_pages(inputs, dpi=dpi, include_globs=include_globs, leave_out=leave_out,
                                              exclude_globs=exclude_globs, manifest_path_column=manifest_path_column)]


def list_pages(inputs: Sequence[str], *, dpi: int = 100, include_globs: Sequence[str] = (),
               exclude_globs: Sequence[str] = (), manifest_path_column: str = "path",
               leave_out: str | None = None) -> list[Page]:
    """`collect_pages` as `Page` tuples: what planning holds, a million of them in a few hundred MB.

    `leave_out` (the run's output dir) is never taken from a folder or a glob: a run does not read its own output.
    """
    problems: list[str] = []
    places = _Places(problems, leave_out)
    kept, paths, facts = _files(inputs, places, problems, include_globs=include_globs, exclude_globs=exclude_globs,
                                manifest_path_column=manifest_path_column)
    multi = {path for path in paths if _suffix(path) in MULTI_PAGE_SUFFIXES}
    probe = len(paths) - len(multi) <= PROBE_LIMIT  # few enough plain images to read their headers
    # Any other file, as nearly all of a million inputs are, is one page costed by its size.
    asked = multi.union(path for path, entry in kept.items() if not isinstance(entry, str))
    fetched = places.fetch_documents([path for path in multi if not is_local(path) and _counts_pages(kept[path])])
    pages: list[Page] = []
    for path, (size, mtime_ns, _) in zip(paths, facts):
        if (probe and is_local(path)) or path in asked:
            pages.extend(_pages_of(path, kept[path], size, mtime_ns, dpi=dpi, probe=probe, problems=problems,
                                   fetched=fetched))
        else:
            pages.append(Page(path, 0, size * PIXELS_PER_BYTE, size, mtime_ns))
    raise_if(problems, "pages asked for do not exist")
    return pages


def check_inputs(inputs: Sequence[str], *, include_globs: Sequence[str] = (), exclude_globs: Sequence[str] = (),
                 manifest_path_column: str = "path", leave_out: str | None = None) -> list[str]:
    """The files `inputs` name, sorted, or the `InputError` that `list_pages` would raise about them.

    Everything but counting pages (no document is opened): what is checked before a run creates anything.
    """
    problems: list[str] = []
    return _files(inputs, _Places(problems, leave_out), problems, include_globs=include_globs,
                  exclude_globs=exclude_globs, manifest_path_column=manifest_path_column)[1]


def _files(inputs: Sequence[str], places: _Places, problems: list[str], *, include_globs: Sequence[str],
           exclude_globs: Sequence[str], manifest_path_column: str) -> tuple[dict[str, Entry], list[str], list[Facts]]:
    """What is asked of each file the inputs name, the files sorted, and their facts; InputError for problems."""
    # Without globs every file found is kept, so each is stat'ed as soon as it is named (see _Stats).
    with _Stats() as early:
        wanted = _wanted(inputs, manifest_path_column, problems, places,
                         None if include_globs or exclude_globs else early.add)
        kept = _kept(wanted, include_globs, exclude_globs)
        if not kept:
            raise_if(problems, "inputs that cannot be used")
            why = f" ({len(wanted)} found, all left out by include/exclude globs)" if wanted else ""
            raise InputError(f"no images found in {list(inputs)}{why} "
                             f"(looked for {', '.join(sorted(DOCUMENT_SUFFIXES))})")
        paths = sorted(kept)  # linear when they come in order, as from a walk or a sorted manifest
        facts = places.facts(paths, early)
    _check_named_files_exist(kept, {path for path, found in zip(paths, facts) if not found[2]}, problems)
    raise_if(problems, "inputs that cannot be used")
    return kept, paths, facts


class _Places:
    """The locations of one listing: this machine's files, and an object store once a URL is named."""

    def __init__(self, problems: list[str], leave_out: str | None) -> None:
        self.local = LocalFiles(problems, leave_out)
        self.store: StoreFiles | None = None

    def of(self, name: str) -> Location:
        if not is_url(name):
            return self.local
        self.store = self.store or StoreFiles()
        return self.store

    def facts(self, paths: list[str], early: _Stats) -> list[Facts]:
        """The facts of every kept path: local ones stat'ed (most already, while reading), the others listed."""
        if is_local(paths[-1]):  # sorted: a URL ("s3://...") would come after every path ("/...")
            return early.facts(paths) if early.named else file_facts(paths)
        self.store = self.store or StoreFiles()
        local = [path for path in paths if is_local(path)]
        found = dict(zip(local, early.facts(local) if early.named else file_facts(local)))
        urls = [path for path in paths if not is_local(path)]
        found.update(zip(urls, self.store.facts(urls)))
        return [found[path] for path in paths]

    def fetch_documents(self, urls: list[str]) -> dict[str, bytes]:
        """The bytes of the documents at URLs whose pages must be counted (a request each, on threads)."""
        return dict(zip(urls, self.store.read_all(urls))) if urls and self.store else {}


def _wanted(inputs: Sequence[str], column: str, problems: list[str], places: _Places,
            found: Callable[[str], None] | None = None) -> dict[str, Entry]:
    """What the inputs ask of each file, in the order they name them; `found` is told each new local file."""
    wanted: dict[str, Entry] = {}
    for spec in inputs:
        for path, pages, cost, origin in _expand(spec, column, problems, places):
            entry = wanted.get(path)
            if entry is None and found is not None and is_local(path):
                found(path)
            if isinstance(entry, _Wanted):
                entry.add(pages, cost, origin)
            elif pages is None and cost is None:
                wanted[path] = entry or origin or ""
            else:
                more = wanted[path] = _Wanted()
                if entry is not None:
                    more.add(None, None, entry or None)
                more.add(pages, cost, origin)
    return wanted


def _check_named_files_exist(kept: dict[str, Entry], missing: set[str], problems: list[str]) -> None:
    """A file a manifest names must be there; one found by a walk or a glob may vanish (the worker says so)."""
    if not missing:
        return
    for path, entry in kept.items():  # in the order the inputs named them
        origin = entry if isinstance(entry, str) else entry.origin
        # A folder or FIFO exists without being a file: the worker records it as NotAFile.
        if origin and path in missing and not (is_local(path) and os.path.exists(path)):
            problems.append(f"{origin}: no such {'file' if is_local(path) else 'object'}")


def _kept(wanted: dict[str, Entry], include: Sequence[str], exclude: Sequence[str]) -> dict[str, Entry]:
    if not include and not exclude:
        return wanted
    included, excluded = _glob_matcher(include), _glob_matcher(exclude)
    return {path: entry for path, entry in wanted.items()
            if (included is None or included(path)) and not (excluded and excluded(path))}


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


def _expand(spec: str, column: str, problems: list[str], places: _Places) -> Iterable[Named]:
    """The files one input names: the one place where an input becomes paths (a new kind of input plugs in here)."""
    location = places.of(spec)
    try:
        return _expand_at(location, spec, column, problems)
    except PermissionError as exc:
        hint = ("check the credentials this machine uses for the store (docs/scale-out.md, section 7)"
                if location is places.store else "make it readable by this user")
        where = f" at {exc.filename}" if exc.filename and exc.filename != spec else ""
        raise InputError(f"{spec}: access denied{where} ({exc.strerror or exc}); {hint}") from exc


def _expand_at(location: Location, spec: str, column: str, problems: list[str]) -> Iterable[Named]:
    name = location.absolute(spec)
    kind = location.kind(name)
    if kind == "dir":
        return ((found, None, None, None) for found in location.walk(name, DOCUMENT_SUFFIXES))
    if kind == "file":
        if _suffix(name) in MANIFEST_SUFFIXES:
            return _read_manifest(location, name, column, problems)
        if _suffix(name) not in DOCUMENT_SUFFIXES:
            raise InputError(f"{spec}: not a supported image type, PDF or manifest ({', '.join(sorted(DOCUMENT_SUFFIXES | MANIFEST_SUFFIXES))})")
        return [(name, None, None, None)]
    ranged = _RANGE_SUFFIX.fullmatch(spec) if spec.endswith("]") else None
    if ranged and location.kind(location.absolute(ranged[1])) == "file":
        try:
            return [(location.absolute(ranged[1]), parse_page_range(ranged[2]), None, None)]
        except ValueError as exc:
            raise InputError(f"{spec}: {exc}") from None
    matches = location.glob(name)
    if not matches:
        raise InputError(f"{spec}: no such {location.noun} or {location.folder_noun}, and no {location.noun} "
                         "matches it as a glob pattern")
    found: list[Named] = []
    for match, match_kind in matches:
        if match_kind == "dir":
            found.extend((inner, None, None, None) for inner in location.walk(match, DOCUMENT_SUFFIXES))
        elif _suffix(match) in DOCUMENT_SUFFIXES:
            found.append((match, None, None, None))
    return found


def _read_manifest(location: Location, manifest: str, column: str, problems: list[str]) -> Iterator[Named]:
    """The good rows of a manifest, as read; each bad one is added to `problems`, naming file and line."""
    folder = location.folder_of(manifest)
    suffix = _suffix(manifest)
    try:
        with location.open_text(manifest, "" if suffix == ".csv" else None) as handle:
            for line, row in manifest_rows(handle, suffix, manifest, column, problems):
                try:
                    if isinstance(row, str):
                        yield (*_txt_row(location, folder, row), f"{manifest}:{line}: {row}")
                    else:
                        yield (*_manifest_row(location, folder, row, column), f"{manifest}:{line}: {row.get(column)}")
                except (ValueError, TypeError) as exc:
                    problems.append(f"{manifest}:{line}: {exc}")
    except OSError as exc:
        raise InputError(f"{manifest}: cannot read the manifest: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{manifest}: cannot read the manifest: {exc}") from exc


def manifest_rows(handle: Iterable[str], suffix: str, location: str, column: str,
                  problems: list[str]) -> Iterator[tuple[int, dict | str]]:
    """Each row of a manifest's lines with its line number: a `.txt` row is the name itself, any other a dict.

    `handle` yields the lines (an open file, or `io.StringIO` over an object's text, opened with newline=""
    for a `.csv`); a line that is not JSON is added to `problems`, naming `location` and the line.
    """
    if suffix == ".csv":
        reader = csv.DictReader(handle)
        if column not in (reader.fieldnames or []):
            raise InputError(f"{location}:1: no {column!r} column (columns: {reader.fieldnames}); "
                             "set manifest_path_column to the column holding the paths")
        for row in reader:
            yield reader.line_num, row
        return
    for number, text in enumerate(handle, 1):
        if suffix == ".txt":
            text = text.strip()
            if text and text[0] != "#":
                yield number, text
        elif text.strip():
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                problems.append(f"{location}:{number}: not valid JSON ({exc.msg})")
                continue
            yield number, row if isinstance(row, dict) else {"_not_object": row}


def split_range(name: str) -> tuple[str, frozenset[int]] | None:
    """`a.pdf[1-3,8]` as (`a.pdf`, its pages); None when the name ends in no range. A bad range raises ValueError."""
    ranged = _RANGE_SUFFIX.fullmatch(name) if name[-1:] == "]" else None
    return None if ranged is None else (ranged[1], parse_page_range(ranged[2]))


def _txt_row(location: Location, folder: str, name: str) -> tuple[str, Pages, None]:
    # A million-row manifest spends most of its time here: plain strings, and the range only looked for after `]`.
    path, pages = _row_source(location, folder, name), None
    if name[-1] == "]" and not (is_local(path) and os.path.lexists(path)) and (ranged := split_range(name)):
        path, pages = _row_source(location, folder, ranged[0]), ranged[1]
    if path[-6:].lower().endswith(_MANIFEST_ENDINGS):
        raise ValueError(f"{name}: a manifest cannot name another manifest")
    return path, pages, None


def _manifest_row(location: Location, folder: str, row: dict, column: str) -> tuple[str, Pages, float | None]:
    name, pages, cost = row_fields(row, column)
    path = _row_source(location, folder, name)
    if path[-6:].lower().endswith(_MANIFEST_ENDINGS):
        raise ValueError(f"{name}: a manifest cannot name another manifest")
    return path, pages, cost


def _row_source(location: Location, folder: str, name: str) -> str:
    """A row's source: a URL as given (a local manifest may name objects), else relative to the manifest's folder."""
    if "://" in name and is_url(name):
        return name
    return location.resolve(folder, name)


def row_fields(row: dict, column: str) -> tuple[str, Pages, float | None]:
    """A csv/jsonl manifest row's name, pages and cost; ValueError says what is wrong with it."""
    if "_not_object" in row:
        raise ValueError(f"expected a JSON object with a {column!r} key, got {row['_not_object']!r}")
    name = row.get(column)
    if not isinstance(name, str) or not name:
        raise ValueError(f"no path in {column!r}")
    return name, _row_pages(row.get("pages")), _row_cost(row.get("cost"))


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
    if not 0 <= cost < math.inf:  # an infinite cost would be written to the shard manifest as null
        raise ValueError(f"bad cost {value!r}: a number of pixels, 0 or more")
    return cost


def _pages_of(path: str, entry: Entry, size: int, mtime_ns: int, *, dpi: int, probe: bool, problems: list[str],
              fetched: dict[str, bytes]) -> list[Page]:
    plain = _suffix(path) not in MULTI_PAGE_SUFFIXES
    pages, costs = (None, {}) if isinstance(entry, str) else (entry.selection(), entry.costs or {})
    # Local headers are cheap to read; an object is fetched only when a document's page count is unknown.
    if is_local(path):
        reads = not plain or probe or pages not in (None, frozenset({0}))
    else:
        reads = not plain and pages is None
    if _all_costed(pages, costs, plain):
        listed = [(page, costs.get(page, costs.get(None, 0.0))) for page in sorted(pages or {0})]
    elif not reads:
        estimate = _estimate(path, size, pages, dpi)
        listed = [(page, costs.get(page, costs.get(None, estimate))) for page in sorted(pages or {0})]
    else:
        probed = probe_data(fetched[path], path, dpi=dpi) if path in fetched else probe_pages(path, dpi=dpi)
        if probed is None:  # unreadable: one unit, costed by its size, which the worker turns into a failed record
            probed, pages = [(min(pages or {0}), size * PIXELS_PER_BYTE)], None
        present = {page for page, _ in probed}
        if pages is not None and pages - present:
            missing = ", ".join(str(page + 1) for page in sorted(pages - present)[:5])
            problems.append(f"{path}: page(s) {missing} asked for, but it has {len(present)} page(s)")
        listed = [(page, costs.get(page, costs.get(None, page_cost))) for page, page_cost in probed
                  if pages is None or page in pages]
    return [Page(path, page, float(page_cost), size, mtime_ns) for page, page_cost in listed]


def _counts_pages(entry: Entry) -> bool:
    """Whether a multi-page document must be read to know its pages: the inputs did not say which."""
    return isinstance(entry, str) or entry.every_page


def _estimate(path: str, size: int, pages: Pages, dpi: int) -> float:
    """A page's cost without reading it: pixels from the file size, or a letter page for a PDF's page."""
    suffix = _suffix(path)
    if suffix == ".pdf":
        return LETTER_INCHES * dpi * dpi
    if suffix in MULTI_PAGE_SUFFIXES:  # a TIFF's pages share its bytes
        return size * PIXELS_PER_BYTE / max(len(pages or ()), 1)
    return size * PIXELS_PER_BYTE


def _all_costed(pages: Pages, costs: dict[int | None, float], plain: bool) -> bool:
    # A manifest's costs spare opening the file when they cover every page it asks for.
    if pages is None:
        return plain and None in costs
    return None in costs or all(page in costs for page in pages)


def _glob_matcher(globs: Sequence[str]) -> Callable[[str], bool] | None:
    """Whether a path or its file name matches any of `globs` (as `fnmatchcase`), one regex for them all."""
    if not globs:
        return None
    pattern = re.compile("|".join(f"(?:{fnmatch.translate(glob)})" for glob in globs))
    return lambda path: bool(pattern.match(path) or pattern.match(os.path.basename(path)))


def raise_if(problems: list[str], what: str) -> None:
    """Raise InputError listing the first `_MAX_LISTED` problems, if there are any."""
    if problems:
        more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        raise InputError(f"{what}:\n  " + "\n  ".join(problems[:_MAX_LISTED]) + more)


def _suffix(name: str | os.PathLike) -> str:
    name = os.fspath(name)
    dot = name.rfind(".")
    return name[dot:].lower() if dot >= 0 else ""  # only ever compared with known suffixes


class _Stats:
    """`local_facts` of files on threads while the inputs are still being read, in batches as they are named.

    Reading a million-row manifest holds one core in Python; a stat is mostly kernel time with the GIL
    released, so the stats run beside the reading instead of after it (a million: 6.9 s instead of 9.5 s
    here). Threads: 2 where a stat is quick (more fight the reading for the GIL: 16 took 10-12 s), 16 where
    each is a round trip (NFS, a cold disk), timed on the first files.
    """

    _BATCH = 5000
    _QUICK_S = 50e-6

    def __init__(self) -> None:
        self.named = 0
        self._batch: list[str] = []
        self._parts: list[tuple[list[str], Future]] = []
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> "_Stats":
        return self

    def __exit__(self, *exc_info) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def add(self, path: str) -> None:
        self.named += 1
        self._batch.append(path)
        if len(self._batch) >= self._BATCH:
            batch, self._batch = self._batch, []
            if self._pool is None:
                started = time.perf_counter()
                sample = [local_facts(path) for path in batch[:50]]
                quick = (time.perf_counter() - started) / len(sample) < self._QUICK_S
                self._pool = ThreadPoolExecutor(2 if quick else 16, thread_name_prefix="stat")
                self._parts.append((batch[:50], _done(sample)))
                batch = batch[50:]
            self._parts.append((batch, self._pool.submit(lambda: [local_facts(path) for path in batch])))

    def facts(self, paths: list[str]) -> list[Facts]:
        """The facts of `paths`, each of which was added."""
        found = dict(zip(self._batch, file_facts(self._batch)))  # the last, partial batch (all of a few files)
        for batch, future in self._parts:
            found.update(zip(batch, future.result()))
        return [found[path] for path in paths]


def _done(result: object) -> Future:
    future: Future = Future()
    future.set_result(result)
    return future
