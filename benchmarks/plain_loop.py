"""The baseline a user writes without ocrfleet: one process, PaddleOCR built once, `predict(path)` per page.

Run as a subprocess so its thread settings are its own:
`python -m benchmarks.plain_loop --engine onnxruntime|paddle --threads T [--models PRESET] [--via-ocrfleet-engine]
[--det-max-side N] PAGE...`.
Prints one JSON object: load_s, ocr_s, pages and each page's text.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from ocrfleet.plan.models import DEFAULT_PRESET, DET_LIMIT, PRESETS, ModelDirs, Preset, default_cache_dir, materialize


def bundled_models(engine: str, preset: Preset = DEFAULT_PRESET) -> ModelDirs:
    """A preset's offline models (ocrfleet's default unless told), for `engine`."""
    cache = default_cache_dir()
    det, rec = PRESETS[preset]
    return ModelDirs(engine=engine, text_detection_model_name=det,
                     text_detection_model_dir=str(materialize(engine, det, cache)),
                     text_recognition_model_name=rec,
                     text_recognition_model_dir=str(materialize(engine, rec, cache)))


def plain_paddleocr(models: ModelDirs, threads: int, det_max_side: int = DET_LIMIT[0]):
    """PaddleOCR with the options ocrfleet's engine passes on CPU (ocrfleet/run/engine.py), written out by hand.

    The recognition batch size and detection size too: comparisons measure what ocrfleet adds or saves, not a
    setting. `det_max_side`: detect text on the page scaled to at most this many pixels on its long side
    (ocrfleet's default, 960); 0: PaddleOCR 3's own default (the page as it is, up to 4000 px).
    """
    from paddleocr import PaddleOCR

    from ocrfleet.plan.models import REC_BATCH

    if models.engine == "onnxruntime":
        options = {"engine": "onnxruntime",
                   "engine_config": {"intra_op_num_threads": threads, "inter_op_num_threads": 1}}
    else:
        options = {"enable_mkldnn": False, "cpu_threads": threads}
    if det_max_side:
        options.update(text_det_limit_side_len=det_max_side, text_det_limit_type="max")
    return PaddleOCR(text_detection_model_name=models.text_detection_model_name,
                     text_detection_model_dir=models.text_detection_model_dir,
                     text_recognition_model_name=models.text_recognition_model_name,
                     text_recognition_model_dir=models.text_recognition_model_dir,
                     use_doc_orientation_classify=False, use_doc_unwarping=False, use_textline_orientation=False,
                     text_recognition_batch_size=REC_BATCH[models.engine], device="cpu", **options)


def _reader(models: ModelDirs, threads: int, via_ocrfleet_engine: bool, rec_batch: int = 6,
            det_max_side: int = DET_LIMIT[0]) -> Callable[[str], str]:
    """A function from a page's path to its text, loaded once."""
    if via_ocrfleet_engine:
        from ocrfleet.run.engine import PaddleOcrEngine
        from ocrfleet.inputs.pages import load_page

        engine = PaddleOcrEngine(models, "cpu", threads, rec_batch, det_limit=(det_max_side or None, "max"))
        return lambda path: "\n".join(line.text for line in engine(load_page(path, 0, dpi=150, max_pixels=10**9)))
    pipeline = plain_paddleocr(models, threads, det_max_side)
    return lambda path: "\n".join(pipeline.predict(path)[0]["rec_texts"])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine", choices=["onnxruntime", "paddle"], required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--models", choices=sorted(PRESETS), default=DEFAULT_PRESET, help="model preset")
    parser.add_argument("--via-ocrfleet-engine", action="store_true", help="use ocrfleet.run.engine.PaddleOcrEngine")
    parser.add_argument("--rec-batch", type=int, default=6, help="text_recognition_batch_size (ocrfleet engine)")
    parser.add_argument("--det-max-side", type=int, default=DET_LIMIT[0],
                        help="text detection on the page scaled to this long side; 0: PaddleOCR 3's own default")
    parser.add_argument("pages", nargs="+")
    args = parser.parse_args()
    started = time.monotonic()
    ocr = _reader(bundled_models(args.engine, args.models), args.threads, args.via_ocrfleet_engine, args.rec_batch,
                  args.det_max_side)
    load_s = time.monotonic() - started
    texts, started = [], time.monotonic()
    for path in args.pages:
        texts.append(ocr(path))
    ocr_s = time.monotonic() - started
    print(json.dumps({"load_s": load_s, "ocr_s": ocr_s, "pages": len(texts), "texts": texts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
