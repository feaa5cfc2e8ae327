"""Figures as data, the machine they were measured on, and `RESULTS.md` rendered from them."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import statistics
from pathlib import Path

import psutil
from pydantic import BaseModel

HERE = Path(__file__).resolve().parent
# Committed, unlike the cache: `--only` on a fresh clone keeps every other group's last figures.
STORE = HERE / "figures"
PACKAGES = ("paddleocr", "paddlex", "paddlepaddle", "paddlepaddle-gpu", "onnxruntime", "prefect")


class Figure(BaseModel):
    """One measured figure against its target; `met` is None when it could not be measured."""

    group: str  # the --only name that produces it
    name: str
    value: float | None
    unit: str
    target: str
    met: bool | None
    detail: str = ""  # how it was measured, on what
    why: str = ""  # for a missed or n/a figure: why, and what would close the gap
    mode: str = ""
    measured_at: str = ""
    machine: str = ""  # CPU and the OCR packages it was measured with ("" for figures stored before it was kept)

    def shown(self) -> str:
        return "n/a" if self.value is None else f"{self.value:.3g} {self.unit}".strip()


def figure(group: str, name: str, value: float | None, unit: str, target: str, met: bool | None,
           detail: str = "", why: str = "") -> Figure:
    return Figure(group=group, name=name, value=value, unit=unit, target=target, met=met, detail=detail,
                  why="" if met else why)


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median of pairwise ratios: each pair was measured back to back, so drift cancels within it."""
    return statistics.median(a / b for a, b in zip(numerators, denominators))


def machine() -> dict[str, str]:
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "unknown")
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "CPU": f"{model}; {psutil.cpu_count(logical=True)} logical cores "
               f"({len(os.sched_getaffinity(0))} usable)",
        "RAM": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "load average (1, 5, 15 min) at start": load,
        "OS": platform.platform(),
        "python": platform.python_version(),
        **versions,
    }


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def where(facts: dict[str, str]) -> str:
    """The machine facts a figure keeps: figures measured on different machines share one RESULTS.md."""
    return "; ".join([facts["CPU"], facts["RAM"], *(f"{name} {facts[name]}" for name in PACKAGES if name in facts)])


def save(figures: list[Figure], mode: str, facts: dict[str, str]) -> None:
    """Keep each group's latest figures, so `--only` refreshes some and RESULTS.md still shows all."""
    STORE.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    for group in {f.group for f in figures}:
        mine = [f.model_copy(update={"mode": mode, "measured_at": stamp, "machine": where(facts)})
                for f in figures if f.group == group]
        part = STORE / f".{group}.jsonl.part"  # written beside and renamed: a killed run leaves the old figures
        part.write_text("".join(f.model_dump_json() + "\n" for f in mine))
        part.replace(STORE / f"{group}.jsonl")


def load_all(order: list[str]) -> list[Figure]:
    found = []
    for group in order:
        path = STORE / f"{group}.jsonl"
        if path.exists():
            found += [Figure.model_validate_json(line) for line in path.read_text().splitlines()]
    return found


def render(figures: list[Figure], machine_facts: dict[str, str]) -> str:
    verdict = {True: "met", False: "**missed**", None: "n/a"}
    lines = ["# ocrfleet benchmark results", "",
             f"Written {datetime.datetime.now().isoformat(timespec='seconds')} by `python -m benchmarks.run` (see "
             "`benchmarks/README.md`); do not edit by hand. Each figure says its mode (quick: smoke sizes, one "
             "rep; full: the sizes the targets are about), when and on which machine it was measured.", "",
             "## Machine of the latest run", ""]
    lines += [f"- {key}: {value}" for key, value in machine_facts.items()]
    machines = list(dict.fromkeys(f.machine for f in figures if f.machine))
    label = {text: f"M{number}" for number, text in enumerate(machines, 1)}
    lines += ["", "## Machines the figures were measured on", ""]
    lines += [f"- {label[text]}: {text}" for text in machines]
    lines += ["- not recorded: figures stored before the machine was kept with them (2026-12-04)"] * any(
        not f.machine for f in figures)
    lines += ["", "## Figures", "", "| figure | measured | target | verdict | mode, when, machine |",
              "|---|---|---|---|---|"]
    lines += [f"| {f.name} | {f.shown()} | {f.target or '-'} | {verdict[f.met] if f.target else 'info'} | "
              f"{f.mode}, {f.measured_at}, {label.get(f.machine, 'not recorded')} |" for f in figures]
    lines += ["", "## How each was measured", ""]
    for f in figures:
        lines.append(f"- **{f.name}**: {f.detail}")
        if f.why:
            lines.append(f"  - *why / what would close the gap*: {f.why}")
    return "\n".join(lines) + "\n"
