"""Inputs at URLs: object-store prefixes, globs, objects and manifests, listed through fsspec into pages.

`collect_pages` hands over every input that is a URL, or a manifest that names one (a corpus chunk's
manifest over a bucket), with the same meaning as for files:

- a prefix (`s3://bucket/scans/`), listed recursively with one flat listing (`fs.find`);
- a glob (`s3://bucket/scans/**/*.png`, `fs.glob`); a page range (`s3://bucket/a.pdf[1-5,8]`);
- an object (`s3://bucket/a.pdf`) or a manifest object (`.txt`/`.csv`/`.jsonl`), whose relative paths are
  resolved against its own folder URL; a manifest may also name URLs, and a local manifest may too.

A page's `source` is the object's full URL; its size and mtime come from the listing (S3 `LastModified`,
whole seconds), never from a request per object. Costs: an image's is estimated from its size (reading
headers would be a request per object); a multi-page PDF or TIFF must be read to count its pages, so
each is fetched once at planning, on threads (a manifest with a `pages` column spares that).
"""

from __future__ import annotations

import io
import os
import posixpath
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatchcase
from pathlib import Path

from ocrfleet.inputs.listing import (DOCUMENT_SUFFIXES, MANIFEST_SUFFIXES, MULTI_PAGE_SUFFIXES, PIXELS_PER_BYTE, InputError,
                          manifest_rows, raise_if, row_fields, split_range)
from ocrfleet.inputs.pages import probe_data
from ocrfleet.records import PageRef
from ocrfleet.inputs.storage import Stat, full_url, is_url, object_stat, read_object, split_url, stat_sources

_FETCH_THREADS = 8
LETTER_INCHES = 8.5 * 11  # the page cost of a PDF page not read at planning: a letter page at `dpi`

Pages = frozenset[int] | None


class _Wanted:
    """What the inputs ask of one source: pages (None: all), manifest costs, its stat, the line naming it."""

    __slots__ = ("pages", "costs", "stat", "origin")

    def __init__(self) -> None:
        self.pages: set[int] | None = set()
        self.costs: dict[int | None, float] = {}
        self.stat: Stat | None = None
        self.origin: str | None = None

    def add(self, pages: Pages, cost: float | None, stat: Stat | None, origin: str | None) -> None:
        self.pages = None if pages is None or self.pages is None else self.pages | pages
        if cost is not None:
            self.costs.update(dict.fromkeys(pages or (None,), cost))
        self.stat, self.origin = self.stat or stat, self.origin or origin


Named = tuple[str, Pages, "float | None", "Stat | None", "str | None"]  # source, pages, cost, stat, origin


def names_remote(spec: str) -> bool:
    """Whether `spec` is listed here: a URL, or a local manifest that names one."""
    if is_url(spec):
        return True
    if _suffix(spec) not in MANIFEST_SUFFIXES:
        return False
    try:  # one extra read of a local manifest: cheap beside planning what it names
        return b"://" in Path(spec).expanduser().read_bytes()
    except OSError:
        return False


def collect_remote(inputs: Sequence[str], local: Callable[[list[str]], list[PageRef]], *, dpi: int,
                   include_globs: Sequence[str], exclude_globs: Sequence[str],
                   manifest_path_column: str) -> list[PageRef]:
    """The pages of every input: URLs and manifests naming them here, the others by `local` (collect_pages)."""
    remote = [names_remote(spec) for spec in inputs]
    wanted: dict[str, _Wanted] = {}
    problems: list[str] = []
    for spec in (spec for spec, is_remote in zip(inputs, remote) if is_remote):
        try:
            named = _expand(spec, manifest_path_column, problems)
        except PermissionError as exc:
            raise InputError(f"{spec}: access denied ({exc}); check the credentials this machine uses for the "
                             "store (docs/scale-out.md, section 7)") from exc
        for source, pages, cost, stat, origin in named:
            wanted.setdefault(source, _Wanted()).add(pages, cost, stat, origin)
    kept = {source: entry for source, entry in wanted.items() if _selected(source, include_globs, exclude_globs)}
    unknown = [source for source, entry in kept.items() if entry.stat is None]
    for source, stat in stat_sources(unknown).items():
        kept[source].stat = stat
        if stat is None:
            problems.append(f"{kept[source].origin or source}: no such object or file")
    raise_if(problems, "inputs that cannot be used")
    pages = _page_refs(kept, dpi)
    rest = [spec for spec, is_remote in zip(inputs, remote) if not is_remote]
    try:
        pages += local(rest) if rest else []
    except InputError as exc:
        if not pages or not str(exc).startswith("no images found"):
            raise  # an empty local folder beside a bucket that has pages is not an error
    if not pages:
        why = f" ({len(wanted)} found, all left out by include/exclude globs)" if wanted else ""
        raise InputError(f"no images found in {list(inputs)}{why} (looked for {', '.join(sorted(DOCUMENT_SUFFIXES))})")
    return sorted({page.key: page for page in pages}.values(), key=lambda page: page.key)


def _expand(spec: str, column: str, problems: list[str]) -> list[Named]:
    if not is_url(spec):
        return _read_manifest(spec, column, problems)
    fs, path = split_url(spec)
    fs.invalidate_cache()  # listings cached by an earlier plan in this process may be stale
    info = _info(fs, path)
    if info is not None and info.get("type") == "directory":
        return _found(fs, fs.find(path, detail=True))
    if info is not None:
        if _suffix(path) in MANIFEST_SUFFIXES:
            return _read_manifest(spec, column, problems)
        if _suffix(path) not in DOCUMENT_SUFFIXES:
            raise InputError(f"{spec}: not a supported image type, PDF or manifest "
                             f"({', '.join(sorted(DOCUMENT_SUFFIXES | MANIFEST_SUFFIXES))})")
        return [(full_url(fs, path), None, None, object_stat(info), None)]
    ranged = _ranged(spec)
    if ranged is not None:
        base_info = _info(fs, split_url(ranged[0])[1])
        if base_info is not None and base_info.get("type") == "file":
            return [(ranged[0], ranged[1], None, object_stat(base_info), None)]
    if any(char in path for char in "*?["):  # a glob pattern, as fsspec's glob reads one
        matches = fs.glob(path, detail=True)
        found = _found(fs, {name: info for name, info in matches.items() if info.get("type") == "file"})
        for folder in (name for name, info in matches.items() if info.get("type") == "directory"):
            found += _found(fs, fs.find(folder, detail=True))
        if found:
            return found
    raise InputError(f"{spec}: no such object or prefix, and no object matches it as a glob pattern")


def _info(fs, path: str) -> dict | None:
    try:
        return fs.info(path)
    except FileNotFoundError:
        return None


def _found(fs, listing: dict[str, dict]) -> list[Named]:
    return [(full_url(fs, name), None, None, object_stat(info), None) for name, info in sorted(listing.items())
            if info.get("type") == "file" and _suffix(name) in DOCUMENT_SUFFIXES]


def _ranged(name: str) -> tuple[str, frozenset[int]] | None:
    """`a.pdf[1-3]` as (`a.pdf`, pages); None when the name carries no (valid) range."""
    try:
        return split_range(name)
    except ValueError:
        return None


def _read_manifest(location: str, column: str, problems: list[str]) -> list[Named]:
    """A manifest's good rows (at a URL or local); each bad row is added to `problems` with its line."""
    try:
        if is_url(location):
            fs, path = split_url(location)
            text, folder = read_object(location).decode("utf-8"), full_url(fs, posixpath.dirname(path))
        else:
            local = Path(location).expanduser()
            text, folder = local.read_text(encoding="utf-8"), os.path.dirname(os.path.abspath(local))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{location}: cannot read the manifest: {exc}") from exc
    suffix = _suffix(location)
    rows: list[Named] = []
    lines = io.StringIO(text, newline="" if suffix == ".csv" else None)
    for line, row in manifest_rows(lines, suffix, location, column, problems):
        try:
            named = row if isinstance(row, str) else row.get(column)
            rows.append((*_row(folder, row, column), None, f"{location}:{line}: {named}"))
        except (ValueError, TypeError) as exc:
            problems.append(f"{location}:{line}: {exc}")
    return rows


def _row(folder: str, row: dict | str, column: str) -> tuple[str, Pages, float | None]:
    """A row's source, pages and cost: a `.txt` row is a name, which may end in a page range."""
    if isinstance(row, str):
        name, pages, cost = row, None, None
        ranged = _ranged(name)
        if ranged is not None and (is_url(name) or not os.path.lexists(_resolve(folder, name))):
            name, pages = ranged
    else:
        name, pages, cost = row_fields(row, column)
    source = _resolve(folder, name)
    if _suffix(source) in MANIFEST_SUFFIXES:
        raise ValueError(f"{name}: a manifest cannot name another manifest")
    return source, pages, cost


def _resolve(folder: str, name: str) -> str:
    """A manifest row's source: a URL as given, else relative to the manifest's folder (a URL or a path)."""
    if is_url(name):
        return name
    if is_url(folder):
        if name.startswith(("/", "~")):
            raise ValueError(f"{name}: a manifest at a URL names URLs, or paths relative to its own folder")
        scheme, path = folder.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(path, name))}"
    return os.path.normpath(os.path.join(folder, os.path.expanduser(name)))


def _page_refs(kept: dict[str, _Wanted], dpi: int) -> list[PageRef]:
    """Each wanted source's pages with costs; multi-page documents without given pages are read to count them."""
    unknown = [source for source, entry in kept.items()
               if entry.pages is None and _suffix(source) in MULTI_PAGE_SUFFIXES]
    probed = dict(zip(unknown, _probe_all(unknown, dpi)))
    refs = []
    for source, entry in kept.items():
        size, mtime_ns = entry.stat or (0, 0)
        for page, cost in _costs(source, entry, probed.get(source, ()), dpi):
            refs.append(PageRef(source=source, page=page, cost=float(cost), size=size, mtime_ns=mtime_ns))
    return refs


def _costs(source: str, entry: _Wanted, probed: list[tuple[int, float]] | None, dpi: int) -> list[tuple[int, float]]:
    # Pages named without costs are not read: one that does not exist fails as PageOutOfRange in its worker.
    size = entry.stat[0] if entry.stat else 0
    suffix = _suffix(source)
    if suffix not in MULTI_PAGE_SUFFIXES:
        estimate = size * PIXELS_PER_BYTE
    elif suffix == ".pdf":
        estimate = LETTER_INCHES * dpi * dpi
    else:  # a TIFF's pages share its bytes
        estimate = size * PIXELS_PER_BYTE / max(len(entry.pages or ()), 1)
    if probed is None:  # unreadable: one unit, which the worker turns into a failed record saying why
        return [(0, 0.0)]
    if probed:
        return [(page, entry.costs.get(page, entry.costs.get(None, cost))) for page, cost in probed]
    pages = sorted(entry.pages) if entry.pages is not None else [0]
    return [(page, entry.costs.get(page, entry.costs.get(None, estimate))) for page in pages]


def _probe_all(sources: list[str], dpi: int) -> Iterator[list[tuple[int, float]] | None]:
    """Each document's pages and costs, fetched on threads a few at a time and parsed here, one after another."""
    def fetch(source: str) -> bytes:
        try:
            return read_object(source) if is_url(source) else Path(source).read_bytes()
        except Exception:  # the worker reads it again and records why it cannot
            return b""

    with ThreadPoolExecutor(_FETCH_THREADS, thread_name_prefix="probe") as pool:
        for start in range(0, len(sources), _FETCH_THREADS * 2):  # at most this many documents in memory
            for source, data in zip(sources[start:], pool.map(fetch, sources[start:start + _FETCH_THREADS * 2])):
                yield probe_data(data, source, dpi=dpi)


def _selected(source: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """The same rule as for files: a glob matches the whole source or its name."""
    name = source.rsplit("/", 1)[-1]
    if include and not any(fnmatchcase(source, glob) or fnmatchcase(name, glob) for glob in include):
        return False
    return not any(fnmatchcase(source, glob) or fnmatchcase(name, glob) for glob in exclude)


def _suffix(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return base[base.rfind("."):].lower() if "." in base else ""
