"""Engine: PaddleOCR 3's OCR pipeline behind a small seam (reading pages' pixels is `ocrfleet.inputs.pages`)."""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np

from ocrfleet.plan.gpu_engines import CUDA_PROVIDER_OPTIONS
from ocrfleet.plan.models import DET_LIMIT, REC_BATCH, ModelDirs
from ocrfleet.records import TextLine
from ocrfleet.run.fixed_shapes import use_fixed_shapes

log = logging.getLogger(__name__)

# Messages that mean the process itself is broken (device lost, out of memory): retrying the page
# in this process is pointless, so the worker exits and the shard is retried in a fresh one.
_FATAL_MARKERS = ("CUDA error", "cudaError", "out of memory", "CUDNN_STATUS", "device-side assert",
                  "CUDA failure", "CUDNN failure", "CUBLAS failure", "Failed to allocate memory")


class EngineUnusable(RuntimeError):
    """The engine can no longer run in this process."""


class OcrEngine(Protocol):
    def __call__(self, image: np.ndarray) -> list[TextLine]:
        """OCR one BGR image into its text lines, in reading order."""


class PaddleOcrEngine:
    """PaddleOCR's text detection + recognition pipeline, loaded once per worker."""

    def __init__(self, models: ModelDirs, device: str, threads: int, rec_batch_size: int | None = None,
                 det_limit: tuple[int | None, str] = DET_LIMIT, fixed_shapes: bool = False) -> None:
        from paddleocr import PaddleOCR  # heavy: imported only where OCR actually runs

        options: dict = {}
        if det_limit[0] is not None:  # None: PaddleOCR's own detection size
            options.update(text_det_limit_side_len=det_limit[0], text_det_limit_type=det_limit[1])
        if models.engine == "onnxruntime":
            options["engine"] = "onnxruntime"
            options["engine_config"] = onnxruntime_config(device, threads)
        elif device == "cpu":
            # Paddle 3.3's oneDNN path rejects these legacy-format models (ConvertPirAttribute2RuntimeAttribute).
            options.update(enable_mkldnn=False, cpu_threads=threads)
        self._ocr = PaddleOCR(
            text_detection_model_name=models.text_detection_model_name,
            text_detection_model_dir=models.text_detection_model_dir,
            text_recognition_model_name=models.text_recognition_model_name,
            text_recognition_model_dir=models.text_recognition_model_dir,
            use_doc_orientation_classify=False, use_doc_unwarping=False, use_textline_orientation=False,
            text_recognition_batch_size=rec_batch_size or REC_BATCH[models.engine], device=device, **options,
        )
        if models.engine == "onnxruntime" and device.startswith("gpu"):
            _check_on_cuda(self._ocr)
        if fixed_shapes:
            use_fixed_shapes(self._ocr, det_limit[0], rec_batch_size or REC_BATCH[models.engine])

    def __call__(self, image: np.ndarray) -> list[TextLine]:
        try:
            result = self._ocr.predict(image)[0]
        except Exception as exc:
            if isinstance(exc, MemoryError) or any(marker in str(exc) for marker in _FATAL_MARKERS):
                raise EngineUnusable(f"{type(exc).__name__}: {exc}") from exc
            raise
        return [
            TextLine(text=text, score=float(score), box=tuple(tuple(float(v) for v in point) for point in poly))
            for text, score, poly in zip(result["rec_texts"], result["rec_scores"], result["rec_polys"])
        ]


def onnxruntime_config(device: str, threads: int) -> dict:
    """PaddleX's onnxruntime engine_config for `device` ('cpu', or 'gpu:0': the worker's one visible GPU)."""
    config: dict = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    if device.startswith("gpu"):
        import onnxruntime

        # onnxruntime-gpu >= 1.21 finds CUDA and cuDNN in pip's nvidia-* wheels only when asked to.
        getattr(onnxruntime, "preload_dlls", lambda: None)()
        config.update(providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
                      provider_options=[{"device_id": int(device.partition(":")[2] or 0), **CUDA_PROVIDER_OPTIONS},
                                        {}])
    return config


def _check_on_cuda(ocr: object) -> None:
    # onnxruntime falls back to the CPU, with only a log line, when its CUDA provider does not load in this
    # process: a GPU worker that would read its shard on one CPU thread is unusable instead.
    pipeline = getattr(ocr.paddlex_pipeline, "_pipeline", ocr.paddlex_pipeline)
    for predictor in (pipeline.text_det_model, pipeline.text_rec_model):
        providers = predictor.runner.session.get_providers()
        if providers[0] != "CUDAExecutionProvider":
            raise EngineUnusable(f"onnxruntime's CUDA provider did not load in this worker; its session fell back to "
                                 f"{', '.join(providers)} (onnxruntime logs why above)")
