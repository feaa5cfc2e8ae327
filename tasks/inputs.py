"""Inputs: turn the user's files, directories and glob patterns into a sorted list of pages."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tasks.records import PageRef

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


class InputError(ValueError):
    """An input argument that names nothing usable."""


def collect_pages(inputs: Sequence[str]) -> list[PageRef]:
    """Every page named by `inputs`, sorted by source and de-duplicated; cost is the file size."""
    files: set[str] = set()
    for spec in inputs:
        files.update(_expand(spec))
    if not files:
        raise InputError(f"no images found in {list(inputs)} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return [_page(source) for source in sorted(files)]


def _expand(spec: str) -> list[str]:
    path = Path(spec).expanduser()
    if path.is_dir():
        return [_absolute(found) for found in _walk(path)]
    if path.exists() or path.is_symlink():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise InputError(f"{spec}: not a supported image type ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return [_absolute(path)]
    matches = sorted(glob.glob(str(path), recursive=True))
    if not matches:
        raise InputError(f"{spec}: no such file or directory, and no file matches it as a glob pattern")
    found: list[str] = []
    for match in matches:
        match_path = Path(match)
        if match_path.is_dir():
            found.extend(_absolute(inner) for inner in _walk(match_path))
        elif match_path.suffix.lower() in IMAGE_SUFFIXES:
            found.append(_absolute(match_path))
    return found


def _walk(folder: Path) -> Iterable[Path]:
    # os.walk does not follow directory symlinks, so a symlink loop cannot recurse forever.
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in names:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield Path(root) / name


def _absolute(path: Path) -> str:
    # abspath keeps symlinks as named: the record's source is the path the user gave, made absolute.
    return os.path.abspath(path)


def _page(source: str) -> PageRef:
    try:
        stat = os.stat(source)
    except OSError:  # unreadable now: the worker turns it into a failed record with the reason
        return PageRef(source=source)
    return PageRef(source=source, cost=float(stat.st_size), size=stat.st_size, mtime_ns=stat.st_mtime_ns)
