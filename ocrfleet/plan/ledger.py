"""Ledger: the records an output dir already holds, and which of them a new plan may reuse.

An output dir accumulates: `results.jsonl` from the last finished run, `carried.jsonl` (the earlier
records the current plan reuses) and `records/*.jsonl` from workers, possibly of a run that was
killed. A record is reused when its page, its file's content and the settings that made it are the
same; everything else is planned again. A failure caused by the machine rather than the file is planned
again, except a dangling symlink's while the link is unchanged (a folder holding one reaches "nothing to do"). So a rerun after a crash, a nightly run over a growing folder,
and a run with a new model all go through this one rule.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from ocrfleet.inputs.pages import PageError, open_regular
from ocrfleet.records import Page, PageRef, RecordIdentity, complete_lines
from ocrfleet.inputs.storage import is_url, url_sha256

CARRIED = "carried.jsonl"

# Failures caused by the machine rather than the file: planned again, never reused.
TRANSIENT = frozenset({"FileVanished", "PermissionDenied", "StorageUnavailable"})

Key = tuple[str, int]
P = TypeVar("P", Page, PageRef)


class Prior:
    """An earlier record: its identity (parsed) and its JSON line (kept as written, never re-encoded)."""

    __slots__ = ("identity", "line")

    def __init__(self, identity: RecordIdentity, line: str) -> None:
        self.identity, self.line = identity, line


def ledger_files(run_dir: Path) -> list[Path]:
    """Where earlier records lie, oldest first: later files win for the same page."""
    return [run_dir / "results.jsonl", run_dir / CARRIED, *sorted((run_dir / "records").glob("*.jsonl"))]


def prior_records(run_dir: Path) -> dict[Key, Prior]:
    """Every finished record in the output dir, by page; torn or unparsable lines are ignored."""
    found: dict[Key, Prior] = {}
    for path in ledger_files(run_dir):
        for line in complete_lines(path):
            try:
                identity = RecordIdentity.model_validate_json(line)
            except ValidationError:
                continue  # a damaged line is not a record: the page is simply planned again
            found[identity.key] = Prior(identity, line)
    return found


def split_done(pages: Iterable[P], prior: dict[Key, Prior], settings_for: Callable[[P], str],
               hasher: Callable[[str], str | None] | None = None) -> tuple[list[P], list[Prior]]:
    """Pages still to do, and the earlier records that stand for the others."""
    if not prior:
        return list(pages), []  # a first run: a million lookups would find nothing
    hasher = hasher or functools.cache(file_sha256)
    todo, reused = [], []
    for page in pages:
        earlier = prior.get(page.key)
        if earlier is not None and reusable(earlier.identity, page, settings_for(page), hasher):
            reused.append(earlier)
        else:
            todo.append(page)
    return todo, reused


def reusable(record: RecordIdentity, page: Page | PageRef, settings: str, hasher: Callable[[str], str | None]) -> bool:
    if record.settings != settings:
        return False
    if record.status == "failed" and record.error_class in TRANSIENT and not _still_dangling(record, page):
        return False
    if page.mtime_ns and record.size == page.size and record.mtime_ns == page.mtime_ns:
        return True  # unchanged on disk, as make and rsync judge it; only a touched file costs a hash
    return record.sha256 is not None and record.sha256 == hasher(page.source)


def _still_dangling(record: RecordIdentity, page: Page | PageRef) -> bool:
    """A `FileVanished` page that is a dangling symlink, the link unchanged: its failure stands until the link moves.

    Planning gives a broken link its own size and mtime (lstat), so the link, not its missing target, is judged;
    a file that was really gone for a while has its own facts, and is tried again.
    """
    return (record.error_class == "FileVanished" and bool(page.mtime_ns) and record.size == page.size
            and record.mtime_ns == page.mtime_ns and not is_url(page.source) and os.path.islink(page.source)
            and not os.path.exists(page.source))


def file_sha256(path: str) -> str | None:
    """The hex SHA-256 of a file's or a URL's bytes; None when it cannot be read (the worker will say why)."""
    if is_url(path):
        return url_sha256(path)
    digest = hashlib.sha256()
    try:
        with open_regular(path) as handle:  # a FIFO or /dev/zero would never end
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except (OSError, PageError):
        return None
    return digest.hexdigest()
