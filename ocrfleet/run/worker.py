"""The worker process: OCR one shard on one device. It never imports Prefect.

Invocation::

    python -m ocrfleet.run.worker --run-dir DIR --shard N [--gpu-id G] [--careful] [--watch-parent]

Environment: `CUDA_VISIBLE_DEVICES` names exactly the one GPU the worker owns (empty for CPU), with
`CUDA_DEVICE_ORDER=PCI_BUS_ID`, so Paddle runs on `gpu:0`, which is physical GPU G; the thread
variables (`OMP_NUM_THREADS`, ...) hold its share of the CPU. The parent sets all of it (see
`ocrfleet.plan.placement`); a GPU id that disagrees with the plan is refused.

Reads `DIR/run.json` (the plan) and `DIR/shards/0000N.jsonl` (its pages).
Writes, in this order:
1. `DIR/records/0000N.jsonl`: one `PageRecord` per page, appended and flushed as each page finishes;
   on a rerun, a torn last line is cut off and pages already recorded are skipped;
2. `DIR/reports/0000N.json`: the `ShardReport`, written atomically;
3. `DIR/done/0000N`: an empty marker, last, meaning everything above is complete.
Logs go to stderr as `LEVEL name: message`; progress lines start with `progress`. Before each page
it writes `@page I` (I: the page's position in the manifest) to stderr, so that the parent knows which
page was in flight if the process dies or hangs. The next page is decoded on a thread while the engine
reads the current one, except with `--careful` (after a crash, so a death is blamed on one page).
With `--watch-parent`, the worker exits when its stdin closes: its parent is gone.

Exit codes: 0 when the shard ran to the end, even if pages failed (those are failed records);
2 for a bad invocation or plan; 3 when the engine became unusable (device lost, out of memory), so
the parent restarts it in a fresh process, which resumes after the last record written;
4 when the GPU the worker holds (asked of NVML from inside, right after the model load and before
any page) is not the planned one, which no retry can mend; 5 when its memory grew past
`max_worker_rss_mb`: it stopped between pages and the parent restarts it; 6 when its parent died;
7 when the run dir's own storage failed (`STORAGE_ERRNOS`: full disk, quota, read-only or I/O error): the
machine's fault, not the page's, so the parent stops the run and blames no page.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import gc
import logging
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil

from ocrfleet.plan.devices import Device, GpuInfo
from ocrfleet.run.engine import EngineUnusable, OcrEngine, PaddleOcrEngine
from ocrfleet.plan.ledger import file_sha256
from ocrfleet.plan.nvml import NvmlUnavailable, UtilizationSampler, held_device
from ocrfleet.inputs.pages import PageReader
from ocrfleet.plan.planning import Plan, ShardPlan, read_manifest, read_plan, shard_paths
from ocrfleet.records import PageRecord, PageRef, ShardReport, complete_records, write_atomic
from ocrfleet.inputs.storage import is_url, remembering_objects

log = logging.getLogger("ocrfleet.run.worker")

EXIT_BAD_INVOCATION = 2
EXIT_ENGINE_UNUSABLE = 3
EXIT_PLACEMENT = 4
EXIT_RECYCLE = 5
EXIT_ORPHANED = 6
EXIT_STORAGE = 7

# Errors of the storage the run writes to: no page causes them, and no retry of a page mends them.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})

PAGE_MARK = "@page "


class PlacementMismatch(RuntimeError):
    """The worker holds a GPU other than the one its shard was planned on."""


class Recycle(Exception):
    """The worker's memory grew past its limit: stop between pages so the parent starts a fresh one."""


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


Loaded = np.ndarray | Exception  # a page's pixels, or why they could not be read


def ocr_page(engine: OcrEngine, page: PageRef, image: Loaded, *, shard: int, device: str, settings: str,
             sha256: str | None) -> tuple[PageRecord, float]:
    """OCR one page, and the seconds spent in the engine. A bad page becomes a failed record, never an exception."""
    started = time.monotonic()
    try:
        if isinstance(image, Exception):
            raise image
        lines = engine(image)
    except EngineUnusable:
        raise
    except Exception as exc:
        error_class = getattr(exc, "error_class", None) or type(exc).__name__
        return PageRecord.failed(page, error_class, str(exc) or error_class, shard=shard, device=device,
                                 settings=settings, sha256=sha256), time.monotonic() - started
    record = PageRecord(source=page.source, page=page.page, status="ok", sha256=sha256, size=page.size,
                        mtime_ns=page.mtime_ns, settings=settings, shard=shard, device=device,
                        text="\n".join(line.text for line in lines), lines=tuple(lines))
    return record, time.monotonic() - started


def _held_gpu(device: Device) -> GpuInfo | str:
    try:
        return verify_placement(device, held_device(os.getpid()), os.getpid())
    except NvmlUnavailable as exc:
        return f"cannot verify placement on {device.name}: {exc}"


Identity = tuple[int, ...] | None  # a local file's device, inode, size, mtime and ctime; None for objects
_READ_ATTEMPTS = 3


class _Pages:
    """The shard's pages to do, each read (decoded or rendered) one page ahead on a thread unless careful, with
    the SHA-256 of the very content that was read: a file replaced while its page is read is read again."""

    def __init__(self, plan: Plan, todo: list[tuple[int, PageRef]], careful: bool) -> None:
        self._reader = PageReader(dpi=plan.config.pdf_dpi, max_pixels=plan.config.max_image_pixels)
        self._todo = todo
        self._pool = None if careful else ThreadPoolExecutor(1, thread_name_prefix="prefetch")
        self._hashes = functools.lru_cache(maxsize=64)(_sha256_as_of)  # pages of one document come together
        self._seen: dict[str, Identity] = {}

    def __iter__(self):
        ahead: Future | None = None
        for position, (index, page) in enumerate(self._todo):
            sys.stderr.write(f"{PAGE_MARK}{index}\n")  # in flight from here on: blamed if we die
            sys.stderr.flush()
            if self._pool is None:
                image, sha256 = self._load(page)
            else:  # every read on the one reader thread: an open PDF is never shared between threads
                image, sha256 = (ahead or self._pool.submit(self._load, page)).result()
                if position + 1 < len(self._todo):
                    ahead = self._pool.submit(self._load, self._todo[position + 1][1])
            yield index, page, image, sha256
        if self._pool is not None:
            self._pool.shutdown()

    def _load(self, page: PageRef) -> tuple[Loaded, str | None]:
        """The page and the hash of the file as read: the file's identity is the same before the read and
        after the hash, or it is read again (a PDF kept open from an earlier page is reopened)."""
        for _ in range(_READ_ATTEMPTS):
            before = _identity(page.source)
            if self._seen.get(page.source, before) != before:
                self._reader.close()  # an open document of this source holds its earlier content
            self._seen[page.source] = before
            try:
                image: Loaded = self._reader.load(page.source, page.page)
            except Exception as exc:  # becomes a failed record in ocr_page, classified there
                image = exc
            sha256 = self._hashes(page.source, before)
            if before is None or _identity(page.source) == before:
                return image, sha256
            self._hashes.cache_clear()  # that hash may be of either content
            log.info("%s changed while its page %d was read; reading it again", page.source, page.page)
        log.warning("%s keeps changing while read; its record gets no hash, so a rerun reads it again", page.source)
        return image, None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)  # the reader thread is done before we close
        self._reader.close()


def _identity(source: str) -> Identity:
    if is_url(source):
        return None  # an object is hashed from the very bytes read (`remembering_objects`)
    try:
        stat = os.stat(source)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def _sha256_as_of(source: str, identity: Identity) -> str | None:
    return file_sha256(source)


def run_shard(run_dir: Path, shard: int, engine_factory: Callable[..., OcrEngine] = PaddleOcrEngine,
              check_placement: Callable[[Device], GpuInfo | str] = _held_gpu, careful: bool = False) -> ShardReport:
    """Process every page of the shard not yet recorded; write the report, then the done marker.

    Raises `Recycle` between pages when memory grew past the plan's limit; the records written so far stand.
    """
    plan = read_plan(run_dir)
    spec = plan.shards[shard]
    paths = shard_paths(run_dir, shard)
    pages = read_manifest(run_dir, shard)
    finished = {record.key for record in complete_records(paths["records"])}
    todo = [(index, page) for index, page in enumerate(pages) if page.key not in finished]
    log.info("shard %d: %d pages on %s, %d already recorded", shard, len(pages), spec.device.name,
             len(pages) - len(todo))
    started = time.monotonic()
    engine = engine_factory(plan.models, _paddle_device(spec), plan.threads_per_worker, plan.rec_batch_size,
                            det_limit=plan.det_limit, fixed_shapes=plan.fixed_shapes) if todo else None
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
    counts = {"ok": 0, "failed": 0}
    engine_s = 0.0
    limit_mb = plan.config.max_worker_rss_mb
    sampler = UtilizationSampler(held.uuid) if held is not None else None
    started = last_progress = time.monotonic()
    paths["records"].parent.mkdir(parents=True, exist_ok=True)
    reader = _Pages(plan, todo, careful)
    try:
        with open(paths["records"], "a", encoding="utf-8") as out, sampler or contextlib.nullcontext(), \
                remembering_objects():  # an object read for its pixels is hashed from memory
            for number, (index, page, image, sha256) in enumerate(reader, 1):
                record, spent = ocr_page(engine, page, image, shard=shard, device=spec.device.name,
                                         settings=plan.settings_for(page), sha256=sha256)
                out.write(record.model_dump_json() + "\n")
                out.flush()
                engine_s += spent
                counts[record.status] += 1
                if record.status == "failed":
                    log.warning("shard %d: %s page %d failed: %s: %s", shard, page.source, page.page,
                                record.error_class, record.error)
                if time.monotonic() - last_progress >= plan.config.progress_interval_s or number == len(todo):
                    last_progress = time.monotonic()
                    log.info("progress shard=%d done=%d total=%d", shard, len(pages) - len(todo) + number, len(pages))
                rss_mb = psutil.Process().memory_info().rss / 2**20
                if limit_mb is not None and rss_mb > limit_mb and number < len(todo):
                    log.warning("shard %d: worker RSS %.0f MiB > max_worker_rss_mb=%d; restarting between pages",
                                shard, rss_mb, limit_mb)
                    raise Recycle(f"RSS {rss_mb:.0f} MiB")
            os.fsync(out.fileno())
    finally:
        reader.close()
    ocr_s = time.monotonic() - started
    report = ShardReport(
        shard=shard, device=spec.device.name, gpu_id=spec.device.gpu_id, pid=os.getpid(),
        hostname=socket.gethostname(), gpu_uuid=held.uuid if held else None, gpu_name=held.name if held else None,
        placement_verified=held is not None, warnings=tuple(warnings), pages_planned=len(pages),
        pages_resumed=len(pages) - len(todo), pages_ok=counts["ok"], pages_failed=counts["failed"],
        model_load_s=round(load_s, 3), ocr_s=round(ocr_s, 3), engine_s=round(engine_s, 3),
        busy_fraction=round(engine_s / ocr_s, 4) if todo and ocr_s > 0 else None,
        gpu_utilization_pct=sampler.mean_pct if sampler else None,
        max_rss_mb=round(psutil.Process().memory_info().rss / 2**20, 1),
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


def _exit_with_parent() -> None:
    """Exit as soon as stdin closes: the parent that holds its other end is gone (killed, cancelled)."""
    def watch() -> None:
        while os.read(0, 1 << 16):  # raw reads: a buffered stdin would deadlock interpreter shutdown
            pass
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None, engine_factory: Callable[..., OcrEngine] = PaddleOcrEngine) -> int:
    parser = argparse.ArgumentParser(prog="python -m ocrfleet.run.worker", description="OCR one shard of a planned run.")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--shard", type=int, required=True)
    parser.add_argument("--gpu-id", type=int, default=None, help="physical (NVML) id of the GPU this shard owns")
    parser.add_argument("--careful", action="store_true", help="no read-ahead: a crash is blamed on one page")
    parser.add_argument("--watch-parent", action="store_true", help="exit when stdin closes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", message="No ccache found")
    if args.watch_parent:
        _exit_with_parent()
    try:
        problem = _check_invocation(read_plan(args.run_dir), args.shard, args.gpu_id)
    except (OSError, ValueError) as exc:
        problem = f"cannot read the plan in {args.run_dir}: {exc}"
    if problem:
        log.error(problem)
        return EXIT_BAD_INVOCATION
    try:
        run_shard(args.run_dir, args.shard, engine_factory=engine_factory, careful=args.careful)
    except EngineUnusable as exc:
        log.error("shard %d: engine unusable, exiting for a restart in a fresh process: %s", args.shard, exc)
        return EXIT_ENGINE_UNUSABLE
    except PlacementMismatch as exc:
        log.error("shard %d: placement mismatch: %s", args.shard, exc)
        return EXIT_PLACEMENT
    except Recycle:
        return EXIT_RECYCLE
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        log.error("shard %d: storage error in the run dir, stopping: %s", args.shard, exc)
        return EXIT_STORAGE
    return 0


if __name__ == "__main__":
    code = main()
    # Exit still runs atexit handlers and flushes files; the freeze spares only the interpreter's last garbage
    # collections over PaddleOCR's heap, which the reduce waits for: 0.1 s on an idle 2-core box, up to 1.8 s
    # on a busy one.
    gc.freeze()
    sys.exit(code)
