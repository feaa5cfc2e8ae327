"""The CPU default: onnxruntime vs Paddle Inference without oneDNN, same pages, threads and models."""

from __future__ import annotations

import difflib
import statistics
from pathlib import Path

from benchmarks import corpus
from benchmarks.report import Figure, figure, median_ratio
from benchmarks.throughput import plain_loop
from ocrfleet.plan.placement import default_threads


def measure(quick: bool, work: Path) -> list[Figure]:
    if quick:
        pages = [corpus.small_page(corpus.CACHE / "scraps" / f"scrap-{i:02d}.png", seed=500 + i) for i in range(3)]
    else:
        large = corpus.page(corpus.CACHE / "large-300dpi.png", dpi=300, lines=60, seed=2000)
        pages = sorted(corpus.uniform(20).glob("*.png"))[:6] + [large]
    threads = default_threads(1)  # what `--devices cpu` gives its one worker
    reps = 1 if quick else 3
    onnx, paddle = [], []
    for _ in range(reps):
        # PP-OCRv4 mobile: the one preset shipped for both engines.
        onnx.append(plain_loop(pages, "onnxruntime", threads, via_ocrfleet_engine=True, models="pp-ocrv4-mobile"))
        paddle.append(plain_loop(pages, "paddle", threads, via_ocrfleet_engine=True, models="pp-ocrv4-mobile"))
    speedup = median_ratio([p["ocr_s"] for p in paddle], [o["ocr_s"] for o in onnx])
    pairs = list(zip(onnx[0]["texts"], paddle[0]["texts"]))
    identical = sum(a == b for a, b in pairs)
    similarity = statistics.mean(difflib.SequenceMatcher(None, a, b).ratio() for a, b in pairs)
    kind = "receipt scraps" if quick else "A4 at 100 dpi and one at 300 dpi"
    on = (f"{len(pages)} generated scan-like pages ({kind}; "
          "no real document scans ship in the installed packages), `ocrfleet.run.engine.PaddleOcrEngine` in its own "
          f"process, {threads} thread(s), {reps} alternating rep(s); medians: onnxruntime "
          f"{statistics.median(o['ocr_s'] for o in onnx) / len(pages):.2f} s/page, paddle "
          f"{statistics.median(p['ocr_s'] for p in paddle) / len(pages):.2f} s/page")
    return [
        figure("engines", "CPU engine speed-up: onnxruntime / paddle (no oneDNN)", speedup, "x", ">= 5x",
               speedup >= 5, on + ".",
               "Paddle 3.3's oneDNN path rejects these models, so the Paddle side runs plain CPU kernels; the gap "
               "left is onnxruntime's own: check `intra_op_num_threads` is honoured and try onnxruntime's "
               "graph optimization level ORT_ENABLE_ALL and `enable_cpu_mem_arena`."),
        figure("engines", "CPU engines read the same text (identical pages)", 100 * identical / len(pairs), "%",
               "100%", identical == len(pairs),
               f"{identical} of {len(pairs)} pages identical; mean text similarity {similarity:.4f}; {on}.",
               "the two runtimes' float arithmetic differs; list the differing lines to judge."),
    ]
