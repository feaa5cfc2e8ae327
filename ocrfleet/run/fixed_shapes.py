"""Fixed shapes: the models' inputs padded to a few shapes, so that a GPU engine never re-plans its kernels.

onnxruntime's CUDA provider re-plans its convolutions whenever an input's shape differs from the previous
call's. Measured on an H200 (issue 13): recognizing 6 lines takes 4 ms at one fixed shape and ~200 ms when
the width follows each batch's widest line; detection 5 ms at a fixed 960x736 against 72 ms at each page's
own size. So each input is padded bottom/right (a page with its background, lines with zeros as PaddleOCR
pads them) to one of a few shapes, each shape gets its own onnxruntime session (a session that sees one
shape plans once), and every output is cropped back to what the unpadded input gives: boxes keep their
coordinates, and recognition decodes the time steps of the unpadded line, as today.

This wraps the runners of PaddleX's detection and recognition predictors; their pre- and post-processing,
line sorting and batching stay PaddleOCR's. Recognition batches hold one page's lines (PaddleOCR recognizes
page by page), sorted by width, `batch` lines at a time; a short batch is filled with empty lines.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# Recognition width classes (pixels at height 48): PaddleOCR's minimum 320 up to its maximum 3200.
REC_WIDTHS = (320, 480, 640, 960, 1280, 1920, 3200)


def det_sides(limit_side_len: int | None) -> tuple[int, ...]:
    """Canvas sides for detection: a page scaled to at most `limit_side_len` lands on one of 2 x 2 canvases
    (e.g. 960x736 portrait, 736x960 landscape, 960x960, 736x736 for 960); larger sides round up to 256s."""
    if limit_side_len is None:
        return ()
    long = math.ceil(limit_side_len / 32) * 32
    # 0.77 of 960 is 736: it holds A4 (672 px) and US Letter (736 px) portrait pages' short sides at 960.
    return (max(32, int(long * 0.77) // 32 * 32), long)


def _fit(size: int, sides: Sequence[int], step: int) -> int:
    return next((side for side in sides if side >= size), math.ceil(size / step) * step)


class _ShapeSessions:
    """Runs a PaddleX runner at fixed shapes: one onnxruntime session per shape, else the runner itself."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self._sessions: dict[tuple[int, ...], Any] = {}
        # PaddleX's ONNXRuntimeRunner builds its session from its config; a Paddle runner is called as it is.
        self._per_shape: Callable[[], Any] | None = getattr(runner, "_create_session", None)

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        if self._per_shape is None:
            return list(self.runner(x=[batch]))
        session = self._sessions.get(batch.shape)
        if session is None:
            session = self._sessions[batch.shape] = self._per_shape()
        name = session.get_inputs()[0].name
        return session.run(None, {name: np.ascontiguousarray(batch)})

    def close(self) -> None:
        getattr(self.runner, "close", lambda: None)()


class PaddedDetection(_ShapeSessions):
    """Detection runner: each page pasted on the smallest canvas that holds it; the maps cropped back."""

    def __init__(self, runner: Any, sides: tuple[int, ...]) -> None:
        super().__init__(runner)
        self.sides = sides

    def __call__(self, x: Sequence[np.ndarray] | np.ndarray | None = None, **kwargs: Any) -> list[np.ndarray]:
        batch = _single_input(x, kwargs)
        n, channels, height, width = batch.shape
        # The page's own background (the median of its last row and column) disturbs the model's page-wide
        # features (squeeze-excitation pooling) less than zeros: on the typewriter page 0.8% of characters
        # read differently with it, 3.6% with zeros.
        border = np.concatenate([batch[:, :, -1, :], batch[:, :, :, -1]], axis=2)
        canvas = np.empty((n, channels, _fit(height, self.sides, 256), _fit(width, self.sides, 256)), batch.dtype)
        canvas[...] = np.median(border, axis=2)[:, :, None, None]
        canvas[:, :, :height, :width] = batch
        return [output[..., :height, :width] for output in super().__call__(canvas)]


class PaddedRecognition(_ShapeSessions):
    """Recognition runner: lines padded to their width class and to `batch` lines; outputs cropped back."""

    def __init__(self, runner: Any, batch: int, widths: tuple[int, ...] = REC_WIDTHS) -> None:
        super().__init__(runner)
        self.batch, self.widths = batch, widths

    def __call__(self, x: Sequence[np.ndarray] | np.ndarray | None = None, **kwargs: Any) -> list[np.ndarray]:
        lines = _single_input(x, kwargs)
        count, channels, height, width = lines.shape
        padded_width = _fit(width, self.widths, 320)
        parts = []
        for start in range(0, count, self.batch):
            part = lines[start:start + self.batch]
            padded = np.zeros((self.batch, channels, height, padded_width), lines.dtype)
            padded[:len(part), :, :, :width] = part
            output = super().__call__(padded)[-1]  # (lines, time steps, characters): CTC's input
            steps = math.ceil(output.shape[1] * width / padded_width)  # the time steps of the unpadded width
            parts.append(output[:len(part), :steps])
        return [np.concatenate(parts)]


def _single_input(x: Sequence[np.ndarray] | np.ndarray | None, kwargs: dict[str, Any]) -> np.ndarray:
    x = kwargs.get("x") if x is None else x
    if isinstance(x, np.ndarray):
        return x
    (only,) = x
    return only


def use_fixed_shapes(ocr: Any, det_limit_side_len: int | None, rec_batch: int) -> None:
    """Wrap the detection and recognition runners of a `paddleocr.PaddleOCR` in their fixed-shape versions."""
    try:
        pipeline = getattr(ocr.paddlex_pipeline, "_pipeline", ocr.paddlex_pipeline)
        det, rec = pipeline.text_det_model, pipeline.text_rec_model
        det.runner, rec.runner = det.runner, rec.runner
    except AttributeError as exc:
        raise RuntimeError(f"fixed_shapes: this PaddleX's OCR pipeline has no detection/recognition runners "
                           f"where PaddleX 3.7 has them ({exc}); set fixed_shapes: off") from exc
    det.runner = PaddedDetection(det.runner, det_sides(det_limit_side_len))
    rec.runner = PaddedRecognition(rec.runner, rec_batch)
