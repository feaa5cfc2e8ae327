"""ocrfleet vs PaddleOCR's documented multi-process example: same pages, processes, threads and models.

ocrfleet runs twice per rep: against the ephemeral local API Prefect starts for a bare `ocrfleet run`,
and against a Prefect server started once beforehand (`prefect server start`), as scheduled deployments
run in production. The peer, `peer_multiprocess.py`, needs neither.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import sys
from pathlib import Path

import psutil
from pydantic import BaseModel

from benchmarks import corpus
from benchmarks.fleet import FleetRun, Watched, bench_env, run_fleet, watch
from benchmarks.report import Figure, figure, median_ratio
from ocrfleet.config import JobConfig
from ocrfleet.plan.models import DEFAULT_PRESET
from tests.prefect_server import prefect_server

PROCESSES = 2
PDF_DPI = JobConfig.model_fields["pdf_dpi"].default  # ocrfleet's default; the peer is set to render the same
SIDES = {"ephemeral": "Prefect's ephemeral local API", "server": "a running Prefect server"}


class PeerRun(BaseModel):
    watched: Watched
    ready: list[float]  # wall-clock time each process had its pipeline
    finished: list[float]  # wall-clock time each process found the queue empty
    pages: int
    file_s: dict[str, float]  # seconds each input file kept its process busy

    @property
    def best_order_s(self) -> float:
        """About the shortest OCR phase any queue order could give: no process ends before the longest file
        is read, nor before half of all the work is done (two processes)."""
        return max(max(self.file_s.values()), sum(self.file_s.values()) / len(self.ready))

    @property
    def ocr_phase_s(self) -> float:
        return max(self.finished) - min(self.ready)

    def phases(self) -> dict[str, float]:
        """Seconds from command start to the first pipeline ready, the OCR phase, and from then to exit."""
        to_ready = min(self.ready) - self.watched.started_at
        return {"to_ready": to_ready, "ocr": self.ocr_phase_s,
                "after": self.watched.wall_s - to_ready - self.ocr_phase_s}


def run_peer(folder: Path, out: Path, processes: int, threads: int) -> PeerRun:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "benchmarks.peer_multiprocess", "--input_dir", str(folder), "--output_dir",
               str(out), "--device", "cpu", "--instances_per_device", str(processes), "--threads", str(threads)]
    # PaddleX renders PDF pages at zoom PADDLE_PDX_PDF_RENDER_SCALE (2.0, 144 dpi, unless set): the same
    # PDFium call as ocrfleet's at pdf_dpi / 72, so both sides read the same pixels.
    env = {**bench_env(threads), "PADDLE_PDX_PDF_RENDER_SCALE": repr(PDF_DPI / 72)}
    log = out.parent / f"{out.name}.log"
    watched = watch(command, env, worker_marker="peer_multiprocess", log=log)
    text = log.read_text(errors="replace")
    if watched.returncode != 0 or "Error processing" in text:
        raise RuntimeError(f"peer failed ({watched.returncode}):\n{watched.output_tail}")
    times = {kind: {int(pid): float(t) for pid, t in re.findall(rf"^{kind} (\d+) (\d+\.\d+)$", text, re.M)}
             for kind in ("ready", "finished")}
    pages = sorted(re.findall(r"^Processed '(.+)' (\d+) (\d+\.\d+)$", text, re.M), key=lambda page: float(page[2]))
    file_s: dict[str, float] = {}
    last = dict(times["ready"])
    for path, pid, t in pages:  # a page took from its process's previous page (or pipeline ready) to now
        file_s[Path(path).name] = file_s.get(Path(path).name, 0.0) + float(t) - last[int(pid)]
        last[int(pid)] = float(t)
    return PeerRun(watched=watched, ready=list(times["ready"].values()), finished=list(times["finished"].values()),
                   pages=len(pages), file_s=file_s)


def same_text(fleet_dir: Path, peer_dir: Path) -> tuple[int, int]:
    """Pages whose text is identical on both sides, and pages compared: proof both ran the same models."""
    fleet = {}
    for line in (fleet_dir / "results.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        fleet[(Path(record["source"]).stem, record["page"])] = record["text"]
    same = total = 0
    for path in peer_dir.glob("*.json"):
        result = json.loads(path.read_text(encoding="utf-8"))
        key = (Path(result["input_path"]).stem, result.get("page_index") or 0)
        if key in fleet:
            total += 1
            same += fleet[key] == "\n".join(result["rec_texts"])
    return same, total


def _server_cpu_s(api_url: str) -> float:
    """CPU seconds used so far by the Prefect server listening on `api_url`'s port, with its children."""
    port = api_url.rsplit(":", 1)[1].split("/")[0]
    total = 0.0
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "server" in cmdline and port in cmdline:
            for member in (process, *process.children(recursive=True)):
                try:
                    times = member.cpu_times()
                except psutil.Error:
                    continue
                total += times.user + times.system
    return total


def measure(quick: bool, work: Path) -> list[Figure]:
    reps = 1 if quick else 3
    corpora = {
        "uniform": corpus.uniform(4, lines=8) if quick else corpus.uniform(40),
        "skewed": (corpus.skewed(6, 1, (8, 4), doc_lines=6, large_lines=30) if quick
                   else corpus.skewed(30, 2, (60, 30), doc_lines=10, large_lines=40)),
    }
    figures = []
    with prefect_server(work / "prefect-server") as api_url:
        for name, folder in corpora.items():
            fleet: dict[str, list[FleetRun]] = {side: [] for side in SIDES}
            peer: list[PeerRun] = []
            server_cpu: list[float] = []
            for rep in range(reps):
                fleet["ephemeral"].append(run_fleet([folder], work / f"{name}-fleet-{rep}", workers=PROCESSES,
                                                    threads=1))
                peer.append(run_peer(folder, work / f"{name}-peer-{rep}", PROCESSES, threads=1))
                before = _server_cpu_s(api_url)
                fleet["server"].append(run_fleet([folder], work / f"{name}-served-{rep}", workers=PROCESSES,
                                                 threads=1, api_url=api_url))
                server_cpu.append(_server_cpu_s(api_url) - before)
            same = same_text(work / f"{name}-fleet-0", work / f"{name}-peer-0")
            figures += _compare(name, folder, fleet, peer, 1.0 if name == "uniform" else 1.2, same,
                                statistics.median(server_cpu))
    return figures


def _queue_positions(folder: Path) -> str:
    """Where the peer's queue (the example's `glob`, directory order) put each multi-page document."""
    order = [path.name for path in folder.glob("*")]
    found = [f"{name} {index + 1}" for index, name in enumerate(order) if name.endswith(".pdf")]
    return f"the peer's queue (directory order) held {', '.join(found)} of {len(order)} files"


def _best_order(fleet: dict[str, list[FleetRun]], peer: list[PeerRun]) -> str:
    runs = fleet["ephemeral"] + fleet["server"]
    longest = statistics.median(max(p.file_s.values()) for p in peer)
    busy = statistics.median(sum(p.file_s.values()) for p in peer)
    best = median_ratio([p.best_order_s for p in peer] * 2, [f.ocr_phase_s for f in runs])
    return (f"in the peer the longest file took {longest:.1f} s of {busy:.1f} s of OCR in all, so in its best queue "
            f"order (longest file first) its OCR phase would be about {best:.2f}x ocrfleet's")


def _orchestration_share(run: FleetRun) -> float:
    """CPU seconds per second the non-worker processes used from the first record to the last worker's end."""
    start = run.watched.first_record_s or 0.0
    end = max((last for _, last in run.watched.worker_seen_s.values()), default=run.watched.wall_s)
    return run.watched.orchestration_cpu_between(start, end) / max(end - start, 1e-9)


def _median_phases(runs: list) -> dict[str, float]:
    phases = [run.phases() for run in runs]
    return {key: statistics.median(phase[key] for phase in phases) for key in phases[0]}


def _breakdown(fleet: dict[str, list[FleetRun]], peer: list[PeerRun], server_cpu_s: float) -> str:
    parts = []
    for side, label in SIDES.items():
        p = _median_phases(fleet[side])
        wall = statistics.median(run.watched.wall_s for run in fleet[side])
        parts.append(f"ocrfleet on {label}: {wall:.1f} s = {p['to_worker']:.1f} s to its first worker "
                     f"process (Python, Prefect{', its local API' if side == 'ephemeral' else ''}, flow, plan) "
                     f"+ {p['to_first_page']:.1f} s worker start and model load + {p['ocr']:.1f} s OCR phase + "
                     f"{p['after']:.1f} s after the last page (worker exit, reduce, outputs, Prefect shutdown)")
    p = _median_phases(peer)
    wall = statistics.median(run.watched.wall_s for run in peer)
    parts.append(f"peer: {wall:.1f} s = {p['to_ready']:.1f} s to its first pipeline ready + {p['ocr']:.1f} s OCR "
                 f"phase + {p['after']:.1f} s after it")
    return (f"Medians, command start to exit: {'; '.join(parts)}. The server itself used {server_cpu_s:.1f} "
            "CPU-seconds per ocrfleet run (not counted in ocrfleet's wall time).")


def _compare(name: str, folder: Path, fleet: dict[str, list[FleetRun]], peer: list[PeerRun], target: float,
             same: tuple[int, int], server_cpu_s: float) -> list[Figure]:
    runs = fleet["ephemeral"] + fleet["server"]
    ocr_phase = median_ratio([p.ocr_phase_s for p in peer] * 2, [f.ocr_phase_s for f in runs])
    what = (f"{runs[0].pages} pages in {folder.name}: "
            + ("A4 pages at 100 dpi" if name == "uniform" else
               f"receipt scraps, 300-dpi A4 pages and multi-page scanned PDFs rendered at {PDF_DPI} dpi on both "
               f"sides; {_queue_positions(folder)}; {_best_order(fleet, peer)}"))
    on = (f"{what}; {PROCESSES} processes x 1 thread each side, onnxruntime, the default preset's models "
          f"({DEFAULT_PRESET}); "
          f"{len(peer)} rep(s), each running ocrfleet (ephemeral API), the peer, ocrfleet (server) in turn; "
          f"ratio = peer time / ocrfleet time, so > 1 means ocrfleet is faster; identical text on {same[0]} of "
          f"{same[1]} pages (first rep)")
    breakdown = _breakdown(fleet, peer, server_cpu_s)
    f_spread = statistics.median(max(f.report_mtimes) - min(f.report_mtimes) for f in runs)
    p_spread = statistics.median(max(p.finished) - min(p.finished) for p in peer)
    why = (f"Workers finished {f_spread:.1f} s apart in ocrfleet (page-level plan, cost = pixels) vs "
           f"{p_spread:.1f} s in the peer (a shared queue of whole files: a process that takes a long PDF "
           "keeps all its pages). While its workers ran, ocrfleet's own processes (flow, Prefect's local API, "
           f"log pumping) used {statistics.median(_orchestration_share(f) for f in runs):.2f} CPU-seconds per "
           "second, taken from the workers when cores are few. Each working process got "
           f"{statistics.median(f.watched.worker_cpu_share() for f in runs):.2f} CPU-seconds per second in "
           f"ocrfleet vs {statistics.median(p.watched.worker_cpu_share() for p in peer):.2f} in the peer: a "
           "difference there is other load on the machine, not either program.")
    figures = []
    for side, label in SIDES.items():
        ratio = median_ratio([p.watched.wall_s for p in peer], [f.watched.wall_s for f in fleet[side]])
        figures.append(figure("peer", f"peer {name}: end to end, ocrfleet on {label} (peer wall / ocrfleet wall)",
                              ratio, "x", f">= {target:.1f}x", ratio >= target, f"{on}. {breakdown}", why))
    figures.append(figure("peer", f"peer {name}: OCR phase (peer / ocrfleet)", ocr_phase, "x", f">= {target:.1f}x",
                          ocr_phase >= target, "first page begun to last page done, both ocrfleet runs of each rep "
                          f"against the peer's; {on}.", why))
    return figures
