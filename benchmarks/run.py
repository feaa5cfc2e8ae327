"""`python -m benchmarks.run [--quick] [--only NAME ...]`: measure, then write `benchmarks/RESULTS.md`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import sys
import time

from benchmarks.corpus import CACHE
from benchmarks.report import HERE, load_all, machine, render, save

# Module per experiment, and the figure groups (--only names) each produces.
EXPERIMENTS = {
    "throughput": ("overhead", "scaling", "startup", "busy"),
    "peer": ("peer",),
    "scale": ("plan", "reduce", "noop"),
    "memory": ("memory",),
    "engines": ("engines",),
    "batch": ("batch",),
    "dpi": ("dpi",),
    "balance": ("balance",),
    "accuracy": ("accuracy",),
    "gpu": ("gpu",),
}
ORDER = [group for groups in EXPERIMENTS.values() for group in groups]

log = logging.getLogger("benchmarks")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one rep: a smoke run of a few minutes")
    parser.add_argument("--only", nargs="+", choices=ORDER, metavar="NAME", help=f"any of: {', '.join(ORDER)}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    facts = machine()
    wanted = set(args.only or ORDER)
    mode = "quick" if args.quick else "full"
    for name, groups in EXPERIMENTS.items():
        if not wanted & set(groups):
            continue
        work = CACHE / "runs" / name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        started = time.monotonic()
        log.info("%s: measuring (%s)", name, mode)
        figures = importlib.import_module(f"benchmarks.{name}").measure(args.quick, work)
        save(figures, mode, facts)
        for found in figures:
            log.info("  %s: %s (target %s)", found.name, found.shown(), found.target)
        log.info("%s: %.0f s", name, time.monotonic() - started)
    facts["load average (1, 5, 15 min) at end"] = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    (HERE / "RESULTS.md").write_text(render(load_all(ORDER), facts))
    log.info("wrote %s", HERE / "RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
