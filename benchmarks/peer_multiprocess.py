"""The peer: PaddleOCR's documented multi-process example, rewritten for these models and a CPU.

Source: PaddleOCR 3.x docs, "Parallel Inference in Pipeline" -> "Example of Multi-Process Parallel
Inference" (docs/version3.x/pipeline_usage/instructions/parallel_inference.en.md in PaddlePaddle/PaddleOCR;
https://www.paddleocr.ai/latest/en/version3.x/pipeline_usage/instructions/parallel_inference.html), the
same script as PaddleX's "Pipeline Parallel Inference" page with `create_pipeline` in place of
`getattr(paddleocr, class_name)(device=device)`
(https://paddlepaddle.github.io/PaddleX/latest/en/pipeline_usage/instructions/parallel_inference.html).
Kept as documented: a `multiprocessing.Manager().Queue()` filled with every path of `input_dir.glob(...)`
(directory order, unsorted), one `Process` per (device, instance) that builds its pipeline once and then
pulls paths with `get_nowait()` until the queue is empty, `pipeline.predict(batch)` with `batch_size` 1,
`result.save_to_json(...)` per page (`{stem}_{page_index}.json` for PDF pages), and an error for a batch
printed and skipped. A PDF is one queue item: the process that takes it reads all its pages, which
PaddleX renders at zoom `PADDLE_PDX_PDF_RENDER_SCALE` (paddlex/utils/flags.py; 2.0 unless set).
Changed, so both sides use the same models and threads: the pipeline is `PaddleOCR` built exactly as
`benchmarks.plain_loop.plain_paddleocr` (ocrfleet's bundled models and engine options), and `--device cpu`
with `--instances_per_device N` is accepted (the original asks for two or more GPU ids). Each process also
prints when its pipeline was ready and when it ran out of work, and its pid and the time on each
`Processed` line, so that the OCR phase and each file's time can be told.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from multiprocessing import Manager, Process
from pathlib import Path
from queue import Empty


def worker(engine: str, threads: int, device: str, task_queue, batch_size: int, output_dir: str) -> None:
    from benchmarks.plain_loop import bundled_models, plain_paddleocr

    pipeline = plain_paddleocr(bundled_models(engine), threads)
    print(f"ready {os.getpid()} {time.time():.6f}", flush=True)
    should_end = False
    batch: list[str] = []
    while not should_end:
        try:
            input_path = task_queue.get_nowait()
        except Empty:
            should_end = True
        else:
            batch.append(input_path)
        if batch and (len(batch) == batch_size or should_end):
            try:
                for result in pipeline.predict(batch):
                    input_path = Path(result["input_path"])
                    if result.get("page_index") is not None:
                        output_path = f"{input_path.stem}_{result['page_index']}.json"
                    else:
                        output_path = f"{input_path.stem}.json"
                    result.save_to_json(str(Path(output_dir, output_path)))
                    print(f"Processed {str(input_path)!r} {os.getpid()} {time.time():.6f}", flush=True)
            except Exception as exc:
                print(f"Error processing {batch} on {device!r}: {exc}", file=sys.stderr)
            batch.clear()
    print(f"finished {os.getpid()} {time.time():.6f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input_dir", type=Path, required=True)
    parser.add_argument("--output_dir", type=Path, default=Path("output"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--instances_per_device", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--input_glob_pattern", default="*")
    parser.add_argument("--engine", choices=["onnxruntime", "paddle"], default="onnxruntime")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not args.input_dir.is_dir():
        print(f"{str(args.input_dir)!r} is not a directory.", file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with Manager() as manager:
        task_queue = manager.Queue()
        for img_path in args.input_dir.glob(args.input_glob_pattern):
            task_queue.put(str(img_path))
        processes = []
        for _ in range(args.instances_per_device):
            process = Process(target=worker, args=(args.engine, args.threads, args.device, task_queue,
                                                   args.batch_size, str(args.output_dir)))
            process.start()
            processes.append(process)
        for process in processes:
            process.join()
    print("All done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
