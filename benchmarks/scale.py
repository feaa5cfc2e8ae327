"""Plan and reduce at a million pages, and a no-op rerun of a finished run.

Each measurement runs in its own process (`python -m benchmarks.scale STEP ...`), which prints its time and
peak RSS as JSON, so one step's memory never inflates another's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import corpus
from benchmarks.fleet import ROOT, bench_env, watch
from benchmarks.report import Figure, figure

SHARDS = 8
LINE_BOX = ((10.0, 10.0), (400.0, 10.0), (400.0, 40.0), (10.0, 40.0))


def _config(inputs: str, out: Path):
    from ocrfleet.config import load_config

    # No parquet/text outputs: the figure is reduce itself (reconcile, results.jsonl, summary); the optional
    # outputs parse every record in full and are a separate cost (see ocrfleet/reduce/outputs.py).
    return load_config(None, inputs=[inputs], output_dir=str(out), devices=f"cpu:{SHARDS}", threads_per_worker=1,
                       outputs=())


def step_plan(inputs: str, out: Path) -> dict:
    from ocrfleet.inputs.listing import list_pages
    from ocrfleet.plan.planning import make_plan

    config = _config(inputs, out)
    started, cpu = time.monotonic(), _cpu_s()
    planned = make_plan(config)
    seconds, cpu, peak = time.monotonic() - started, _cpu_s() - cpu, _peak_rss_mb()
    plan = planned.plan
    del planned
    started = time.monotonic()
    list_pages(config.inputs)  # again, as make_plan lists them, to split the time: listing vs the rest
    return {"seconds": seconds, "cpu_s": cpu, "pages": plan.pages_total, "collect_s": time.monotonic() - started,
            "peak_rss_mb": peak}


def step_synth(inputs: str, out: Path) -> dict:
    """Plan a run as the flow does, then write every shard's records, report and done marker."""
    from ocrfleet.plan.planning import prepare_run, read_manifest, shard_paths
    from ocrfleet.records import PageRecord, ShardReport, TextLine, write_atomic

    shutil.rmtree(out, ignore_errors=True)
    plan = prepare_run(_config(inputs, out))
    lines = tuple(TextLine(text=f"Invoice line {n} total 1{n}4.50", score=0.98, box=LINE_BOX) for n in range(3))
    text = "\n".join(line.text for line in lines)
    for spec in plan.shards:
        paths = shard_paths(out, spec.shard)
        paths["records"].parent.mkdir(parents=True, exist_ok=True)
        with open(paths["records"], "w", encoding="utf-8") as handle:
            for page in read_manifest(out, spec.shard):
                record = PageRecord(source=page.source, page=page.page, status="ok", text=text, lines=lines,
                                    shard=spec.shard, device="cpu", size=page.size, mtime_ns=page.mtime_ns,
                                    settings=plan.settings_for(page))
                handle.write(record.model_dump_json() + "\n")
        report = ShardReport(shard=spec.shard, device="cpu", pid=0, hostname="synthetic", pages_planned=spec.pages,
                             pages_resumed=0, pages_ok=spec.pages, pages_failed=0, model_load_s=1.0,
                             ocr_s=spec.pages / 10, pages_per_s=10.0)
        write_atomic(paths["report"], report.model_dump_json(indent=2) + "\n")
        write_atomic(paths["done"], "")
    return {"pages": plan.pages_total}


def step_reduce(inputs: str, out: Path) -> dict:
    from ocrfleet.reduce.summary import reduce_run

    started = time.monotonic()
    summary = reduce_run(out)
    return {"seconds": time.monotonic() - started, "pages": summary.pages_ok, "problems": summary.problems[:3]}


STEPS = {"plan": step_plan, "synth": step_synth, "reduce": step_reduce}


def _in_process(step: str, inputs: str, out: Path) -> dict:
    command = [sys.executable, "-m", "benchmarks.scale", step, inputs, str(out)]
    done = subprocess.run(command, env=bench_env(), cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{step} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def manifest_supported() -> bool:
    from ocrfleet.inputs.listing import InputError, collect_pages

    try:
        return len(collect_pages([str(corpus.manifest(3))])) == 3
    except InputError:
        return False


def measure(quick: bool, work: Path) -> list[Figure]:
    count = 100_000 if quick else 1_000_000
    share = count / 1_000_000  # quick mode scales the time targets with the page count
    scaled = "" if count == 1_000_000 else f" (quick: {count:,}, time target scaled)"
    figures = [_plan(count, scaled, work, share)]
    _in_process("synth", str(corpus.link_farm(count)), work / "reduce")
    finished = _in_process("reduce", "", work / "reduce")
    figures.append(figure(
        "reduce", "reduce_run over 1,000,000 records" + scaled, finished["seconds"], "s", f"<= {30 * share:g} s",
        finished["seconds"] <= 30 * share and not finished["problems"],
        f"`ocrfleet.reduce.summary.reduce_run` on a synthetic finished run of {finished['pages']:,} records (3 lines each) in "
        f"{SHARDS} shards, planned by `prepare_run` and written through the pydantic models beforehand, in "
        f"another process; peak RSS of the reducing process {finished['peak_rss_mb']:.0f} MB.",
        "reduce parses each record's identity fields and holds every line to sort them: a k-way merge of the "
        "shards' sorted record files (each worker writes in manifest order) would stream it in constant memory."))
    figures.append(_noop(1_000 if quick else 10_000, work))
    return figures


def _plan(count: int, scaled: str, work: Path, share: float) -> Figure:
    name = "make_plan over 1,000,000 inputs" + scaled
    if manifest_supported():
        inputs, how = str(corpus.manifest(count)), "a .txt manifest"
    else:
        inputs, how = str(corpus.link_farm(count)), "a directory tree (no manifest support in collect_pages yet)"
    result = _in_process("plan", inputs, work / "plan")
    met = result["seconds"] <= 10 * share and result["peak_rss_mb"] <= 1024
    return figure("plan", name, result["seconds"], "s", f"<= {10 * share:g} s and <= 1 GB RSS", met,
                  f"`make_plan` ({SHARDS} CPU shards) over {result['pages']:,} real files (hard links to one page) "
                  f"named by {how}; peak RSS {result['peak_rss_mb']:.0f} MB (whole process); CPU time (user + kernel, "
                  f"all threads) {result['cpu_s']:.1f} s.",
                  f"of the {result['seconds']:.1f} s, listing the inputs (`list_pages`: read the manifest, a stat "
                  f"and a `Page` tuple per file) takes about {result['collect_s']:.1f} s (timed again after the "
                  "plan), the rest is splitting (LPT over a heap) and the Plan model. Of the CPU time, the stats take "
                  "about 40% (an `os.stat` per file, mostly kernel time), reading and de-duplicating the manifest "
                  "about 30%, making the pages and splitting them the rest; every page is held as a tuple, not a "
                  "model. Wall time above the CPU time is waiting for a core: compare the load average below. "
                  "Profile with `python -m cProfile -m benchmarks.scale plan INPUTS OUT`.")


def _noop(count: int, work: Path) -> Figure:
    out = work / "noop"
    inputs = str(corpus.link_farm(count))
    _in_process("synth", inputs, out)
    _in_process("reduce", inputs, out)
    settings = work / "noop.yaml"  # the same settings the finished run was planned with (no extra outputs)
    settings.write_text("outputs: []\n")
    command = [sys.executable, "-m", "ocrfleet.cli", "run", inputs, "--output", str(out), "--devices", f"cpu:{SHARDS}",
               "--threads-per-worker", "1", "--config", str(settings)]
    watched = watch(command, bench_env(), records_dir=None, log=work / "noop.log")
    idle = watched.returncode == 0 and watched.worker_start_s is None
    return figure("noop", f"no-op rerun of a finished {count:,}-page run", watched.wall_s, "s", "<= 5 s, no worker",
                  idle and watched.wall_s <= 5,
                  f"`ocrfleet run` again on the output of a finished (synthetic) {count:,}-page run: exit "
                  f"{watched.returncode}, worker started: {'no' if watched.worker_start_s is None else 'yes'}.",
                  "the CLI plans once before Prefect starts (a stat per input, the earlier records' identities) and "
                  "returns when nothing changed; what remains is listing the inputs and reading results.jsonl.")


def _cpu_s() -> float:
    used = os.times()  # this process, every thread: user and kernel time
    return used.user + used.system


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("inputs")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    result = STEPS[args.step](args.inputs, args.out)
    result.setdefault("peak_rss_mb", _peak_rss_mb())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
