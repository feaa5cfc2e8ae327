"""Benchmark inputs: scan-like document pages, generated once and cached under `benchmarks/.cache/`."""

from __future__ import annotations

import ctypes
import json
import os
import random
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_raw
from PIL import Image

from tests.pages import draw_page

CACHE = Path(__file__).resolve().parent / ".cache"

_WORDS = ("invoice order total amount shipment warehouse customer account balance due payment receipt "
          "delivery address street city number date item quantity price tax net gross freight dock pallet "
          "schedule report quarter revenue summary signed approved pending reference contract clause party "
          "agreement notice period terms conditions section page annex batch scanner operator night shift").split()


def text_lines(count: int, rng: random.Random) -> list[str]:
    """Lines of plausible business text with numbers, as on a typed letter or invoice."""
    lines = []
    for _ in range(count):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 7))]
        if rng.random() < 0.5:
            words.append(f"{rng.randint(1, 9999)}.{rng.randint(0, 99):02d}")
        lines.append(" ".join(words).capitalize())
    return lines


def ledger_lines(count: int, rng: random.Random) -> list[str]:
    """Invoice and ledger lines: dates, references, words, quantities and amounts, one space apart."""
    lines = []
    for _ in range(count):
        kind = rng.random()
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 4))).capitalize()
        if kind < 0.4:
            line = (f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/20{rng.randint(18, 25)} "
                    f"INV-{rng.randint(10000, 99999)} {words} {rng.randint(1, 9999):,}.{rng.randint(0, 99):02d}")
        elif kind < 0.7:
            line = f"{words} {rng.randint(1, 250)} x {rng.randint(1, 999)}.{rng.randint(0, 99):02d} EUR"
        else:
            line = text_lines(1, rng)[0]
        lines.append(line)
    return lines


def vector_pdf(path: Path, font: str, font_pt: int, pages: int, seed: int,
               lines: int | None = None) -> tuple[Path, list[list[str]]]:
    """A US-letter PDF of real (vector) text in one of PDFium's standard fonts, and each page's lines.

    `lines` per page, or as many as fit at 1.8x line spacing inside 1-inch margins. The lines are kept
    beside the PDF (`.json`) as the ground truth.
    """
    truth_path = path.with_suffix(".json")
    if path.exists() and truth_path.exists():
        return path, json.loads(truth_path.read_text())
    width, height, margin = 612.0, 792.0, 72.0
    pitch = font_pt * 1.8
    per_page = lines or int((height - 2 * margin) // pitch)
    rng = random.Random(seed)
    truth = [ledger_lines(per_page, rng) for _ in range(pages)]
    pdf = pdfium.PdfDocument.new()
    for page_lines in truth:
        pdf_page = pdf.new_page(width, height)
        y = height - margin - font_pt
        for line in page_lines:
            text = pdfium_raw.FPDFPageObj_NewTextObj(pdf, font.encode(), float(font_pt))
            wide = ctypes.c_char_p((line + "\x00").encode("utf-16-le"))
            pdfium_raw.FPDFText_SetText(text, ctypes.cast(wide, ctypes.POINTER(pdfium_raw.FPDF_WCHAR)))
            pdfium_raw.FPDFPageObj_Transform(text, 1, 0, 0, 1, margin, y)
            pdfium_raw.FPDFPage_InsertObject(pdf_page, text)
            y -= pitch
        pdfium_raw.FPDFPage_GenerateContent(pdf_page)
        pdf_page.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.save(str(path))
    pdf.close()
    truth_path.write_text(json.dumps(truth))
    return path, truth


def page(path: Path, dpi: int, lines: int, seed: int) -> Path:
    """An A4 page scanned at `dpi`: `lines` lines of text, tint, blur, noise and a slight skew."""
    if path.exists():
        return path
    size = (round(8.27 * dpi), round(11.69 * dpi))
    font_px = round(dpi * 0.17)  # about 12 pt type
    return draw_page(path, text_lines(lines, random.Random(seed)), size=size, font_px=font_px, scanned=True,
                     seed=seed)


def small_page(path: Path, seed: int) -> Path:
    """A receipt-sized scrap: a few short lines."""
    if path.exists():
        return path
    return draw_page(path, text_lines(4, random.Random(seed)), size=(420, 300), font_px=22, scanned=True, seed=seed)


def uniform(count: int, dpi: int = 100, lines: int = 24) -> Path:
    """A folder of `count` similar A4 pages."""
    folder = CACHE / f"uniform-{count}-{dpi}dpi-{lines}l"
    for index in range(count):
        page(folder / f"page-{index:05d}.png", dpi, lines, seed=index)
    return folder


def repeated(count: int, with_a4: bool) -> Path:
    """`count` pages cycling through 10 receipt scraps (and 10 short A4 pages `with_a4`), as hard links."""
    sources = [small_page(CACHE / "scraps" / f"scrap-{index:02d}.png", seed=500 + index) for index in range(10)]
    if with_a4:
        sources += sorted(uniform(10, lines=8).glob("*.png"))
    folder = CACHE / f"repeated-{count}-of-{len(sources)}"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        target = folder / f"page-{index:06d}.png"
        if not target.exists():
            os.link(sources[index % len(sources)], target)
    return folder


def skewed(scraps: int, large: int, documents: tuple[int, ...], doc_lines: int, large_lines: int = 60) -> Path:
    """A scan batch skewed by page size and count: many receipt scraps, a few 300-dpi A4 pages, and a few
    long scanned documents, one PDF of 100-dpi page images each, `documents` giving their page counts."""
    pages = "+".join(map(str, documents))
    folder = CACHE / f"skewed-{scraps}s-{large}x{large_lines}l-{pages}p{doc_lines}l"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(scraps):
        small_page(folder / f"scrap-{index:04d}.png", seed=1000 + index)
    for index in range(large):
        page(folder / f"large-{index:02d}.png", 300, large_lines, seed=2000 + index)
    for doc, count in enumerate(documents):
        _scanned_stack(folder / f"document-{doc:02d}-{count}p.pdf", count, seed=3000 + doc * 100, lines=doc_lines)
    return folder


def link_farm(count: int) -> Path:
    """`count` real image files (hard links to one small page) in folders of 1,000: a huge input set, cheaply."""
    folder = CACHE / f"links-{count}"
    marker = folder / ".complete"
    if marker.exists():
        return folder
    for index in range(count):
        # A file takes at most 65,000 links (ext4): each farm has its own sources, a fresh one every 50,000.
        source = small_page(CACHE / f"link-sources-{count}" / f"{index // 50_000:03d}.png", seed=7)
        target = folder / f"{index // 1000:04d}" / f"page-{index:07d}.png"
        if index % 1000 == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.link(source, target)
    marker.touch()
    return folder


def manifest(count: int) -> Path:
    """A `.txt` manifest naming every file of `link_farm(count)`, one path a line."""
    farm = link_farm(count)
    path = CACHE / f"manifest-{count}.txt"
    if not path.exists():
        lines = (str(farm / f"{index // 1000:04d}" / f"page-{index:07d}.png") for index in range(count))
        path.write_text("\n".join(lines) + "\n")
    return path


def mixed(long_pages: int, documents: int, document_pages: int, stacks: int, stack_frames: int, scraps: int,
          singles: int) -> Path:
    """What a real batch looks like: one long vector-text PDF, shorter scanned PDFs, multi-page TIFF stacks,
    receipt scraps and single A4 scans at 100 to 300 dpi.

    The long PDF is a hard link to one written under `vector-pdf/` (its ground truth stays there, out of the
    inputs); everything else is generated in place.
    """
    folder = CACHE / f"mixed-{long_pages}l-{documents}x{document_pages}d-{stacks}x{stack_frames}t-{scraps}s-{singles}a4"
    folder.mkdir(parents=True, exist_ok=True)
    long_pdf, _ = vector_pdf(CACHE / "vector-pdf" / f"long-Helvetica-10pt-{long_pages}p-12.pdf", "Helvetica", 10,
                             long_pages, seed=21, lines=12)
    if not (folder / "long.pdf").exists():
        os.link(long_pdf, folder / "long.pdf")
    for doc in range(documents):
        _scanned_stack(folder / f"document-{doc:02d}.pdf", document_pages, seed=4000 + doc * 100, lines=10)
    for stack in range(stacks):
        _scanned_stack(folder / f"stack-{stack:02d}.tif", stack_frames, seed=5000 + stack * 100, lines=6)
    for index in range(scraps):
        small_page(folder / f"scrap-{index:03d}.png", seed=6000 + index)
    for index in range(singles):  # 100, 150, 200 and 300 dpi in turn, denser pages at higher resolutions
        dpi = (100, 150, 200, 300)[index % 4]
        page(folder / f"single-{index:03d}-{dpi}dpi.png", dpi, lines=8 + dpi // 20, seed=6500 + index)
    return folder


def _scanned_stack(target: Path, pages: int, seed: int, lines: int) -> Path:
    """A multi-page file of scan-like 100-dpi pages: a PDF of images, or a TIFF stack, by `target`'s suffix."""
    if target.exists():
        return target
    parts = [page(CACHE / "stack-pages" / f"{lines}l-{seed + number}.png", 100, lines, seed=seed + number)
             for number in range(pages)]
    images = [Image.open(path).convert("RGB") for path in parts]
    options = {"resolution": 100} if target.suffix == ".pdf" else {"compression": "tiff_deflate", "dpi": (100, 100)}
    images[0].save(target, save_all=True, append_images=images[1:], **options)
    return target
