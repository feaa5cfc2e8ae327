"""benchmarks/RESULTS.md is rendered from the committed figure store, so `--only` on a fresh clone keeps the rest."""

from benchmarks.report import HERE, STORE, load_all
from benchmarks.run import ORDER


def test_every_figure_in_results_md_is_in_the_committed_store():
    assert STORE.parent == HERE  # not under the git-ignored cache, which a fresh clone does not have
    stored = [f"| {figure.name} | {figure.shown()} |" for figure in load_all(ORDER)]
    # The figures table is the one table not indented under a figure's description.
    table = [line for line in (HERE / "RESULTS.md").read_text(encoding="utf-8").splitlines()
             if line.startswith("| ") and not line.startswith("| figure |")]
    assert stored and [row[:len(cell)] for row, cell in zip(table, stored)] == stored
    assert len(table) == len(stored)
