"""Records: the pydantic models that cross process boundaries as JSON lines, and how they are stored."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

Point = tuple[float, float]
M = TypeVar("M", bound=BaseModel)


class PageRef(BaseModel):
    """One planned unit of work: a page of an input, with its estimated cost."""

    model_config = ConfigDict(frozen=True)
    source: str
    page: int = 0
    cost: float = 0.0
    size: int = 0  # the file's size and mtime when planned: with the content hash, a record's identity
    mtime_ns: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return (self.source, self.page)


class TextLine(BaseModel):
    """One recognized line: its text, confidence and box as four corner points."""

    text: str
    score: float
    box: tuple[Point, Point, Point, Point]


class PageRecord(BaseModel):
    """The result for one page: a line of `results.jsonl` (the record contract in the README)."""

    source: str
    page: int
    status: Literal["ok", "failed"]
    text: str = ""
    lines: tuple[TextLine, ...] = ()
    error: str | None = None
    shard: int
    device: str

    @property
    def key(self) -> tuple[str, int]:
        return (self.source, self.page)

    @property
    def error_class(self) -> str | None:
        return self.error.split(":", 1)[0] if self.error else None


class ShardReport(BaseModel):
    """What a worker says about its shard when it ran to the end."""

    shard: int
    device: str
    gpu_id: int | None = None
    pid: int
    hostname: str
    gpu_uuid: str | None = None  # the device the worker actually holds, as NVML saw it from inside
    gpu_name: str | None = None
    placement_verified: bool = False
    pages_planned: int
    pages_resumed: int
    pages_ok: int
    pages_failed: int
    model_load_s: float
    ocr_s: float
    pages_per_s: float
    warnings: tuple[str, ...] = ()


def write_atomic(path: Path, text: str) -> None:
    """Write beside the target and rename, so readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_jsonl(path: Path, model: type[M]) -> Iterator[M]:
    """Parse every line of a JSON-lines file into `model`; a bad line raises naming file and line."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                yield model.model_validate_json(line)
            except ValidationError as exc:
                raise ValueError(f"{path}:{number}: not a valid {model.__name__}: {exc}") from exc


def complete_records(path: Path) -> list[PageRecord]:
    """The records of a worker's file, after cutting off a torn last line left by a crash."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as handle:  # a line without its newline was never finished
            handle.truncate(end)
    return list(read_jsonl(path, PageRecord))
