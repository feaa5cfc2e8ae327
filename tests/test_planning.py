import math
import os

import pytest

from ocrfleet.config import load_config
from ocrfleet.inputs.listing import collect_pages
from ocrfleet.plan.planning import make_plan, manifest_path, read_manifest, split_balanced, write_plan
from ocrfleet.records import Page, PageRef


def make_files(folder, sizes):
    for name, size in sizes.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
    return folder


def plan_for(folder, out, devices="cpu:3", **extra):
    config = load_config(None, inputs=[str(folder)], output_dir=str(out), devices=devices, **extra)
    return make_plan(config)


def test_every_input_lands_in_exactly_one_shard(tmp_path):
    make_files(tmp_path / "in", {f"p{i:03d}.png": 100 + i * 37 % 500 for i in range(50)})
    plan, shard_pages, _ = plan_for(tmp_path / "in", tmp_path / "out", workers_per_device=2)
    keys = [page.key for pages in shard_pages for page in pages]
    assert len(plan.shards) == 6
    assert sorted(keys) == sorted(page.key for page in collect_pages([str(tmp_path / "in")]))
    assert len(set(keys)) == len(keys) == plan.pages_total == 50
    assert [spec.pages for spec in plan.shards] == [len(pages) for pages in shard_pages]


def test_same_inputs_and_config_give_a_byte_identical_plan(tmp_path):
    make_files(tmp_path / "in", {f"p{i}.png": 10 * i + 1 for i in range(20)})
    written = []
    for attempt in range(2):
        out = tmp_path / f"out{attempt}"
        write_plan(out, plan_for(tmp_path / "in", tmp_path / "out"))
        written.append({path.relative_to(out): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()})
    assert written[0] == written[1]
    assert len(written[0]) == 5  # run.json, carried.jsonl (empty) and three manifests


def test_shards_are_balanced_by_cost_on_a_skewed_corpus():
    costs = [10_000] * 3 + [1_000] * 30 + [37] * 200
    pages = [PageRef(source=f"/p{i:04d}.png", cost=cost) for i, cost in enumerate(costs)]
    totals = [sum(page.cost for page in shard) for shard in split_balanced(pages, 4)]
    assert max(totals) / min(totals) < 1.05


def test_a_small_run_spreads_over_devices_before_doubling_up(tmp_path):
    make_files(tmp_path / "in", {"a.png": 5, "b.png": 3})
    plan = plan_for(tmp_path / "in", tmp_path / "out", devices="cpu:4").plan
    assert len(plan.shards) == 2


def test_manifests_round_trip(tmp_path):
    make_files(tmp_path / "in", {"a.png": 5, "b.png": 3, "c.png": 4})
    out = tmp_path / "out"
    planned = plan_for(tmp_path / "in", out, devices="cpu:2")
    write_plan(out, planned)
    shard_pages = planned.shard_pages
    assert manifest_path(out, 1).name == "00001.jsonl"
    assert [read_manifest(out, shard) for shard in range(2)] == shard_pages


def test_a_manifest_line_is_what_the_page_model_writes():
    sources = ["/scans/a.png", '/odd "quoted" \\ name\twith\ncontrol\x01chars.png', "/ünïcödé/✓/😀.png"]
    costs = [0.0, 5000.0, 1 / 3, 1e-5, 5e-5, 1e16, 2.5e300, float("inf"), float("nan"), 7]
    for source in sources:
        for cost in costs:
            page = Page(source, 3, cost, 123_456, 1_700_000_000_123_456_789)
            assert page.json_line() == page.ref().model_dump_json() + "\n"
            if math.isfinite(cost):  # the model writes inf and nan as null, which it cannot read back
                assert PageRef.model_validate_json(page.json_line()) == page.ref()


def test_shards_hold_pages_in_source_order_and_equal_costs_go_in_that_order():
    pages = [Page(f"/p{i:04d}.png", 0, 1.0) for i in range(10)]
    members = split_balanced(pages[::-1], 3)  # the order pages come in does not matter
    assert members == [pages[0::3], pages[1::3], pages[2::3]]


def test_a_machine_default_for_auto_devices_comes_from_ocrfleet_devices(tmp_path, monkeypatch):
    make_files(tmp_path / "in", {f"p{i}.png": 5 for i in range(6)})
    monkeypatch.setenv("OCRFLEET_DEVICES", "cpu:3")
    assert len(plan_for(tmp_path / "in", tmp_path / "out", devices="auto").plan.shards) == 3
    assert len(plan_for(tmp_path / "in", tmp_path / "out", devices="cpu:2").plan.shards) == 2  # explicit wins
