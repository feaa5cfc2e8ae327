"""Recognition batch size: how many text lines PaddleOCR recognizes per call, measured for the default."""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks import corpus
from benchmarks.report import Figure, figure
from benchmarks.throughput import plain_loop

SIZES = (1, 6, 16, 32)
DEFAULT = 1  # ocrfleet.plan.models.REC_BATCH["onnxruntime"]: what a CPU run uses unless told otherwise


def measure(quick: bool, work: Path) -> list[Figure]:
    pages = sorted(corpus.uniform(4, lines=8).glob("*.png")) if quick else sorted(corpus.uniform(20).glob("*.png"))[:8]
    reps = 1 if quick else 3
    seconds: dict[int, list[float]] = {size: [] for size in SIZES}
    texts: dict[int, list[str]] = {}
    for _ in range(reps):  # sizes alternate within each rep: drift hits every size alike
        for size in SIZES:
            result = plain_loop(pages, "onnxruntime", threads=1, via_ocrfleet_engine=True, rec_batch=size)
            seconds[size].append(result["ocr_s"] / len(pages))
            texts.setdefault(size, result["texts"])
    per_page = {size: statistics.median(values) for size, values in seconds.items()}
    best = min(per_page, key=per_page.get)
    same = {size: sum(a == b for a, b in zip(texts[size], texts[DEFAULT])) for size in SIZES}
    table = "; ".join(f"batch {size}: {per_page[size]:.2f} s/page, {same[size]}/{len(pages)} pages read as with "
                      f"{DEFAULT}" for size in SIZES)
    ratio = per_page[DEFAULT] / per_page[best]
    return [figure(
        "batch", "recognition batch size: default's time / best size's time", ratio, "x",
        f"<= 1.05x (default {DEFAULT} within 5% of the best)", ratio <= 1.05,
        f"{len(pages)} generated A4 pages, onnxruntime, 1 thread, `ocrfleet.run.engine.PaddleOcrEngine`, {reps} rep(s); "
        f"{table}. On GPUs larger batches usually pay more; measure there with the same module.",
        f"batch {best} was fastest here: set `REC_BATCH['onnxruntime'] = {best}` in ocrfleet/plan/models.py.")]
