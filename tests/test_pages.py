"""Pages: every image kind decodes to 8-bit BGR; every bad file fails with its class; costs come from headers."""

from __future__ import annotations

import ctypes
import io
import os
import shutil
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_raw
import pytest
from PIL import Image, ImageFile

from ocrfleet.inputs.pages import PageError, PageReader, document_pages, load_page

ROOT = Path(__file__).resolve().parent.parent
DPI, MAX = 150, 100_000_000


def write_pdf(path: Path, pages: list[list[str]], size: tuple[float, float] = (612, 792), font_pt: int = 14) -> Path:
    """A PDF with real (vector) text in Helvetica, one list of lines per page."""
    pdf = pdfium.PdfDocument.new()
    for lines in pages:
        page = pdf.new_page(*size)
        y = size[1] - 72
        for line in lines:
            text = pdfium_raw.FPDFPageObj_NewTextObj(pdf, b"Helvetica", float(font_pt))
            wide = ctypes.c_char_p((line + "\x00").encode("utf-16-le"))
            pdfium_raw.FPDFText_SetText(text, ctypes.cast(wide, ctypes.POINTER(pdfium_raw.FPDF_WCHAR)))
            pdfium_raw.FPDFPageObj_Transform(text, 1, 0, 0, 1, 72, y)
            pdfium_raw.FPDFPage_InsertObject(page, text)
            y -= font_pt * 2
        pdfium_raw.FPDFPage_GenerateContent(page)
        page.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.save(str(path))
    pdf.close()
    return path


def write_encrypted_pdf(path: Path) -> Path:
    from pypdf import PdfReader, PdfWriter

    plain = write_pdf(path.with_name("plain-" + path.name), [["secret"]])
    writer = PdfWriter()
    writer.append(PdfReader(plain))
    writer.encrypt("hunter2")
    with open(path, "wb") as handle:
        writer.write(handle)
    return path


def write_tiff(path: Path, sizes: list[tuple[int, int]]) -> Path:
    frames = [Image.new("RGB", size, (255, 255, 255)) for size in sizes]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return path


def error_class(source: Path, page: int = 0, max_pixels: int = MAX) -> str:
    with pytest.raises(PageError) as caught:
        load_page(str(source), page, dpi=DPI, max_pixels=max_pixels)
    assert str(source) in str(caught.value)  # the message names the file
    return caught.value.error_class


def check_bgr(pixels: np.ndarray, size: tuple[int, int]) -> None:
    assert pixels.dtype == np.uint8 and pixels.flags["C_CONTIGUOUS"]
    assert pixels.shape == (size[1], size[0], 3)


def test_a_pdf_page_renders_at_the_requested_dpi_with_its_text_dark_on_white(tmp_path):
    pdf = write_pdf(tmp_path / "doc.pdf", [["Invoice 4821"], ["second page"]], size=(360, 144))
    pixels = load_page(str(pdf), 1, dpi=144, max_pixels=MAX)
    check_bgr(pixels, (720, 288))
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels.min() < 60


def test_a_page_reader_keeps_the_pdf_open_and_matches_single_loads(tmp_path):
    pdf = write_pdf(tmp_path / "doc.pdf", [[f"page {n}"] for n in range(3)], size=(200, 100))
    with PageReader(dpi=DPI, max_pixels=MAX) as reader:
        pages = [reader.load(str(pdf), n) for n in range(3)]
        assert reader._pdf is not None
    assert reader._pdf is None
    for n, pixels in enumerate(pages):
        assert np.array_equal(pixels, load_page(str(pdf), n, dpi=DPI, max_pixels=MAX))
    assert not np.array_equal(pages[0], pages[1])


def test_a_page_reader_reopens_a_pdf_replaced_since_it_was_opened(tmp_path):
    pdf = write_pdf(tmp_path / "doc.pdf", [["one"]], size=(200, 100))
    with PageReader(dpi=DPI, max_pixels=MAX) as reader:
        reader.load(str(pdf), 0)
        write_pdf(tmp_path / "doc.pdf", [["one"], ["two"]], size=(200, 100))
        os.utime(pdf, ns=(1, 1))
        assert reader.load(str(pdf), 1).shape[0] > 0


def test_each_page_of_a_tiff_stack_is_read_by_its_index(tmp_path):
    tiff = write_tiff(tmp_path / "stack.tif", [(40, 30), (50, 20), (60, 10)])
    for page, size in enumerate([(40, 30), (50, 20), (60, 10)]):
        check_bgr(load_page(str(tiff), page, dpi=DPI, max_pixels=MAX), size)
    assert error_class(tiff, 3) == "PageOutOfRange"


@pytest.mark.parametrize("fmt, mode", [("PNG", "I;16"), ("TIFF", "I;16"), ("TIFF", "I")])
def test_a_16_bit_gray_image_is_scaled_to_8_bits_not_clipped(tmp_path, fmt, mode):
    ramp = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    image = Image.fromarray(ramp.astype(np.int32) if mode == "I" else ramp)
    path = tmp_path / f"deep.{fmt.lower()}"
    image.save(path, format=fmt)
    pixels = load_page(str(path), 0, dpi=DPI, max_pixels=MAX)
    assert pixels[0, :, 0].tolist() == [0, 4, 128, 255]


def test_a_16_bit_rgb_png_keeps_its_colors(tmp_path):
    import zlib, struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + np.array([[65535, 0, 0], [0, 32768, 65535]], dtype=">u2").tobytes()
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(row * 2)) + chunk(b"IEND", b""))
    path = tmp_path / "rgb16.png"
    path.write_bytes(png)
    pixels = load_page(str(path), 0, dpi=DPI, max_pixels=MAX)
    assert pixels[0, 0].tolist() == [0, 0, 255] and pixels[0, 1].tolist() == [255, 128, 0]  # BGR


@pytest.mark.parametrize("make, expected", [
    (lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), [0, 0, 255]),  # red in CMYK
    (lambda: Image.new("1", (4, 4), 1), [255, 255, 255]),
    (lambda: Image.new("L", (4, 4), 7), [7, 7, 7]),
    (lambda: Image.new("RGBA", (4, 4), (0, 0, 0, 0)), [255, 255, 255]),  # transparent: white paper
    (lambda: Image.new("LA", (4, 4), (0, 255)), [0, 0, 0]),
])
def test_every_pixel_mode_decodes_to_bgr_with_transparency_on_white(tmp_path, make, expected):
    image = make()
    path = tmp_path / ("page.tif" if image.mode == "CMYK" else "page.png")
    image.save(path)
    pixels = load_page(str(path), 0, dpi=DPI, max_pixels=MAX)
    check_bgr(pixels, (4, 4))
    assert pixels[1, 1].tolist() == expected


def test_a_palette_image_with_a_transparent_index_is_white_there(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    image.putpixel((0, 0), 0)
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)
    pixels = load_page(str(path), 0, dpi=DPI, max_pixels=MAX)
    assert pixels[0, 0].tolist() == [255, 255, 255] and pixels[1, 1].tolist() == [0, 0, 200]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_an_animation_reads_its_first_frame_and_has_one_page(tmp_path, fmt):
    frames = [Image.new("RGB", (8, 8), color) for color in ("white", "black")]
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], lossless=True)
    assert load_page(str(path), 0, dpi=DPI, max_pixels=MAX)[4, 4].tolist() == [255, 255, 255]
    assert document_pages(str(path), dpi=DPI) == [(0, 64.0)]
    assert error_class(path, 1) == "PageOutOfRange"


def test_a_jpeg_named_png_is_decoded_by_its_content(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (16, 8), (0, 0, 255)).save(path, format="JPEG", quality=95)
    pixels = load_page(str(path), 0, dpi=DPI, max_pixels=MAX)
    check_bgr(pixels, (16, 8))
    assert pixels[4, 8, 0] > 200 and pixels[4, 8, 2] < 50  # blue, in BGR order


def test_exif_orientation_is_applied_like_opencv_does(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    Image.new("RGB", (40, 10), "white").save(path, exif=exif)
    check_bgr(load_page(str(path), 0, dpi=DPI, max_pixels=MAX), (10, 40))


def encoded(fmt: str, size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("name, content, expected", [
    ("empty.png", b"", "EmptyFile"),
    ("cut.png", encoded("PNG")[:-300], "Truncated"),
    ("cut.jpg", encoded("JPEG")[:-300], "Truncated"),
    ("notes.png", b"this is a shopping list, not a picture\n", "NotAnImage"),
    ("dot.png", encoded("PNG", (1, 1)), "ImageTooSmall"),
    ("line.png", encoded("PNG", (300, 1)), "ImageTooSmall"),
    ("broken.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage", "CorruptPdf"),
    ("fake.pdf", b"GIF89a definitely not a pdf", "CorruptPdf"),
])
def test_a_bad_file_fails_with_its_class(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    assert error_class(path) == expected
    assert document_pages(str(path), dpi=DPI) == [(0, 0.0)] or expected in ("Truncated", "ImageTooSmall")


def test_truncated_images_stay_errors_even_when_a_library_turned_leniency_on(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path = tmp_path / "cut.png"
    path.write_bytes(encoded("PNG")[:-300])
    assert error_class(path) == "Truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # and the library's setting is left as it was


def test_a_decompression_bomb_is_costed_from_its_header_then_refused_without_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(path)  # 400 Mpx: tiny on disk, 400 MB decoded
    before = Image.MAX_IMAGE_PIXELS
    tracemalloc.start()
    assert document_pages(str(path), dpi=DPI) == [(0, 400_000_000.0)]
    assert error_class(path, max_pixels=MAX) == "DecompressionBomb"
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10_000_000
    assert Image.MAX_IMAGE_PIXELS == before  # Pillow's own limit is untouched after the call


def test_pillows_own_pixel_limit_neither_refuses_nor_warns_and_is_left_as_it_was(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # whatever a library set: 10 kpx is an error to Pillow
    path = tmp_path / "page.png"
    Image.new("L", (100, 100), 255).save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_page(str(path), 0, dpi=DPI, max_pixels=20_000).shape == (100, 100, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000
    assert error_class(path, max_pixels=9_999) == "DecompressionBomb"


def test_a_pdf_page_too_large_at_the_dpi_is_a_decompression_bomb(tmp_path):
    pdf = write_pdf(tmp_path / "poster.pdf", [["big"]], size=(14400, 14400))  # 200 in square
    assert document_pages(str(pdf), dpi=DPI) == [(0, 14400 * 14400 * (DPI / 72) ** 2)]
    assert error_class(pdf) == "DecompressionBomb"


def test_an_encrypted_pdf_fails_as_encrypted_and_plans_one_unit(tmp_path):
    pdf = write_encrypted_pdf(tmp_path / "locked.pdf")
    assert error_class(pdf) == "EncryptedPdf"
    assert document_pages(str(pdf), dpi=DPI) == [(0, 0.0)]


def test_a_page_past_the_end_of_a_pdf_is_out_of_range(tmp_path):
    pdf = write_pdf(tmp_path / "two.pdf", [["a"], ["b"]], size=(100, 100))
    assert error_class(pdf, 2) == "PageOutOfRange"
    assert error_class(pdf, -1) == "PageOutOfRange"


def test_a_missing_file_a_dangling_link_and_a_link_loop_are_told_apart(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    assert error_class(tmp_path / "vanished.png") == "FileVanished"
    assert error_class(tmp_path / "dangling.png") == "FileVanished"
    assert error_class(tmp_path / "loop") == "SymlinkLoop"
    assert error_class(tmp_path) == "NotAFile"


def test_an_unreadable_file_fails_as_permission_denied(tmp_path):
    path = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(path)
    path.chmod(0)
    code = f"""
from ocrfleet.inputs.pages import load_page, PageError
try:
    load_page({str(path)!r}, 0, dpi=150, max_pixels=10**8)
except PageError as exc:
    print(exc.error_class)
"""
    prefix: list[str] = []
    if os.geteuid() == 0:  # root reads anything: drop the capabilities that let it
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    done = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "PermissionDenied", done.stderr[-2000:]


def test_document_pages_lists_pdf_and_tiff_pages_with_costs_in_pixels(tmp_path):
    pdf = write_pdf(tmp_path / "doc.pdf", [["a"], ["b"], ["c"]], size=(72, 144))
    assert document_pages(str(pdf), dpi=144) == [(0, 288.0 * 144), (1, 288.0 * 144), (2, 288.0 * 144)]
    tiff = write_tiff(tmp_path / "stack.tiff", [(10, 10), (20, 10)])
    assert document_pages(str(tiff), dpi=DPI) == [(0, 100.0), (1, 200.0)]
    png = tmp_path / "one.png"
    Image.new("RGB", (30, 20)).save(png)
    assert document_pages(str(png), dpi=DPI) == [(0, 600.0)]
