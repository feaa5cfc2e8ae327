"""Worker memory over a long shard: RSS sampled from outside every 0.5 s, growth after warm-up."""

from __future__ import annotations

from pathlib import Path

from benchmarks import corpus
from benchmarks.fleet import run_fleet
from benchmarks.report import Figure, figure


def measure(quick: bool, work: Path) -> list[Figure]:
    count = 100 if quick else 1_000
    folder = corpus.repeated(count, with_a4=not quick)
    run = run_fleet([folder], work / "run", workers=1, threads=1)
    samples = run.watched.rss
    warm_at = max(10, count // 10)
    warm = next((s for s in samples if s.pages >= warm_at), None)
    if warm is None or len(samples) < 3:
        return [figure("memory", f"worker RSS growth over {count:,} pages", None, "%", "<= 10%", None,
                       f"too few RSS samples ({len(samples)}) to tell", "the run was too short to sample")]
    final = samples[-1]
    growth = 100 * (final.rss_mb - warm.rss_mb) / warm.rss_mb
    peak = max(s.rss_mb for s in samples)
    kind = "receipt scraps" if quick else "receipt scraps and A4 pages"
    detail = (f"1 worker, 1 thread, {count:,} pages of {folder.name} ({kind}, cycled); worker RSS sampled "
              f"every 0.5 s: warm-up ({warm.pages} pages done) {warm.rss_mb:.0f} MB, "
              f"final ({final.pages} pages) {final.rss_mb:.0f} MB, max {peak:.0f} MB, {len(samples)} samples.")
    why = ("the worker keeps growing after warm-up: onnxruntime's CPU memory arena grows with each new input shape; "
           "try `enable_cpu_mem_arena: False` in the engine config, and the run's `max_worker_rss_mb` restarts a "
           "worker between pages as a backstop.")
    return [figure("memory", f"worker RSS growth over {count:,} pages", growth, "%", "<= 10%", growth <= 10,
                   detail, why)]
