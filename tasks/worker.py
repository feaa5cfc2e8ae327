"""The worker process: OCR one shard on one device. It never imports Prefect.

Invocation::

    python -m tasks.worker --run-dir DIR --shard N [--gpu-id G]

Environment: `CUDA_VISIBLE_DEVICES` names exactly the one GPU the worker owns (empty for CPU), with
`CUDA_DEVICE_ORDER=PCI_BUS_ID`, so Paddle runs on `gpu:0`, which is physical GPU G; the thread
variables (`OMP_NUM_THREADS`, ...) hold its share of the CPU. The parent sets all of it (see
`tasks.placement`); a GPU id that disagrees with the plan is refused.

Reads `DIR/run.json` (the plan) and `DIR/shards/0000N.jsonl` (its pages).
Writes, in this order:
1. `DIR/records/0000N.jsonl`: one `PageRecord` per page, appended and flushed as each page finishes;
   on a rerun, a torn last line is cut off and pages already recorded are skipped;
2. `DIR/reports/0000N.json`: the `ShardReport`, written atomically;
3. `DIR/done/0000N`: an empty marker, last, meaning everything above is complete.
Logs go to stderr as `LEVEL name: message`; progress lines start with `progress`.

Exit codes: 0 when the shard ran to the end, even if pages failed (those are failed records);
2 for a bad invocation or plan; 3 when the engine became unusable (device lost, out of memory), so
the parent retries the shard in a fresh process, which resumes after the last record written;
4 when the GPU the worker holds (asked of NVML from inside, right after the model load and before
any page) is not the planned one, which no retry can mend.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
import warnings
from pathlib import Path

from tasks.devices import Device, GpuInfo
from tasks.engine import EngineUnusable, OcrEngine, PaddleOcrEngine, load_image
from tasks.nvml import NvmlUnavailable, held_device
from tasks.planning import Plan, ShardPlan, read_manifest, read_plan, shard_paths
from tasks.records import PageRecord, PageRef, ShardReport, complete_records, write_atomic

log = logging.getLogger("tasks.worker")

EXIT_PLACEMENT = 4


class PlacementMismatch(RuntimeError):
    """The worker holds a GPU other than the one its shard was planned on."""


def verify_placement(device: Device, held: GpuInfo | None, pid: int) -> GpuInfo | str:
    """The GPU this process holds, checked against the plan; a warning text if NVML cannot tell."""
    if held is None:
        return (f"cannot verify placement of pid {pid} on {device.name}: NVML lists no CUDA context for it "
                "(a container PID namespace hides it)")
    if held.uuid != device.uuid:
        raise PlacementMismatch(
            f"planned on {device.name} ({device.uuid}, CUDA_VISIBLE_DEVICES={device.cuda_visible!r}) but pid {pid} "
            f"runs on gpu:{held.index} ({held.uuid}, {held.name}); check CUDA_DEVICE_ORDER and the parent's "
            "CUDA_VISIBLE_DEVICES")
    log.info("placement verified: pid %d on %s %s (%s)", pid, device.name, held.name, held.uuid)
    return held


def ocr_page(engine: OcrEngine, page: PageRef, shard: int, device: str) -> PageRecord:
    """OCR one page. A bad page becomes a failed record, never an exception."""
    try:
        lines = engine(load_image(page.source))
    except EngineUnusable:
        raise
    except Exception as exc:
        return PageRecord(source=page.source, page=page.page, status="failed", shard=shard, device=device,
                          error=f"{type(exc).__name__}: {exc}")
    return PageRecord(source=page.source, page=page.page, status="ok", shard=shard, device=device,
                      text="\n".join(line.text for line in lines), lines=tuple(lines))


def _held_gpu(device: Device) -> GpuInfo | str:
    try:
        return verify_placement(device, held_device(os.getpid()), os.getpid())
    except NvmlUnavailable as exc:
        return f"cannot verify placement on {device.name}: {exc}"


def run_shard(run_dir: Path, shard: int, engine_factory=PaddleOcrEngine,
              check_placement=_held_gpu) -> ShardReport:
    """Process every page of the shard not yet recorded; write the report, then the done marker."""
    plan = read_plan(run_dir)
    spec = plan.shards[shard]
    paths = shard_paths(run_dir, shard)
    pages = read_manifest(run_dir, shard)
    finished = {record.key for record in complete_records(paths["records"])}
    todo = [page for page in pages if page.key not in finished]
    log.info("shard %d: %d pages on %s, %d already recorded", shard, len(pages), spec.device.name,
             len(pages) - len(todo))
    started = time.monotonic()
    engine = engine_factory(plan.models, _paddle_device(spec), plan.threads_per_worker) if todo else None
    load_s = time.monotonic() - started
    held, warnings = None, []
    if engine is not None:
        log.info("shard %d: %s models loaded in %.1fs", shard, plan.models.engine, load_s)
    if engine is not None and spec.device.is_gpu:
        # Right after the model load, before any page: the CUDA context now exists and NVML can see it.
        held = check_placement(spec.device)
        if isinstance(held, str):
            log.warning(held)
            held, warnings = None, [held]
    ok = failed = 0
    started = last_progress = time.monotonic()
    paths["records"].parent.mkdir(parents=True, exist_ok=True)
    with open(paths["records"], "a", encoding="utf-8") as out:
        for number, page in enumerate(todo, 1):
            record = ocr_page(engine, page, shard, spec.device.name)
            out.write(record.model_dump_json() + "\n")
            out.flush()
            ok, failed = ok + (record.status == "ok"), failed + (record.status == "failed")
            if record.status == "failed":
                log.warning("shard %d: %s page %d failed: %s", shard, page.source, page.page, record.error)
            if time.monotonic() - last_progress >= plan.config.progress_interval_s or number == len(todo):
                last_progress = time.monotonic()
                log.info("progress shard=%d done=%d total=%d", shard, len(pages) - len(todo) + number, len(pages))
        os.fsync(out.fileno())
    ocr_s = time.monotonic() - started
    report = ShardReport(
        shard=shard, device=spec.device.name, gpu_id=spec.device.gpu_id, pid=os.getpid(),
        hostname=socket.gethostname(), gpu_uuid=held.uuid if held else None, gpu_name=held.name if held else None,
        placement_verified=held is not None, warnings=tuple(warnings), pages_planned=len(pages), pages_resumed=len(pages) - len(todo),
        pages_ok=ok, pages_failed=failed, model_load_s=round(load_s, 3), ocr_s=round(ocr_s, 3),
        pages_per_s=round(len(todo) / ocr_s, 3) if todo and ocr_s > 0 else 0.0,
    )
    write_atomic(paths["report"], report.model_dump_json(indent=2) + "\n")
    write_atomic(paths["done"], "")
    return report


def _paddle_device(spec: ShardPlan) -> str:
    # The worker sees only its own GPU, which CUDA numbers 0 whatever its physical index.
    return "gpu:0" if spec.device.is_gpu else "cpu"


def _check_invocation(plan: Plan, shard: int, gpu_id: int | None) -> str | None:
    if not 0 <= shard < len(plan.shards):
        return f"shard {shard} is not in the plan ({len(plan.shards)} shards)"
    device = plan.shards[shard].device
    if gpu_id != device.gpu_id:
        return f"shard {shard} is planned on {device.name}, but the worker was given --gpu-id {gpu_id}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible != device.cuda_visible:
        return (f"shard {shard} needs CUDA_VISIBLE_DEVICES={device.cuda_visible!r}, got {visible!r}; "
                "start workers through ocrfleet, which sets it")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.worker", description="OCR one shard of a planned run.")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--shard", type=int, required=True)
    parser.add_argument("--gpu-id", type=int, default=None, help="physical (NVML) id of the GPU this shard owns")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", message="No ccache found")
    try:
        problem = _check_invocation(read_plan(args.run_dir), args.shard, args.gpu_id)
    except (OSError, ValueError) as exc:
        problem = f"cannot read the plan in {args.run_dir}: {exc}"
    if problem:
        log.error(problem)
        return 2
    try:
        run_shard(args.run_dir, args.shard)
    except EngineUnusable as exc:
        log.error("shard %d: engine unusable, exiting for a retry in a fresh process: %s", args.shard, exc)
        return 3
    except PlacementMismatch as exc:
        log.error("shard %d: placement mismatch: %s", args.shard, exc)
        return EXIT_PLACEMENT
    return 0


if __name__ == "__main__":
    sys.exit(main())
