"""Storage: sources that are URLs (s3://, gs://, az://, https://...) read through fsspec.

A location is a URL when it starts with `scheme://`, except `file://`, which names a path on this
machine and becomes that path (`local_path`). Any protocol fsspec knows works once its package is
installed (s3fs, gcsfs, adlfs: the `cloud` extra); credentials come from each library's own
environment and config (AWS_* and ~/.aws, GOOGLE_APPLICATION_CREDENTIALS, ...).

What a URL has instead of `os.stat`: the size and modification time its listing gives
(`object_stat`), and what it has instead of `open`: its whole bytes in one GET (`read_object`),
kept in a worker for the last few objects so that hashing a page's object after decoding it costs no
second GET.
Plain module: never imports Prefect.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import functools
import hashlib
import os
import posixpath
import re
import stat
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import fsspec
from fsspec.spec import AbstractFileSystem

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_LIST_MIN = 100  # wanted objects in one folder from which one listing beats a request per object
_RECENT = 3  # objects kept in memory: the page being read, the one read ahead, and one spare

Stat = tuple[int, int]  # size in bytes, modification time in ns (0 when the store gives none)


def is_url(location: str) -> bool:
    """True for `scheme://...` other than `file://` (a local path)."""
    return _URL.match(location) is not None and not location[:7].lower() == "file://"


def local_path(location: str) -> str:
    """A `file://` URL as the plain path it names; anything else unchanged."""
    if location[:7].lower() != "file://":
        return location
    parsed = urlparse(location)
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"{location}: file:// URLs name a path on this machine; drop the host "
                         f"{parsed.netloc!r} and mount the share at the same path on every machine")
    return parsed.path


def check_protocol(url: str) -> None:
    """Fail now, saying what to install, when no fsspec implementation for the URL's scheme is installed."""
    scheme = url.split("://", 1)[0].lower()
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as exc:
        raise ValueError(f"{url}: {exc} (pip install 'ocrfleet[cloud]' brings s3fs and gcsfs)") from None
    except ValueError:
        raise ValueError(f"{url}: no fsspec file system for {scheme}://") from None


def split_url(url: str) -> tuple[AbstractFileSystem, str]:
    """The file system of the URL's scheme and the URL's path inside it (`bucket/key` for S3)."""
    fs = _filesystem(url.split("://", 1)[0].lower(), os.getpid())
    return fs, fs._strip_protocol(url)


@functools.lru_cache(maxsize=None)
def _filesystem(scheme: str, pid: int) -> AbstractFileSystem:
    # One instance per scheme and process, as fsspec's own cache (which a forked child must not share) gives,
    # without its cost per call; options come from fsspec's config.
    return fsspec.filesystem(scheme)


def full_url(fs: AbstractFileSystem, path: str) -> str:
    """A path inside `fs` as the URL a record names (`s3://bucket/key`)."""
    return fs.unstrip_protocol(path)


def object_stat(info: dict) -> Stat:
    """Size and mtime from an fsspec listing or `info` (S3 `LastModified`, GCS `updated`, Azure `last_modified`).

    Stores give whole seconds (S3, Azure) or milliseconds (GCS), so an object rewritten within one with
    the same size would look unchanged: its version tag (ETag, generation), hashed into the digits below
    a millisecond, tells the two apart. The result identifies a version; it is not a precise time.
    """
    mtime_ns = _mtime_ns(info)
    version = next((str(info[key]) for key in _VERSION_KEYS if info.get(key)), None)
    if version and mtime_ns:
        tag = int.from_bytes(hashlib.sha256(version.encode()).digest()[:8], "big") % 1_000_000
        mtime_ns = mtime_ns // 1_000_000 * 1_000_000 + tag
    return int(info.get("size") or 0), mtime_ns


_VERSION_KEYS = ("ETag", "etag", "generation", "md5Hash", "version_id")


def _mtime_ns(info: dict) -> int:
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified", "created"):
        value = info.get(key)
        if isinstance(value, str):
            try:
                value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
        if isinstance(value, datetime.datetime):
            return int(value.timestamp() * 1_000_000) * 1000
        if isinstance(value, (int, float)) and value:
            return int(value * 1_000_000_000)
    return 0


def stat_sources(sources: Iterable[str], threads: int = 16) -> dict[str, Stat | None]:
    """Size and mtime of each source (URL or local path); None for one that is missing or not a file.

    URLs in a folder holding many of them are found with one listing of the folder (a request per
    1,000 objects on S3); the others with a request each, on threads.
    """
    found: dict[str, Stat | None] = {}
    by_folder: dict[tuple[int, str], list[str]] = collections.defaultdict(list)
    for source in sources:
        if is_url(source):
            fs, path = split_url(source)
            by_folder[(id(fs), posixpath.dirname(path))].append(source)
        else:
            found[source] = _local_stat(source)
    singles = []
    for (_, folder), urls in by_folder.items():
        if len(urls) >= _LIST_MIN:
            found.update(_listed(folder, urls))
        else:
            singles += urls
    with ThreadPoolExecutor(min(threads, max(len(singles), 1)), thread_name_prefix="stat") as pool:
        found.update(zip(singles, pool.map(_url_stat, singles)))
    return found


def _local_stat(path: str) -> Stat | None:
    try:
        result = os.stat(path)
    except OSError:
        return None
    return (result.st_size, result.st_mtime_ns) if stat.S_ISREG(result.st_mode) else None


def _url_stat(url: str) -> Stat | None:
    fs, path = split_url(url)
    fs.invalidate_cache(path)  # a long-lived process must see the object as it is now
    try:
        info = fs.info(path)
    except (FileNotFoundError, PermissionError):
        return None
    return object_stat(info) if info.get("type") == "file" else None


def _listed(folder: str, urls: list[str]) -> dict[str, Stat | None]:
    fs, _ = split_url(urls[0])
    fs.invalidate_cache(folder)
    try:
        entries = {full_url(fs, info["name"]): info for info in fs.ls(folder, detail=True)}
    except (FileNotFoundError, PermissionError):
        entries = {}
    return {url: object_stat(entries[url]) if url in entries and entries[url].get("type") == "file" else None
            for url in urls}


_recent: collections.OrderedDict[str, bytes] = collections.OrderedDict()
_recent_lock = threading.Lock()
_remembering = 0


@contextlib.contextmanager
def remembering_objects() -> Iterator[None]:
    """While inside, the last few objects read stay in memory: a worker hashes a page's object after decoding it.

    Only there: a planner, or any long-lived process, must see an object rewritten since, not a copy.
    """
    global _remembering
    with _recent_lock:
        _remembering += 1
    try:
        yield
    finally:
        with _recent_lock:
            _remembering -= 1
            if not _remembering:
                _recent.clear()


def read_object(url: str) -> bytes:
    """The object's whole bytes in one GET (fsspec's exceptions: FileNotFoundError, PermissionError...)."""
    with _recent_lock:
        if url in _recent:
            _recent.move_to_end(url)
            return _recent[url]
    fs, path = split_url(url)
    data = fs.cat_file(path)
    with _recent_lock:
        if _remembering:
            _recent[url] = data
            while len(_recent) > _RECENT:
                _recent.popitem(last=False)
    return data


def url_sha256(url: str) -> str | None:
    """SHA-256 of the object's bytes: from memory when just read, else streamed; None when unreadable."""
    with _recent_lock:
        data = _recent.get(url)
    if data is not None:
        return hashlib.sha256(data).hexdigest()
    digest = hashlib.sha256()
    fs, path = split_url(url)
    try:
        fs.invalidate_cache(path)
        with fs.open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    except Exception:  # any store error: the worker will say why when it reads the page
        return None
    return digest.hexdigest()
