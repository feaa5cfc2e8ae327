"""Which `pdf_dpi` reads vector PDFs best for its time: OCR accuracy and seconds per page at 72 to 300 dpi.

Generated US-letter PDFs of real (vector) text, invoice and ledger lines in three of PDFium's standard fonts
at 8, 10 and 12 pt, are rendered the way a worker renders them (`ocrfleet.inputs.pages.PageReader`) and read by the
real engine (`ocrfleet.run.engine.PaddleOcrEngine`, onnxruntime, the default preset's models, 1 thread) in
a subprocess of its own (`python -m benchmarks.dpi --read PDF... --dpi D...`), every page at every
resolution, the resolutions in a rotating order so drift on a shared machine hits each alike. Scanned PDFs
(`benchmarks/data/scans/`: real scans at 150 and 300 dpi, transcribed in `benchmarks/data/real/`) are read the
same way: a scan rendered below its own resolution loses detail that no vector page shows, so the rule holds a
resolution to both.

Accuracy against the text the PDF was written with: characters (1 - edit distance / length, spaces
ignored), words (exact words found in order, by `difflib` alignment, over the words printed) and words
split as printed (words read / words printed: below 100% when the engine drops the spaces between words). Scans
against their hand transcriptions, scored as `benchmarks/accuracy.py` scores real pages (`benchmarks.textscore`).
"""

from __future__ import annotations

import argparse
import difflib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import corpus
from benchmarks.fleet import ROOT, bench_env
from benchmarks.accuracy import printed_lines
from benchmarks.report import Figure, figure
from benchmarks.textscore import levenshtein
from benchmarks.textscore import score as score_lines
from ocrfleet.config import JobConfig
from ocrfleet.plan.models import DEFAULT_PRESET

DPIS = (72, 100, 150, 200, 300)
FONTS = ("Helvetica", "Times-Roman", "Courier")
SIZES = (8, 10, 12)
DEFAULT_DPI = JobConfig.model_fields["pdf_dpi"].default
TOLERANCE = 0.5  # points of character accuracy a cheaper resolution may give up against the best one
WORDS_TOLERANCE = 3.0  # points of word accuracy it may give up: above that, runs of words are read together
SLOWER = 1.25  # at most this many times the fastest resolution's seconds per page
DATA = Path(__file__).resolve().parent / "data"
SCANS, TRUTH = DATA / "scans", DATA / "real"  # a scan's transcription: TRUTH / "NAME.gt.txt"
QUICK_SCAN = "huckfinn-c03-29.pdf"  # the smallest scan


def measure(quick: bool, work: Path) -> list[Figure]:
    pages_per_pdf, lines = (1, 8) if quick else (2, None)  # None: a full page of lines
    truth: dict[str, list[list[str]]] = {}
    for font in FONTS:
        for size in SIZES:
            name = f"{font}-{size}pt-{pages_per_pdf}p-{lines or 'full'}.pdf"
            path, lines_of = corpus.vector_pdf(corpus.CACHE / "vector-pdf" / name, font, size, pages_per_pdf,
                                               seed=11, lines=lines)
            truth[str(path)] = lines_of
    scans = sorted(str(path) for path in SCANS.glob("*.pdf") if not quick or path.name == QUICK_SCAN)
    read = read_pages(list(truth) + scans, DPIS)
    rows = [score(item, truth[item["pdf"]][item["page"]]) | {"font": _font(item["pdf"]), "pt": _size(item["pdf"])}
            for item in read["pages"] if item["pdf"] in truth]
    scanned = [score_scan(item) for item in read["pages"] if item["pdf"] not in truth]
    (work / "dpi-pages.json").write_text(json.dumps(rows + scanned, indent=1))
    table = {dpi: _summary([row for row in rows if row["dpi"] == dpi]) for dpi in DPIS}
    by_scan = {name: {row["dpi"]: row for row in scanned if row["scan"] == name} for name in map(_stem, scans)}
    best = recommend(table, by_scan)
    short = shortfall(by_scan, best)
    pages = len(rows) // len(DPIS)
    detail = (f"{pages} generated US-letter pages of vector text ({', '.join(FONTS)} at "
              f"{', '.join(map(str, SIZES))} pt; "
              f"{'8 lines' if quick else 'full pages'} of invoice and ledger lines), each rendered by "
              f"`ocrfleet.inputs.pages.PageReader` and read by `PaddleOcrEngine` (onnxruntime, {DEFAULT_PRESET}, "
              f"1 thread) at "
              f"every resolution, model load {read['load_s']:.1f} s apart. Rule: the lowest resolution within "
              f"{TOLERANCE} points of the best character accuracy and {WORDS_TOLERANCE:g} points of the best word "
              f"accuracy, at most {SLOWER:g}x the fastest one's seconds per page (else the lowest within "
              f"{TOLERANCE} points of the best character accuracy), where also no scanned PDF reads more than "
              f"{TOLERANCE} points of characters below its own best resolution's (if none does: the one whose worst "
              "scan falls least short). Seconds are render + OCR, median per page."
              + _markdown(table) + _by_font_and_size(rows) + _scans_markdown(by_scan))
    return [figure("dpi", "default `pdf_dpi` = measured best trade-off", best, "dpi", f"= {DEFAULT_DPI} (the default)",
                   best == DEFAULT_DPI, detail,
                   f"{best} dpi reads within {TOLERANCE} points of the best character accuracy (and "
                   f"{WORDS_TOLERANCE:g} of the best word accuracy), and no scan more than {short:.2f} points "
                   f"below its own best, at "
                   f"{table[best]['seconds']:.2f} s/page against {table[DEFAULT_DPI]['seconds']:.2f} s/page at "
                   f"{DEFAULT_DPI} (words {table[best]['words']:.1f}% against {table[DEFAULT_DPI]['words']:.1f}%): "
                   f"set `pdf_dpi` to {best} in ocrfleet/config.py. Dropped spaces (words split as printed below 100%) "
                   "follow the em in pixels, not the dpi: no one resolution keeps them for every type size.")]


def recommend(table: dict[int, dict[str, float]], scans: dict[str, dict[int, dict]] | None = None) -> int:
    """The lowest resolution that reads characters and words about as well as the best, for about the time.

    Text detection runs on the page scaled to 960 px, so a finer rendering costs little time but gives the
    recognizer sharper lines; word accuracy (spaces kept) is where that shows. `scans` (scan -> dpi -> its
    row): a resolution must also read every scan within TOLERANCE of that scan's best, since a mean over
    vector pages cannot see a scan's detail lost below the resolution it was scanned at.
    """
    chars = max(row["chars"] for row in table.values())
    words = max(row["words"] for row in table.values())
    fastest = min(row["seconds"] for row in table.values())
    vector = [dpi for dpi, row in table.items() if row["chars"] >= chars - TOLERANCE]
    good = ([dpi for dpi in vector if shortfall(scans or {}, dpi) <= TOLERANCE]
            or [min(vector, key=lambda dpi: shortfall(scans or {}, dpi))])  # none serves every scan: the nearest
    both = [dpi for dpi in good if table[dpi]["words"] >= words - WORDS_TOLERANCE
            and table[dpi]["seconds"] <= SLOWER * fastest]
    return min(both or good)


def read_pages(pdfs: list[str], dpis: tuple[int, ...]) -> dict:
    """Every page of `pdfs` at every resolution, in a subprocess with one thread (see `_read`)."""
    command = [sys.executable, "-m", "benchmarks.dpi", "--read", *pdfs, "--dpi", *map(str, dpis)]
    done = subprocess.run(command, env=bench_env(1), cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmarks.dpi --read exited {done.returncode}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def score(item: dict, lines: list[str]) -> dict:
    """Accuracy of one page's reading against the lines it was written with."""
    printed, found = " ".join(lines), item["text"]
    chars = "".join(printed.split())
    words, read = printed.split(), found.split()
    matched = sum(block.size for block in difflib.SequenceMatcher(None, words, read, autojunk=False)
                  .get_matching_blocks())
    return {"pdf": item["pdf"], "page": item["page"], "dpi": item["dpi"], "seconds": item["seconds"],
            "pixels": item["pixels"], "text": found,
            "chars": 100 * max(0.0, 1 - levenshtein(chars, "".join(found.split())) / len(chars)),
            "words": 100 * matched / len(words), "split": 100 * len(read) / len(words)}


def shortfall(scans: dict[str, dict[int, dict]], dpi: int) -> float:
    """How many points of characters the scan read worst at `dpi` falls below that scan's best resolution."""
    return max((max(row["chars"] for row in rows.values()) - rows[dpi]["chars"] for rows in scans.values()),
               default=0.0)


def score_scan(item: dict) -> dict:
    """Accuracy of one scanned PDF's reading against its hand transcription (`benchmarks.textscore`)."""
    printed = printed_lines(TRUTH / Path(item["pdf"]).name)
    return {"scan": _stem(item["pdf"]), "dpi": item["dpi"], "seconds": item["seconds"], "pixels": item["pixels"],
            "text": item["text"]} | score_lines(printed, item["text"].splitlines())


def _stem(pdf: str) -> str:
    return Path(pdf).stem


def _scans_markdown(by_scan: dict[str, dict[int, dict]]) -> str:
    """Per scanned PDF: characters / words at each resolution, and its seconds per page."""
    if not by_scan:
        return ""
    lines = ["| scanned PDF | " + " | ".join(f"{dpi} dpi: chars / words % (s)" for dpi in DPIS) + " |",
             "|---" * (len(DPIS) + 1) + "|"]
    for name, rows in by_scan.items():
        lines.append(f"| {name} | " + " | ".join(f"{rows[dpi]['chars']:.2f} / {rows[dpi]['words']:.1f} "
                                                  f"({rows[dpi]['seconds']:.1f})" for dpi in DPIS) + " |")
    return "\n" + "\n".join("  " + line for line in lines) + "\n"


def _summary(rows: list[dict]) -> dict[str, float]:
    return {"chars": statistics.mean(r["chars"] for r in rows), "words": statistics.mean(r["words"] for r in rows),
            "split": statistics.mean(r["split"] for r in rows),
            "seconds": statistics.median(r["seconds"] for r in rows),
            "pixels": statistics.median(r["pixels"] for r in rows)}


def _markdown(table: dict[int, dict[str, float]]) -> str:
    lines = ["| dpi | characters % | words % | words split as printed % | s/page | megapixels |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {dpi} | {row['chars']:.2f} | {row['words']:.1f} | {row['split']:.1f} | {row['seconds']:.2f} | "
              f"{row['pixels'] / 1e6:.2f} |" for dpi, row in table.items()]
    return "\n\n" + "\n".join("  " + line for line in lines) + "\n"


def _by_font_and_size(rows: list[dict]) -> str:
    """Character and word accuracy per font and size at each resolution, with the em in pixels it renders at
    (size x dpi / 72): where a resolution fails, and on what."""
    header = "| font, size | " + " | ".join(f"{dpi} dpi: chars / words % (em)" for dpi in DPIS) + " |"
    lines = [header, "|---" * (len(DPIS) + 1) + "|"]
    for font in FONTS:
        for size in SIZES:
            cells = []
            for dpi in DPIS:
                mine = [r for r in rows if r["font"] == font and r["pt"] == size and r["dpi"] == dpi]
                cells.append(f"{statistics.mean(r['chars'] for r in mine):.1f} / "
                             f"{statistics.mean(r['words'] for r in mine):.0f} ({size * dpi / 72:.0f} px)")
            lines.append(f"| {font} {size} pt | " + " | ".join(cells) + " |")
    return "\n" + "\n".join("  " + line for line in lines) + "\n"


def _font(pdf: str) -> str:
    return Path(pdf).name.rsplit("-", 3)[0]


def _size(pdf: str) -> int:
    return int(Path(pdf).name.rsplit("-", 3)[1].removesuffix("pt"))


def _read(pdfs: list[str], dpis: list[int]) -> dict:
    """Load the engine once, warm it on one page, then read every page at every resolution (rotating order)."""
    import pypdfium2 as pdfium

    from benchmarks.plain_loop import bundled_models
    from ocrfleet.run.engine import PaddleOcrEngine
    from ocrfleet.inputs.pages import PageReader

    started = time.perf_counter()
    engine = PaddleOcrEngine(bundled_models("onnxruntime"), "cpu", threads=1)
    load_s = time.perf_counter() - started
    max_pixels = JobConfig.model_fields["max_image_pixels"].default
    with PageReader(dpi=DEFAULT_DPI, max_pixels=max_pixels) as reader:
        engine(reader.load(pdfs[0], 0))  # the first call pays one-time set-up: keep it out of the timings
    results, turn = [], 0
    for pdf in pdfs:
        count = len(pdfium.PdfDocument(pdf))
        for page in range(count):
            for dpi in dpis[turn % len(dpis):] + dpis[:turn % len(dpis)]:
                started = time.perf_counter()
                with PageReader(dpi=dpi, max_pixels=max_pixels) as reader:
                    pixels = reader.load(pdf, page)
                text = "\n".join(line.text for line in engine(pixels))
                results.append({"pdf": pdf, "page": page, "dpi": dpi, "text": text,
                                "seconds": time.perf_counter() - started,
                                "pixels": pixels.shape[0] * pixels.shape[1]})
            turn += 1
    return {"load_s": load_s, "pages": results}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dpi")
    parser.add_argument("--read", nargs="+", required=True, metavar="PDF")
    parser.add_argument("--dpi", nargs="+", type=int, required=True)
    args = parser.parse_args()
    print(json.dumps(_read(args.read, args.dpi)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
