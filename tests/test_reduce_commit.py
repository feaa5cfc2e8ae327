"""The reduce's outputs are one set: `summary.json`, written last, commits them; a reduce cut short is redone."""

import json
import signal
import subprocess
import sys

from ocrfleet.config import load_config
from ocrfleet.plan.planning import prepare_run
from ocrfleet.reduce.summary import up_to_date
from ocrfleet.run.lock import hold_run_dir
from ocrfleet.run.worker import run_shard
from tests.faulty_worker import FaultyEngine
from tests.test_run_dir import blank_pages, run_fake

# A reduce in a process of its own that is killed (SIGKILL, as `kill -9` would) right after `results.jsonl` is
# replaced, before the other outputs and the summary are written.
_KILLED_REDUCE = """
import os, signal, sys
from pathlib import Path
import ocrfleet.reduce.summary as summary
summary.write_outputs = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
summary.reduce_run(Path(sys.argv[1]))
"""


def texts(out):
    return sorted(path.name for path in (out / "text").rglob("*.txt"))


def test_a_reduce_killed_midway_is_redone_not_taken_for_a_finished_run(tmp_path):
    inputs = blank_pages(tmp_path / "in", range(100, 104))
    out = tmp_path / "out"
    config = load_config(None, inputs=[str(inputs)], output_dir=str(out), devices="cpu:1", outputs=["text"])
    run_fake(out, config)
    assert up_to_date(config).pages_planned == 4  # a finished run: nothing to do

    blank_pages(inputs, [104, 105])
    with hold_run_dir(out):
        plan = prepare_run(config)
        for spec in plan.shards:
            run_shard(out, spec.shard, engine_factory=FaultyEngine)
    killed = subprocess.run([sys.executable, "-c", _KILLED_REDUCE, str(out)])
    assert killed.returncode == -signal.SIGKILL
    assert len((out / "results.jsonl").read_text().splitlines()) == 6  # replaced...
    assert json.loads((out / "summary.json").read_text())["pages_planned"] == 4  # ...the rest still the old run's
    assert len(texts(out)) == 4

    assert up_to_date(config) is None  # not "nothing to do": the interrupted reduce must be done again
    run_fake(out, config)
    finished = up_to_date(config)
    assert finished is not None and finished.pages_planned == finished.pages_ok == 6
    assert texts(out) == [f"w{width}.png.txt" for width in range(100, 106)]
