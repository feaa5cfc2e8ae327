"""Records: the pydantic models that cross process boundaries as JSON lines, and how they are stored."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import PydanticSerializationError, to_json

if TYPE_CHECKING:
    from typing_extensions import Self  # typing's own from Python 3.11

Point = tuple[float, float]
M = TypeVar("M", bound=BaseModel)
_SURROGATE = re.compile("[\ud800-\udfff]")


class JsonModel(BaseModel):
    """A model written and read as JSON that keeps any file name the OS allows.

    Python holds a name's bytes that are not UTF-8 as lone surrogates (`b"\\xff"` -> `"\\udcff"`, the
    surrogateescape of `os.fsdecode`), which pydantic refuses to write or to read back. Such a str is written
    with each surrogate as the JSON escape `\\udcXX` (what `json.dumps` writes) and read back to the same str,
    so `open(source)` finds the file again; every other model is written exactly as pydantic writes it.
    """

    def model_dump_json(self, *, indent: int | None = None, **options: Any) -> str:
        try:
            return super().model_dump_json(indent=indent, **options)
        except PydanticSerializationError:
            data = self.model_dump(mode="json", **options)
            return escape_surrogates(json.dumps(data, ensure_ascii=False, indent=indent,
                                                separators=(",", ": ") if indent is not None else (",", ":")))

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **options: Any) -> Self:  # type: ignore[override]
        try:
            return super().model_validate_json(json_data, **options)
        except ValidationError as exc:
            if not any(error["type"] == "json_invalid" and "surrogate" in error["msg"] for error in exc.errors()):
                raise
            try:
                data = json.loads(json_data)  # Python's parser keeps lone surrogates, pydantic's refuses them
            except ValueError:
                raise exc from None
            return cls.model_validate(data, strict=options.get("strict"), context=options.get("context"))


def escape_surrogates(text: str) -> str:
    """JSON text with each lone surrogate (an undecodable byte of a file name) as its `\\udcXX` escape."""
    return _SURROGATE.sub(lambda found: f"\\u{ord(found[0]):04x}", text)


class PageRef(JsonModel):
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


class Page(NamedTuple):
    """A `PageRef` as planning holds it: at a million pages the models alone took 7 s and 1.1 GB, tuples 0.6 s."""

    source: str
    page: int = 0
    cost: float = 0.0
    size: int = 0
    mtime_ns: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return (self.source, self.page)

    def ref(self) -> PageRef:
        return PageRef(source=self.source, page=self.page, cost=self.cost, size=self.size, mtime_ns=self.mtime_ns)

    def json_line(self) -> str:
        """`self.ref().model_dump_json()` and a newline, byte for byte, in a quarter of the time."""
        fields = {"source": self.source, "page": self.page, "cost": float(self.cost), "size": self.size,
                  "mtime_ns": self.mtime_ns}
        try:
            return to_json(fields, inf_nan_mode="null").decode() + "\n"  # the model's own handling of inf and nan
        except PydanticSerializationError:  # a name that is not UTF-8: written as the model writes it
            return self.ref().model_dump_json() + "\n"


class TextLine(BaseModel):
    """One recognized line: its text, confidence and box as four corner points."""

    text: str
    score: float
    box: tuple[Point, Point, Point, Point]


class RecordIdentity(JsonModel):
    """What makes a record reusable by a later run: the page, the file's content, the settings that read it.

    Parsing only these fields of a stored record is cheap, so planning can index a large output dir.
    """

    model_config = ConfigDict(extra="ignore")
    source: str
    page: int
    status: Literal["ok", "failed"]
    error_class: str | None = None
    sha256: str | None = None  # of the input file's bytes, as the worker read them
    size: int = 0
    mtime_ns: int = 0
    settings: str = ""  # `Plan.settings_for(page)`: model and OCR settings that made the record

    @property
    def key(self) -> tuple[str, int]:
        return (self.source, self.page)


class PageRecord(RecordIdentity):
    """The result for one page: a line of `results.jsonl` (the record contract in the README)."""

    model_config = ConfigDict(extra="forbid")
    text: str = ""
    lines: tuple[TextLine, ...] = ()
    error: str | None = None  # the message; `error_class` names the kind of failure
    shard: int
    device: str

    @classmethod
    def failed(cls, page: PageRef, error_class: str, error: str, *, shard: int, device: str,
               settings: str, sha256: str | None = None) -> PageRecord:
        return cls(source=page.source, page=page.page, status="failed", error_class=error_class, error=error,
                   sha256=sha256, size=page.size, mtime_ns=page.mtime_ns, settings=settings, shard=shard,
                   device=device)


class ShardReport(JsonModel):
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
    ocr_s: float  # wall time from the first page to the last, after the model load
    engine_s: float = 0.0  # of that, time inside the engine
    busy_fraction: float | None = None  # engine_s / ocr_s: how much of the time the device had work
    gpu_utilization_pct: float | None = None  # NVML's mean utilization of the GPU, sampled while running
    max_rss_mb: float | None = None
    pages_per_s: float
    warnings: tuple[str, ...] = ()


def write_atomic(path: Path, text: str) -> None:
    """Write beside the target and rename, so readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a bad text: no half-written temporary stays behind
        raise


def read_jsonl(path: Path, model: type[M]) -> Iterator[M]:
    """Parse every line of a JSON-lines file into `model`; a bad line raises naming file and line."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            yield _parse(model, line, path, number)


def complete_lines(path: Path, *, repair: bool = False) -> list[str]:
    """The finished lines of a JSON-lines file a crashed writer may have left torn.

    A line without its newline was never finished: it is dropped, never parsed as data, and with
    `repair` cut off the file so that appending goes on from a clean end.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    end = data.rfind(b"\n") + 1
    if repair and end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)
    return data[:end].decode("utf-8").splitlines()


def complete_records(path: Path, *, repair: bool = True) -> list[PageRecord]:
    """The records of a worker's file, after cutting off a torn last line left by a crash."""
    return [_parse(PageRecord, line, path, number)
            for number, line in enumerate(complete_lines(path, repair=repair), 1)]


def _parse(model: type[M], line: str, path: Path, number: int) -> M:
    try:
        return model.model_validate_json(line)
    except ValidationError as exc:
        raise ValueError(f"{path}:{number}: not a valid {model.__name__}: {exc}") from exc
