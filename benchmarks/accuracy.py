"""Accuracy on real scanned pages: both CPU engines read every page of `benchmarks/data/real/` (see SOURCES.md
there), scored against a hand transcription of each (`NAME.gt.txt`, one printed line per line).

Each engine is `ocrfleet.run.engine.PaddleOcrEngine` with the bundled PP-OCRv4 mobile models in a process of its own
(`benchmarks.plain_loop --via-ocrfleet-engine`), pages read as a worker reads them (`ocrfleet.inputs.pages`), both
with the CPU default's recognition batch, so that identical text means the runtimes agree and not that a
setting differs. Both detect text on the page scaled to 960 px on its long side (ocrfleet's default,
`text_det_limit_side_len`). A third run, the same onnxruntime engine with PaddleOCR 3's own detection (the page
as it is), shows why that is the default: it decides whether the spaces between words are read. Scores:
`benchmarks.textscore`.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.report import Figure, figure
from benchmarks.textscore import score, worst_lines
from benchmarks.throughput import plain_loop
from ocrfleet.plan.models import REC_BATCH
from ocrfleet.plan.placement import default_threads

REAL = Path(__file__).resolve().parent / "data" / "real"
QUICK = ("eurotext.png", "typewriter-recipe.png")  # the two smallest pages
CHARS_TARGET = 95.0  # % of printed characters, spaces ignored, over all pages
WORDS_TARGET = 90.0  # % of printed words read exactly
DET_FULL = "onnxruntime, PaddleOCR 3's detection on the page as it is"


def real_pages() -> list[Path]:
    """The real pages that have a transcription beside them, by name."""
    return sorted(path for path in REAL.iterdir() if path.suffix != ".txt" and truth_path(path).exists())


def truth_path(page: Path) -> Path:
    return page.with_name(page.stem + ".gt.txt")


def printed_lines(page: Path) -> list[str]:
    return [line for line in truth_path(page).read_text(encoding="utf-8").splitlines() if line.strip()]


def measure(quick: bool, work: Path) -> list[Figure]:
    pages = [page for page in real_pages() if not quick or page.name in QUICK]
    threads = default_threads(1)  # what `--devices cpu` gives its one worker
    batch = REC_BATCH["onnxruntime"]
    runs = {engine: plain_loop(pages, engine, threads, via_ocrfleet_engine=True, rec_batch=batch)
            for engine in ("onnxruntime", "paddle")}
    runs[DET_FULL] = plain_loop(pages, "onnxruntime", threads, via_ocrfleet_engine=True, rec_batch=batch,
                                det_max_side=0)
    rows = []
    for index, page in enumerate(pages):
        printed = printed_lines(page)
        reads = {name: run["texts"][index].splitlines() for name, run in runs.items()}
        rows.append({"page": page.name, "printed": printed, "reads": reads,
                     "identical": reads["onnxruntime"] == reads["paddle"],
                     **{name: score(printed, read) for name, read in reads.items()}})
    (work / "accuracy-pages.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
    speed = {name: run["ocr_s"] / len(pages) for name, run in runs.items()}
    on = (f"{len(pages)} real scanned pages ({', '.join(page.name for page in pages)}; sources, licences and what "
          f"each is in `benchmarks/data/real/SOURCES.md`), `PaddleOcrEngine` per engine in its own process, "
          f"{threads} thread(s), recognition batch {batch} on both; onnxruntime {speed['onnxruntime']:.1f} s/page, "
          f"paddle {speed['paddle']:.1f} s/page")
    chars, words = pooled(rows, "onnxruntime", "chars"), pooled(rows, "onnxruntime", "words")
    full_words = pooled(rows, DET_FULL, "words")
    identical = sum(row["identical"] for row in rows)
    return [
        figure("accuracy", "real pages: characters read right, spaces ignored (onnxruntime)", chars, "%",
               f">= {CHARS_TARGET:.0f}%", chars >= CHARS_TARGET,
               f"1 - edit distance / printed characters, over all pages' characters; {on}."
               + _table(rows) + _misreads(rows),
               "see the per-page table and the worst-read lines under it."),
        figure("accuracy", "real pages: words read exactly (onnxruntime)", words, "%", f">= {WORDS_TARGET:.0f}%",
               words >= WORDS_TARGET,
               "printed words found exactly and in order, over all pages' words (per page in the table above).",
               "words run together: the recognizer drops some spaces between them (compare characters with and "
               "without spaces in the table above), and single misread characters cost whole words. "
               "A recognizer for Latin scripts (e.g. `en_PP-OCRv4_mobile_rec`, not offline here) is the next "
               "thing to measure on English pages."),
        figure("accuracy", "real pages: words read exactly with PaddleOCR 3's own detection size (not the default)",
               full_words, "%", "", None,
               f"the same engine with `text_det_limit_side_len=null` (PaddleOCR 3 detects on the page as it is, "
               f"up to 4000 px) instead of ocrfleet's 960 px long side (per page in the table above); characters, "
               f"spaces ignored, {pooled(rows, DET_FULL, 'chars'):.2f}%; {speed[DET_FULL]:.1f} s/page against "
               f"{speed['onnxruntime']:.1f} s/page with the default. This is why 960 is the default."),
        figure("accuracy", "real pages: onnxruntime and paddle read identical text", 100 * identical / len(rows), "%",
               "100%", identical == len(rows),
               f"{identical} of {len(rows)} pages line for line identical; paddle's characters read right "
               f"{pooled(rows, 'paddle', 'chars'):.2f}% against onnxruntime's {chars:.2f}%.",
               "the two runtimes' float arithmetic differs; the table above lists each page's figures per engine."),
    ]


def pooled(rows: list[dict], name: str, key: str) -> float:
    """`key` over all pages, each page weighted by its printed words (for words) or characters."""
    def size(row: dict) -> int:
        text = " ".join(row["printed"])
        return len(text.split()) if key == "words" else len("".join(text.split()))

    return sum(row[name][key] * size(row) for row in rows) / sum(size(row) for row in rows)


def _table(rows: list[dict]) -> str:
    lines = ["| page | printed lines | characters % (paddle) | characters with spaces % | words % | words %, "
             "PaddleOCR 3's detection | characters in the engine's order % | engines identical |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        mine = row["onnxruntime"]
        lines.append(f"| {row['page']} | {len(row['printed'])} | {mine['chars']:.2f} ({row['paddle']['chars']:.2f}) "
                     f"| {mine['chars_spaced']:.2f} | {mine['words']:.1f} | {row[DET_FULL]['words']:.1f} | "
                     f"{mine['chars_as_read']:.2f} | {'yes' if row['identical'] else '**no**'} |")
    return "\n\n" + "\n".join("  " + line for line in lines) + "\n"


def _misreads(rows: list[dict]) -> str:
    """Each page's two worst-read printed lines (onnxruntime), spaces ignored: what the misses are."""
    lines = ["", "  Worst-read lines per page (printed -> read; edit distance, folded, spaces ignored):"]
    for row in rows:
        for printed, read, distance in worst_lines(row["printed"], row["reads"]["onnxruntime"], 2):
            if distance:
                lines.append(f"  - {row['page']}: `{printed}` -> `{read}` ({distance})")
    return "\n".join(lines) + "\n"
