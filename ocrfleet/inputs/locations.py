"""Locations: where inputs live (folders on this machine, or an object store through fsspec), behind one interface.

`ocrfleet.inputs.listing` expands every input, reads manifests, merges what they ask of each file and costs
the pages, once for both kinds; a location answers only the questions whose answers differ: is a name a
folder or a file, what a folder holds (recursively) or a glob matches, a manifest's text, how a manifest's
relative row resolves, and each file's size, mtime and whether it is a regular file (`Facts`).

Local names are plain absolute path strings (a million `Path` objects cost seconds); a store's names are
full URLs, and its listings give the facts of what they list, so no object is asked twice.
"""

from __future__ import annotations

import errno
import glob
import io
import logging
import os
import posixpath
import stat
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Literal, Protocol

from ocrfleet.inputs.storage import full_url, object_stat, read_object, split_url, stat_sources

Kind = Literal["dir", "file"] | None  # None: no such name
Facts = tuple[int, int, bool]  # a file's size, mtime_ns and whether it is a regular file
MISSING: Facts = (0, 0, False)
_FETCH_THREADS = 8

log = logging.getLogger(__name__)


class Location(Protocol):
    """What differs between local files and objects; everything else is `listing`'s, once."""

    noun: str  # what a missing name is said to be: "file" or "object"
    folder_noun: str

    def absolute(self, spec: str) -> str: ...
    def kind(self, name: str) -> Kind: ...
    def walk(self, folder: str, documents: frozenset[str]) -> Iterable[str]: ...
    def glob(self, pattern: str) -> list[tuple[str, Kind]]: ...
    def open_text(self, name: str, newline: str | None) -> IO[str]: ...
    def folder_of(self, manifest: str) -> str: ...
    def resolve(self, folder: str, name: str) -> str: ...
    def facts(self, names: list[str]) -> list[Facts]: ...


class LocalFiles:
    """Files on this machine (or a mount): walks by `os.walk`, facts by threaded `os.stat`.

    Each real folder is walked once, under the first name the inputs reach it by (a folder and a symlink
    to it, both named, are one folder); symlinks inside a walk are not followed, so a loop cannot recurse.
    A folder that cannot be listed is a problem (never skipped silently), and `leave_out` (the run's own
    output dir) is never walked into.
    """

    noun, folder_noun = "file", "directory"

    def __init__(self, problems: list[str], leave_out: str | None = None) -> None:
        self._problems = problems
        # The output dir as named and as resolved: a glob's matches are compared by name (a realpath each
        # would cost seconds for a million), a folder about to be walked by its real path.
        self._leave_out = tuple({os.path.abspath(leave_out), os.path.realpath(leave_out)}) if leave_out else ()
        self._walked: set[tuple[int, int]] = set()

    def absolute(self, spec: str) -> str:
        # abspath keeps symlinks as named: the record's source is the path the user gave, made absolute.
        return os.path.abspath(os.path.expanduser(spec))

    def kind(self, name: str) -> Kind:
        try:
            return "dir" if stat.S_ISDIR(os.stat(name).st_mode) else "file"
        except PermissionError:
            raise  # a folder on the way cannot be searched: the input is refused, saying so
        except OSError:
            return "file" if os.path.islink(name) else None  # a dangling link is a file the worker fails

    def walk(self, folder: str, documents: frozenset[str]) -> Iterator[str]:
        """The documents under an absolute folder, as absolute paths, in sorted order."""
        if self._left_out(folder):
            self._problems.append(f"{folder}: this run's output dir, or inside it; a run never reads its own "
                                  "output: give the run another output dir")
            return
        if not self._first_visit(folder):
            return
        # A folder named like a document (`x.png/`) is searched like any other; one with no document under it is
        # given itself, so that its name gets a record (NotAFile) instead of vanishing from the results.
        named = {folder: False} if _suffix(folder) in documents else {}  # such folders: has a document?
        for root, dirs, names in os.walk(folder, onerror=self._unlistable):
            dirs[:] = sorted(name for name in dirs if self._enter(os.path.join(root, name)))
            named.update((os.path.join(root, name), False) for name in dirs if _suffix(name) in documents)
            found = False
            for name in names:
                dot = name.rfind(".")
                if dot >= 0 and name[dot:].lower() in documents:
                    found = True
                    yield os.path.join(root, name)
            while found and named and not named.get(root, False):  # mark it and the folders above it, once
                if root in named:
                    named[root] = True
                if root == folder or os.path.dirname(root) == root:
                    break
                root = os.path.dirname(root)
        yield from (path for path, has_document in named.items() if not has_document)

    def glob(self, pattern: str) -> list[tuple[str, Kind]]:
        found = [(os.path.abspath(match), self.kind(match)) for match in sorted(glob.glob(pattern, recursive=True))]
        return [(name, kind) for name, kind in found if not self._left_out(name, resolve=kind == "dir")]

    def open_text(self, name: str, newline: str | None) -> IO[str]:
        # surrogateescape: a name's bytes that are not UTF-8 come through as the OS gave them (os.fsdecode).
        return open(name, encoding="utf-8", errors="surrogateescape", newline=newline)

    def folder_of(self, manifest: str) -> str:
        return os.path.dirname(manifest)

    def resolve(self, folder: str, name: str) -> str:
        if name[0] == "~":
            name = os.path.expanduser(name)
        return os.path.normpath(name if name[0] == "/" else os.path.join(folder, name))  # join costs more

    def facts(self, names: list[str], threads: int = 16) -> list[Facts]:
        return file_facts(names, threads)

    def _enter(self, folder: str) -> bool:
        # os.walk lists a symlinked folder among `dirs` without following it; those are left as they are.
        return not self._left_out(folder) and (os.path.islink(folder) or self._first_visit(folder))

    def _first_visit(self, folder: str) -> bool:
        try:
            found = os.stat(folder)
        except OSError:
            return True  # os.walk reports it through _unlistable
        identity = (found.st_dev, found.st_ino)
        if identity in self._walked:
            log.info("%s: already listed under another name (a symlink to it, or the same folder): read once",
                     folder)
            return False
        self._walked.add(identity)
        return True

    def _left_out(self, name: str, resolve: bool = True) -> bool:
        if not self._leave_out:
            return False
        name = os.path.realpath(name) if resolve else name
        if any(name == out or name.startswith(out + os.sep) for out in self._leave_out):
            log.info("%s: left out of the inputs: it is this run's own output dir, or inside it", name)
            return True
        return False

    def _unlistable(self, exc: OSError) -> None:
        why = "permission denied" if exc.errno in (errno.EACCES, errno.EPERM) else (exc.strerror or str(exc))
        self._problems.append(f"{exc.filename}: cannot list this folder ({why}); make it readable by this user, "
                              "or leave it out of the inputs")


class StoreFiles:
    """Objects at URLs (`s3://bucket/scans/`): one flat listing per prefix, whose sizes and mtimes are kept."""

    noun, folder_noun = "object", "prefix"

    def __init__(self) -> None:
        self._listed: dict[str, Facts] = {}

    def absolute(self, spec: str) -> str:
        return spec

    def kind(self, name: str) -> Kind:
        fs, path = split_url(name)
        fs.invalidate_cache()  # listings cached by an earlier plan in this process may be stale
        try:
            info = fs.info(path)
        except FileNotFoundError:
            return None
        if info.get("type") == "directory":
            return "dir"
        self._listed[name] = _object_facts(info)
        return "file"

    def walk(self, folder: str, documents: frozenset[str]) -> list[str]:
        fs, path = split_url(folder)
        return [name for name, kind in self._keep(fs, fs.find(path, detail=True)) if kind == "file"
                and _suffix(name) in documents]

    def glob(self, pattern: str) -> list[tuple[str, Kind]]:
        fs, path = split_url(pattern)
        return self._keep(fs, fs.glob(path, detail=True))

    def open_text(self, name: str, newline: str | None) -> IO[str]:
        return io.StringIO(read_object(name).decode("utf-8"), newline=newline)

    def folder_of(self, manifest: str) -> str:
        fs, path = split_url(manifest)
        return full_url(fs, posixpath.dirname(path))

    def resolve(self, folder: str, name: str) -> str:
        if name.startswith(("/", "~")):
            raise ValueError(f"{name}: a manifest at a URL names URLs, or paths relative to its own folder")
        scheme, path = folder.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(path, name))}"

    def facts(self, names: list[str]) -> list[Facts]:
        unknown = [name for name in names if name not in self._listed]
        for name, found in stat_sources(unknown).items():
            self._listed[name] = MISSING if found is None else (*found, True)
        return [self._listed[name] for name in names]

    def read_all(self, names: list[str]) -> Iterator[bytes]:
        """Each object's bytes (b"" when unreadable: the worker says why), fetched on threads a few at a time."""
        def fetch(name: str) -> bytes:
            try:
                return read_object(name)
            except Exception:  # any store error: the worker reads it again and records why it cannot
                return b""

        with ThreadPoolExecutor(_FETCH_THREADS, thread_name_prefix="fetch") as pool:
            for start in range(0, len(names), _FETCH_THREADS * 2):  # at most this many documents in memory
                yield from pool.map(fetch, names[start:start + _FETCH_THREADS * 2])

    def _keep(self, fs, listing: dict[str, dict]) -> list[tuple[str, Kind]]:
        found: list[tuple[str, Kind]] = []
        for path, info in sorted(listing.items()):
            name = full_url(fs, path)
            if info.get("type") == "file":
                self._listed[name] = _object_facts(info)
            found.append((name, "dir" if info.get("type") == "directory" else "file"))
        return found


def _object_facts(info: dict) -> Facts:
    return (*object_stat(info), True)


def file_facts(paths: list[str], threads: int = 16) -> list[Facts]:
    """`local_facts` of every path, on several threads: stat releases the GIL, and on NFS each one is a round trip."""
    if len(paths) < 2000:
        return [local_facts(path) for path in paths]
    size = -(-len(paths) // threads)
    with ThreadPoolExecutor(threads, thread_name_prefix="stat") as pool:
        parts = pool.map(lambda start: [local_facts(path) for path in paths[start:start + size]],
                         range(0, len(paths), size))
        return [found for part in parts for found in part]


def local_facts(source: str) -> Facts:
    """A file's size, mtime and regularity; a broken symlink (dangling, a loop) gives the link's own.

    Only the three fields planning needs: a million whole stat results would hold about 600 MB. The link's
    own size and mtime let a rerun reuse the failed record of a link that has not changed since.
    """
    try:
        found = os.stat(source)
    except OSError:
        try:
            found = os.lstat(source)
        except OSError:
            return MISSING  # unreadable now: the worker turns it into a failed record with the reason
        return (found.st_size, found.st_mtime_ns, False) if stat.S_ISLNK(found.st_mode) else MISSING
    return found.st_size, found.st_mtime_ns, stat.S_ISREG(found.st_mode)


def is_local(name: str) -> bool:
    """Whether an expanded name is a local path (always absolute) rather than a URL."""
    return name[:1] == "/"


def _suffix(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return base[base.rfind("."):].lower() if "." in base else ""
