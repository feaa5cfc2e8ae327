"""The one job configuration: YAML, CLI flags and Prefect parameters all land in `JobConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ocrfleet.config_schema import DEVICES_PATTERN, OUTPUT_DIR_PATTERN, job_schema_rules
from ocrfleet.plan.models import DEFAULT_PRESET, DET_LIMIT, PRESETS, Preset, preset_engines
from ocrfleet.inputs.storage import check_protocol, is_url, local_path


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key."""


class JobConfig(BaseModel):
    """Everything a run needs; frozen, unknown keys are errors."""

    # The schema states the validators' checks too: Prefect refuses a bad parameter before creating a run.
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=job_schema_rules)

    inputs: tuple[str, ...] = Field(
        (), description="Image, PDF and TIFF files (a page range as `scan.pdf[1-5,8]`, 1-based), directories "
        "(searched recursively), glob patterns, or manifests (.txt/.csv/.jsonl with a path column and optional "
        "pages/cost); any of them may be an fsspec URL (s3://bucket/scans/, gs://...; file:// is a path). "
        "Required unless only_failed is set.",
    )
    output_dir: Path = Field(..., description="Run directory: plan, records, results, summary. A POSIX path "
                             "(local disk or NFS), never an object store: see publish_to.",
                             json_schema_extra={"pattern": OUTPUT_DIR_PATTERN})
    publish_to: str | None = Field(
        None, description="After a valid run, copy its outputs (results, failures, parquet, text/, pages/, vis/; "
        "summary.json last) to this path or fsspec URL (s3://bucket/ocr/run1, file:///nfs/results).",
    )
    include_globs: tuple[str, ...] = Field(
        (), description="Only inputs whose path matches one of these globs (all when empty)."
    )
    exclude_globs: tuple[str, ...] = Field((), description="Inputs whose path matches one of these globs are skipped.")
    manifest_path_column: str = Field("path", description="Column holding the input path in .csv/.jsonl manifests.")
    pdf_dpi: int = Field(
        150, ge=36, le=600, description="Resolution PDF pages are rendered at. 150 reads 8-12 pt vector text and "
        "150/300-dpi scanned PDFs about as well as any resolution (benchmarks/dpi.py: lower ones read scans worse, "
        "higher ones read no better for more pixels); raise it for smaller print, lower it for very large pages "
        "(max_image_pixels)."
    )
    max_image_pixels: int = Field(
        100_000_000, ge=1, description="Pages with more pixels fail as DecompressionBomb instead of being decoded."
    )
    outputs: tuple[Literal["pages", "parquet", "text", "vis"], ...] = Field(
        ("parquet", "text"),
        description="Outputs besides results.jsonl: results.parquet, text per document under text/, per-page "
        "PaddleOCR JSON under pages/ (slow on millions of pages: ~1 ms each), box pictures of a sample under vis/.",
    )
    devices: str = Field(
        "auto",
        description="'auto' (all visible GPUs, else 1 CPU worker), 'gpu', 'gpu:0,2,3', 'cpu' or 'cpu:N'.",
        json_schema_extra={"pattern": DEVICES_PATTERN},
    )
    exclude: tuple[int, ...] = Field((), description="NVML indices of GPUs never to use.")
    min_free_memory_mb: int = Field(
        1024, ge=0, description="GPUs (or MIG instances) with less free memory are skipped with a warning."
    )
    workers_per_device: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = Field(
        "auto", description="Shards (worker processes) per device, 1 to 64; 'auto': 1 per CPU device, on GPUs the "
        "machine's cores shared among its GPUs (as far as GPU memory allows), said by `ocrfleet plan`."
    )
    fixed_shapes: Literal["auto", "on", "off"] = Field(
        "auto", description="Run the models at a few fixed input shapes (pages padded onto fixed canvases, text lines "
        "to fixed widths and batch sizes), so GPU engines never re-plan their kernels; 'auto': on for GPUs, off on CPU."
    )
    max_failure_rate: float = Field(
        0.01, ge=0, le=1, description="The run fails when more than this fraction of pages failed."
    )
    engine: Literal["auto", "paddle", "onnxruntime"] = Field(
        "auto",
        description="Inference engine: 'paddle' (Paddle Inference), 'onnxruntime' (CPU, or GPUs with onnxruntime-gpu "
        "from the `cuda` extra), or 'auto' (on GPUs Paddle's CUDA build when installed, else onnxruntime-gpu when its "
        "CUDA provider loads, else CPU with a warning; onnxruntime on CPU); presets shipped only as ONNX run on "
        "onnxruntime.",
    )
    models: Preset = Field(
        DEFAULT_PRESET, description="Model preset, shipped offline by installed packages: 'pp-ocrv6-small' (the "
        "default: 95% of real pages' words read right), 'pp-ocrv6-tiny' (about 3.8x faster), 'pp-ocrv5-mobile' (all "
        "three ONNX only: onnxruntime engine) or 'pp-ocrv4-mobile' (ONNX and Paddle format). The "
        "text_detection_model_* / text_recognition_model_* settings override it."
    )
    text_detection_model_name: str | None = Field(
        None, description="PaddleOCR detection model name; null: the preset's. With no model dir and a name no "
        "installed package ships for the engine, PaddleOCR downloads it by name (needs network access)."
    )
    text_detection_model_dir: Path | None = Field(
        None, description="Local detection model dir (its inference.yml's Global.model_name must be the model "
        "name); unset: the preset's, materialized offline."
    )
    text_recognition_model_name: str | None = Field(
        None, description="PaddleOCR recognition model name; null: the preset's (download by name as for detection)."
    )
    text_recognition_model_dir: Path | None = Field(
        None, description="Local recognition model dir (Global.model_name as for detection); unset: the preset's, "
        "materialized offline."
    )
    text_recognition_batch_size: int | None = Field(
        None, ge=1, le=256, description="Text lines recognized per batch; null: 1 with onnxruntime on CPU (fastest "
        "there, measured in benchmarks/), PaddleOCR's 6 with Paddle, 16 at fixed shapes (GPUs)."
    )
    text_det_limit_side_len: int | None = Field(
        DET_LIMIT[0], ge=32, le=20000, description="Text detection sees the page scaled so that its long side "
        "(text_det_limit_type 'max') or short side ('min') is at most / at least this many pixels; 960 'max' "
        "(PaddleOCR 2's default for these mobile models) read real scans faster and with far fewer words run "
        "together than PaddleOCR 3's detection on the page as it is (benchmarks/accuracy.py); null: PaddleOCR's own."
    )
    text_det_limit_type: Literal["max", "min"] = Field(
        DET_LIMIT[1], description="How text_det_limit_side_len applies: 'max' shrinks larger pages, 'min' enlarges "
        "smaller ones."
    )
    model_cache_dir: Path | None = Field(
        None, description="Where bundled models are materialized; default $OCRFLEET_CACHE or ~/.cache/ocrfleet."
    )
    threads_per_worker: int | None = Field(
        None, ge=1, description="CPU threads per worker; default: the machine's cores divided among workers."
    )
    shard_timeout_s: float = Field(86400.0, gt=0, description="A worker running longer than this is killed.")
    shard_retries: int = Field(2, ge=0, le=20, description="Restarts of a failed worker; each resumes.")
    progress_interval_s: float = Field(10.0, gt=0, description="Seconds between a worker's progress lines.")
    derived_from: Path | None = Field(
        None, description="Reprocessing: the earlier run dir this run redoes pages of (shown in summary.json)."
    )
    only_failed: bool = Field(False, description="Reprocessing: only the failed pages of derived_from.")
    retry_failed: bool = Field(
        False, description="Do the pages whose record in output_dir failed again and keep every ok one: "
        "results.jsonl is updated in place, summary.json says what was retried, and the earlier failed records "
        "stay in retried/NNNNN.jsonl. Same inputs and output_dir as the run being retried.",
    )
    only_error_classes: tuple[str, ...] = Field(
        (), description="With only_failed: only failures of these classes (e.g. WorkerCrashed); all when empty."
    )
    page_timeout_s: float = Field(
        600.0, gt=0, description="A page in flight longer than this kills its worker; it counts as a crash on the page."
    )
    max_page_crashes: int = Field(
        2, ge=1, le=10, description="A page in flight during this many worker deaths is failed as WorkerCrashed."
    )
    max_worker_rss_mb: int | None = Field(
        16384, ge=256, description="A worker past this resident memory is restarted between pages (null: never)."
    )

    @model_validator(mode="after")
    def _something_to_do(self) -> JobConfig:
        if self.only_failed and self.derived_from is None:
            raise ValueError("only_failed needs derived_from: the run whose failed pages to redo")
        if self.retry_failed and self.only_failed:
            raise ValueError("retry_failed redoes failed pages in output_dir itself; only_failed reprocesses "
                             "derived_from's into a new output dir: set one of them")
        if self.only_error_classes and not self.only_failed:
            raise ValueError("only_error_classes applies to only_failed reprocessing; set only_failed too")
        if self.engine == "paddle" and not self.model_names_given() and "paddle" not in preset_engines(self.models):
            paddle = [name for name in PRESETS if "paddle" in preset_engines(name)]
            raise ValueError(f"models: {self.models} ships only as ONNX, for engine onnxruntime (or auto); for "
                             f"engine paddle choose models: {' or '.join(paddle)}, or name the Paddle-format "
                             "models in text_detection_model_name and text_recognition_model_name (downloaded "
                             "by PaddleOCR at run time, with network access)")
        if not self.inputs and not self.only_failed:
            raise ValueError("inputs: give at least one file, directory, glob or manifest")
        if self.derived_from is not None and Path(self.derived_from).absolute() == Path(self.output_dir).absolute():
            raise ValueError("output_dir: a reprocessing run writes to a new output dir, not to derived_from")
        if self.publish_to and not is_url(self.publish_to):
            target, run_dir = Path(local_path(self.publish_to)).absolute(), Path(self.output_dir).absolute()
            if target == run_dir or run_dir in target.parents or target in run_dir.parents:
                raise ValueError("publish_to: a folder apart from output_dir (neither inside the other)")
        return self

    def model_names_given(self) -> bool:
        """Whether both models are named or given as dirs, so that the preset decides nothing."""
        return all(name is not None or directory is not None for name, directory in (
            (self.text_detection_model_name, self.text_detection_model_dir),
            (self.text_recognition_model_name, self.text_recognition_model_dir)))

    @field_validator("inputs")
    @classmethod
    def _inputs_located(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            if is_url(item):
                check_protocol(item)
        return tuple(local_path(item) for item in value)

    @field_validator("output_dir", mode="before")
    @classmethod
    def _output_dir_posix(cls, value: Any) -> Any:
        if value is not None and not str(value).strip():
            raise ValueError("output_dir is empty: name a folder for the run (an empty path would be the "
                             "current directory)")
        if isinstance(value, str) and is_url(value):
            raise ValueError(f"{value} is not a POSIX file system: a run dir needs appends, atomic renames and "
                             "file locks (local disk or NFS); give a local or NFS path, and publish_to: "
                             f"{value} to copy the finished outputs there (docs/scale-out.md, section 7)")
        return local_path(value) if isinstance(value, str) else value

    @field_validator("publish_to")
    @classmethod
    def _publish_to_located(cls, value: str | None) -> str | None:
        if value and is_url(value):
            check_protocol(value)
        return value

    @field_validator("workers_per_device", mode="before")
    @classmethod
    def _workers_from_text(cls, value: Any) -> Any:
        # From the command line every value is text: "auto" in any case, or a number.
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value

    @field_validator("devices")
    @classmethod
    def _devices_parse(cls, value: str) -> str:
        from ocrfleet.plan.devices import parse_devices  # devices imports nothing from here at module level

        parse_devices(value)
        return value.strip().lower()


def load_config(path: Path | None = None, **overrides: Any) -> JobConfig:
    """Build a `JobConfig` from an optional YAML file, then CLI/Prefect overrides (None means unset)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {path}: expected a mapping of keys to values, got {type(loaded).__name__}")
        data.update(loaded or {})
    data.update({key: value for key, value in overrides.items() if value is not None})
    return validate_config(data)


def validate_config(data: dict[str, Any]) -> JobConfig:
    """Validate a mapping into a `JobConfig`, turning pydantic's report into one message per key."""
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"]) or "config"
            message = error["msg"]
            if error["type"] == "extra_forbidden":
                message = f"unknown key (known keys: {', '.join(sorted(JobConfig.model_fields))})"
            problems.append(f"{key}: {message}")
        raise ConfigError("invalid config: " + "; ".join(problems)) from None
