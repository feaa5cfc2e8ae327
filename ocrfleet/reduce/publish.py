"""Publish: copy a finished run's outputs to `publish_to`, a path or an fsspec URL, `summary.json` last.

The run dir itself stays on POSIX storage (records are appended, files renamed into place, the dir
flock'ed); publishing is the one step that writes elsewhere, after a valid reduce:

Publish deletes and overwrites only what it published. `.ocrfleet-published.json` at the target lists the
files the last publish wrote there; a file at the target under a published name (`summary.json`,
`results.jsonl`, `text/...`) that this list does not hold is someone else's: a publish that would overwrite
one is refused before anything changes (`PublishRefused`, naming it), and one it would not write is left alone.

1. the list is extended with this run's files first, so that a publish that dies halfway leaves nothing of
   ours unlisted; then the target's `summary.json` (ours) is removed: while it is absent the target is changing;
2. `results.jsonl`, `failures.jsonl`, `results.parquet` and the `text/`, `pages/`, `vis/` trees are copied.
   On a local path or `file://` URL (local disk, NFS) each file is written beside its target and renamed,
   so a reader sees the old file or the new one. An object store has no rename: each file is one whole-object
   PUT (`fs.put`, concurrently), and an object appears whole or not at all, never half-written;
3. files an earlier publish listed that this run no longer has are removed, and the list becomes this run's;
4. `summary.json` is written last: its presence means every file above is the finished run's.

So a reader that finds `summary.json` (and reads it before the rest) gets one complete run.
Plain module: never imports Prefect.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import NamedTuple

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from ocrfleet.records import write_atomic
from ocrfleet.inputs.storage import local_path
from ocrfleet.reduce.outputs import OWN_FILES

PUBLISHED = ("results.jsonl", "failures.jsonl", "results.parquet", "text", "pages", "vis")
MARKER = "summary.json"
LISTING = ".ocrfleet-published.json"  # the files the last publish wrote at the target, relative POSIX paths


class PublishRefused(FileExistsError):
    """The target holds files ocrfleet did not publish under names a publish would overwrite."""


class Published(NamedTuple):
    target: str
    files: int  # copied, the marker included
    bytes: int
    removed: int  # stale files removed from the target


def publish(run_dir: Path, target: str) -> Published:
    """Copy the finished outputs of `run_dir` to `target` (a path or URL), `summary.json` last."""
    run_dir = Path(run_dir)
    marker = run_dir / MARKER
    if not marker.is_file():
        raise FileNotFoundError(f"{marker}: no summary.json: the run has not been reduced, nothing to publish")
    fs, root = url_to_fs(local_path(target))
    root = root.rstrip("/")
    fs.invalidate_cache(root)  # what an earlier publish from this process listed may have changed since
    files = finished_files(run_dir)
    ours, there = _listed(fs, root), _present(fs, root)
    foreign = sorted((there - ours) & {*files, MARKER})
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise PublishRefused(f"publish_to {target} holds files ocrfleet did not publish there ({shown}; no "
                             f"{LISTING} lists them): refused rather than overwrite them; publish to another "
                             "target, or move those files away")
    _write_listing(fs, root, ours | {*files, MARKER})
    if MARKER in there:
        fs.rm_file(f"{root}/{MARKER}")
    sources, targets = [str(run_dir / name) for name in files], [f"{root}/{name}" for name in files]
    if isinstance(fs, LocalFileSystem):
        for source, destination in zip(sources, targets):
            _copy_atomic(Path(source), Path(destination))
    elif files:
        fs.put(sources, targets)  # one whole-object PUT each, as many at once as the file system batches
    stale = sorted(f"{root}/{name}" for name in (ours & there) - {*files, MARKER})
    if stale:
        fs.rm(stale)
    _write_listing(fs, root, {*files, MARKER})
    if isinstance(fs, LocalFileSystem):
        write_atomic(Path(root) / MARKER, marker.read_text(encoding="utf-8"))
    else:
        fs.put_file(str(marker), f"{root}/{MARKER}")
    size = sum(os.path.getsize(source) for source in sources) + marker.stat().st_size
    return Published(target=target, files=len(files) + 1, bytes=size, removed=len(stale))


def is_published(run_dir: Path, target: str) -> bool:
    """Whether `target` holds this run's outputs: its `summary.json` is the run's, byte for byte."""
    try:
        fs, root = url_to_fs(local_path(target))
        return fs.cat_file(f"{root.rstrip('/')}/{MARKER}") == (Path(run_dir) / MARKER).read_bytes()
    except (OSError, ValueError):
        return False


def finished_files(run_dir: Path) -> list[str]:
    """The run's outputs to publish, as sorted relative POSIX paths, `summary.json` not among them."""
    found = []
    for name in PUBLISHED:
        path = run_dir / name
        if path.is_file():
            found.append(name)
        for folder, _, names in os.walk(path):
            relative = Path(folder).relative_to(run_dir).as_posix()
            # A crashed writer's temporary file (`.NAME.PID.tmp`, see ocrfleet.reduce.outputs) is not an output.
            # Nor is the folder's list of the files the run wrote there (`OWN_FILES`).
            found += [f"{relative}/{file}" for file in names
                      if not (file.startswith(".") and file.endswith(".tmp")) and file != OWN_FILES]
    return sorted(found)


def _copy_atomic(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name[:200]}.{os.getpid()}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _present(fs, root: str) -> set[str]:
    """The files at the target under the names a publish writes, relative to it."""
    found = []
    for name in (*PUBLISHED, MARKER):
        try:
            found += fs.find(f"{root}/{name}")
        except FileNotFoundError:
            continue
    return {path[len(root) + 1:] for path in found}


def _listed(fs, root: str) -> set[str]:
    """The files an earlier publish wrote at the target, from its listing (none when absent)."""
    try:
        return set(json.loads(fs.cat_file(f"{root}/{LISTING}"))["files"])
    except FileNotFoundError:
        return set()


def _write_listing(fs, root: str, files: set[str]) -> None:
    text = json.dumps({"files": sorted(files)}, indent=0) + "\n"
    if isinstance(fs, LocalFileSystem):
        write_atomic(Path(root) / LISTING, text)
    else:
        fs.pipe_file(f"{root}/{LISTING}", text.encode())
