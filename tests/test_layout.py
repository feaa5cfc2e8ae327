"""The install puts one package, `ocrfleet`, into a user's environment: no top-level `tasks` or `flows`."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("name", ["tasks", "flows"])
def test_no_top_level_tasks_or_flows_package_is_installed(tmp_path, name):
    # Outside the checkout, so that only what the install put on sys.path can be found.
    done = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode != 0 and "No module named" in done.stderr, done.stdout + done.stderr


def test_the_prefect_layer_installs_under_the_ocrfleet_name(tmp_path):
    code = ("import ocrfleet.flows.ocr_flow as f, ocrfleet.flows.corpus_flow as c, ocrfleet.tasks.ocr_tasks, "
            "ocrfleet.cli; print(f.ocr_run.name, c.corpus_run.name)")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ocrfleet", "ocrfleet-corpus"]
