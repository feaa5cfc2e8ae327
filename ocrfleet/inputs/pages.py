"""Pages: one page's pixels from an image, a TIFF stack or a PDF, and classified reasons when it cannot be read.

Pages are what `PageRef.page` counts: the frames of a TIFF and the pages of a PDF. The frames of an
animated GIF, WebP or PNG are not pages (they are animation), so only frame 0 is read and page 1 of
such a file is `PageOutOfRange`. A file is a PDF by its content (`%PDF` near the start), any other
file is whatever Pillow recognizes by content, whatever its name says. A source that is a URL
(`ocrfleet.inputs.storage`) is read whole in one GET and decoded from memory; the store's errors become the
same classes as a file's (`FileVanished`, `PermissionDenied`, `NotAFile`, `EmptyFile`), or
`StorageUnavailable` when the store could not be asked (network, credentials, throttling).
"""

from __future__ import annotations

import errno
import io
import os
import stat as stat_mode
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_raw
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ocrfleet.inputs.storage import is_url, read_object

MIN_SIDE = 2  # a page narrower than this cannot hold a line of text
_PDF_SNIFF = 1024  # PDF readers accept the %PDF header anywhere in the first KiB
# PDFium's load error codes (fpdfview.h): FPDF_ERR_PASSWORD and FPDF_ERR_SECURITY; FPDF_ERR_FILE, which a
# document that was read already cannot cause, marks "PDFium set no error" (see `_open_pdf`).
_PDF_ENCRYPTED = (4, 6)
_PDF_NO_ERROR = 2


class PageError(Exception):
    """A page that cannot be read; `error_class` is a stable CamelCase name, the message names the file."""

    def __init__(self, error_class: str, message: str) -> None:
        super().__init__(message)
        self.error_class = error_class


def load_page(source: str, page: int, *, dpi: int, max_pixels: int) -> np.ndarray:
    """Page `page` (0-based) of `source` as a C-contiguous HxWx3 BGR uint8 array, or a `PageError`."""
    with PageReader(dpi=dpi, max_pixels=max_pixels) as reader:
        return reader.load(source, page)


def document_pages(path: str, *, dpi: int) -> list[tuple[int, float]]:
    """Each page index of `path` with its cost in pixels, from headers only; `[(0, 0.0)]` when unreadable."""
    return probe_pages(path, dpi=dpi) or [(0, 0.0)]


def probe_pages(path: str, *, dpi: int) -> list[tuple[int, float]] | None:
    """Like `document_pages`, but None for a file that cannot be read (the worker will say why).

    Never raises for what a file holds: a damaged header makes decoders raise anything (`TypeError`,
    `KeyError`, `struct.error`...), and one bad file must not stop planning the others.
    """
    try:
        if is_url(path):
            return probe_data(_fetch(path), path, dpi=dpi)
        _check_file(path)
        with open_regular(path) as handle:
            return _probe(handle, path, path, dpi)
    except Exception:
        return None


def probe_data(data: bytes, name: str, *, dpi: int) -> list[tuple[int, float]] | None:
    """`probe_pages` of a document already in memory (an object read from a store); `name` is for messages."""
    try:
        return _probe(io.BytesIO(data), data, name, dpi) if data else None
    except Exception:
        return None


def _probe(handle: BinaryIO, document: str | bytes, name: str, dpi: int) -> list[tuple[int, float]]:
    if _is_pdf(handle):
        with _open_pdf(document, name) as pdf:
            scale = (dpi / 72) ** 2
            return [(index, _pdf_area(pdf, index) * scale) for index in range(len(pdf))]
    with _pillow_open(handle, name) as image:
        if image.format != "TIFF":
            return [(0, float(image.width * image.height))]
        return _tiff_frames(image)


def _tiff_frames(image: Image.Image) -> list[tuple[int, float]]:
    """Each frame's cost; a frame that cannot be read ends the list as one more page, so the worker says why."""
    costs = [(0, float(image.width * image.height))]
    while True:
        try:
            image.seek(len(costs))
            costs.append((len(costs), float(image.width * image.height)))
        except EOFError:  # the last frame was read: Pillow's own end of the frame list
            return costs
        except Exception:
            return costs + [(len(costs), 0.0)]


class PageReader:
    """Reads pages one after another, keeping the last PDF open so its next page is not parsed again."""

    def __init__(self, *, dpi: int, max_pixels: int) -> None:
        self.dpi = dpi
        self.max_pixels = max_pixels
        self._pdf: pdfium.PdfDocument | None = None
        self._pdf_key: tuple[str, int, int] | None = None

    def __enter__(self) -> PageReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pdf is not None:
            self._pdf.close()
        self._pdf, self._pdf_key = None, None

    def load(self, source: str, page: int) -> np.ndarray:
        """Page `page` of `source` as BGR uint8, HxWx3, C-contiguous; a `PageError` says why not."""
        if page < 0:
            raise PageError("PageOutOfRange", f"{source}: page {page} does not exist (pages count from 0)")
        if is_url(source):
            return self._load_object(source, page)
        stat = _check_file(source)
        try:
            with open_regular(source) as handle:
                if _is_pdf(handle):
                    return self._load_pdf(source, page, (source, stat.st_size, stat.st_mtime_ns))
                if source.lower().endswith(".pdf"):
                    raise PageError("CorruptPdf", f"{source}: named .pdf but holds no PDF header")
                return self._load_image(handle, source, page)
        except OSError as exc:
            raise _os_error(source, exc) from exc

    def _load_object(self, source: str, page: int) -> np.ndarray:
        # Within a shard an object is taken as unchanged: its pages come together, one GET for all of them.
        key = (source, 0, 0)
        if key == self._pdf_key:
            return self._load_pdf(source, page, key)
        data = _fetch(source)
        handle = io.BytesIO(data)
        if _is_pdf(handle):
            return self._load_pdf(source, page, key, data)
        if source.lower().endswith(".pdf"):
            raise PageError("CorruptPdf", f"{source}: named .pdf but holds no PDF header")
        return self._load_image(handle, source, page)

    def _load_pdf(self, source: str, page: int, key: tuple[str, int, int], data: bytes | None = None) -> np.ndarray:
        if key != self._pdf_key:
            self.close()
            self._pdf = _open_pdf(source if data is None else data, source)
            self._pdf_key = key
        pdf = self._pdf
        if page >= len(pdf):
            raise PageError("PageOutOfRange", f"{source}: page {page} does not exist (the PDF has {len(pdf)} pages)")
        scale = self.dpi / 72
        try:
            width, height = (round(side * scale) for side in pdf.get_page_size(page))
        except pdfium.PdfiumError as exc:
            raise PageError("CorruptPdf", f"{source}: page {page} cannot be read: {exc}") from exc
        self._check_size(source, page, width, height, f"at {self.dpi} dpi ")
        try:
            pdf_page = pdf[page]
            try:
                bitmap = pdf_page.render(scale=scale)  # 3-byte BGR, the layout PaddleOCR wants
                pixels = bitmap.to_numpy()
            finally:
                pdf_page.close()
        except pdfium.PdfiumError as exc:
            raise PageError("CorruptPdf", f"{source}: page {page} cannot be rendered: {exc}") from exc
        if pixels.ndim == 2:  # grayscale or BGRx bitmaps, should PDFium choose them
            pixels = np.repeat(pixels[:, :, None], 3, axis=2)
        return np.ascontiguousarray(pixels[:, :, :3])

    def _load_image(self, handle: BinaryIO, source: str, page: int) -> np.ndarray:
        with _pillow_open(handle, source) as image:
            try:
                if page:
                    self._seek(image, source, page)
                self._check_size(source, page, image.width, image.height, "")
                image.load()
                return _to_bgr(ImageOps.exif_transpose(image))
            except PageError:
                raise
            except Exception as exc:  # a damaged file makes decoders raise anything (TypeError, KeyError...)
                raise _decode_error(source, exc) from exc

    @staticmethod
    def _seek(image: Image.Image, source: str, page: int) -> None:
        # Straight to the frame, never counting them all first: a damaged later frame must not fail earlier ones.
        if image.format == "TIFF":
            try:
                image.seek(page)
                return
            except EOFError:  # Pillow's end of the frame list
                pass
        raise PageError("PageOutOfRange", f"{source}: page {page} does not exist "
                        f"(the {image.format} file has {_frame_count(image)} pages)")

    def _check_size(self, source: str, page: int, width: int, height: int, how: str) -> None:
        if width * height > self.max_pixels:
            raise PageError("DecompressionBomb", f"{source}: page {page} would be {width}x{height} pixels {how}"
                            f"(more than max_image_pixels={self.max_pixels}); raise the limit to read it")
        if width < MIN_SIDE or height < MIN_SIDE:
            raise PageError("ImageTooSmall", f"{source}: page {page} is {width}x{height} pixels {how}"
                            "(too small to hold text)")


def _frame_count(image: Image.Image) -> str:
    if image.format != "TIFF":
        return "1"  # the frames of an animation are not pages
    try:
        return str(image.n_frames)
    except Exception:  # a damaged frame after the last one read
        return "fewer"


def open_regular(path: str) -> BinaryIO:
    """`open(path, "rb")` for a regular file only: a FIFO or a device (say a link to `/dev/zero`) is `NotAFile`.

    The target's type is checked before opening (opening a device can act on it), then again on the
    descriptor, opened without blocking: a FIFO swapped in between cannot hang the reader either.
    """
    try:
        if not stat_mode.S_ISREG(os.stat(path).st_mode):
            raise _not_a_file(path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise _os_error(path, exc) from exc
    try:
        if not stat_mode.S_ISREG(os.fstat(fd).st_mode):
            raise _not_a_file(path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_file(path: str) -> os.stat_result:
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise _os_error(path, exc) from exc
    if not stat_mode.S_ISREG(stat.st_mode):
        raise _not_a_file(path)
    if stat.st_size == 0:
        raise PageError("EmptyFile", f"{path}: the file is empty (0 bytes)")
    return stat


def _not_a_file(path: str) -> PageError:
    return PageError("NotAFile", f"{path}: not a regular file (a folder, FIFO, socket or device)")


def _fetch(url: str) -> bytes:
    """The object's bytes, or the `PageError` that says why not."""
    try:
        data = read_object(url)
    except FileNotFoundError as exc:
        raise PageError("FileVanished", f"{url}: no such object (deleted or renamed after planning)") from exc
    except PermissionError as exc:
        raise PageError("PermissionDenied", f"{url}: access denied; give the worker's credentials read "
                        f"access to it: {exc}") from exc
    except IsADirectoryError as exc:
        raise PageError("NotAFile", f"{url}: a folder (prefix), not an object") from exc
    except Exception as exc:  # botocore, aiohttp, google-auth...: the store could not be asked, not the page
        raise PageError("StorageUnavailable", f"{url}: the store could not be read: "
                        f"{type(exc).__name__}: {exc}") from exc
    if not data:
        raise PageError("EmptyFile", f"{url}: the object is empty (0 bytes)")
    return data


def _os_error(path: str, exc: OSError) -> PageError:
    if exc.errno == errno.ELOOP:
        return PageError("SymlinkLoop", f"{path}: symbolic links loop; fix the link")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return PageError("FileVanished", f"{path}: no longer exists (moved or deleted after planning, "
                         "or a dangling symlink)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PageError("PermissionDenied", f"{path}: permission denied; make it readable by the worker's user")
    return PageError("ReadError", f"{path}: cannot be read: {exc.strerror or exc}")


def _is_pdf(handle: BinaryIO) -> bool:
    head = handle.read(_PDF_SNIFF)
    handle.seek(0)
    return b"%PDF-" in head


def _open_pdf(document: str | bytes, name: str) -> pdfium.PdfDocument:
    """A PDF from a path or from its bytes; `name` is the source, for messages."""
    # PDFium's last error is global and only set on some failures: a PDF of no pages fails setting none, and
    # would report whatever failed before it (EncryptedPdf after an encrypted one). So set a known one first.
    found = pdfium_raw.FPDF_LoadDocument(b"/nonexistent/ocrfleet-reset-pdfium-error", None)
    if found:  # never, unless someone made that file
        pdfium_raw.FPDF_CloseDocument(found)
    try:
        return pdfium.PdfDocument(document)
    except pdfium.PdfiumError as exc:
        code = getattr(exc, "err_code", None)
        if code in _PDF_ENCRYPTED:
            raise PageError("EncryptedPdf", f"{name}: the PDF is encrypted and needs a password; "
                            "decrypt it first (e.g. qpdf --decrypt)") from exc
        if code == _PDF_NO_ERROR:
            raise PageError("EmptyPdf", f"{name}: the PDF has no pages (none that PDFium can find)") from exc
        raise PageError("CorruptPdf", f"{name}: not a readable PDF ({exc})") from exc


def _pdf_area(pdf: pdfium.PdfDocument, index: int) -> float:
    width, height = pdf.get_page_size(index)
    return float(width * height)


@contextmanager
def _pillow_open(handle: BinaryIO, path: str) -> Iterator[Image.Image]:
    """Open lazily (header only) with Pillow's own pixel limit off: callers check sizes against theirs."""
    with _pillow_limits_off():
        try:
            image = Image.open(handle)
        except UnidentifiedImageError as exc:
            raise PageError("NotAnImage", f"{path}: not an image or PDF that can be read "
                            "(unknown or damaged header)") from exc
        except (OSError, ValueError, EOFError, SyntaxError) as exc:
            raise _decode_error(path, exc) from exc
        with image:
            yield image


_limits_lock = threading.Lock()
_limits_depth = 0
_limits_saved: tuple[int | None, bool] = (None, False)


@contextmanager
def _pillow_limits_off() -> Iterator[None]:
    # Pillow's bomb limit and truncation leniency are module globals (and a library may set the latter):
    # set them for the duration of a read and restore them after, counting nested or concurrent readers.
    global _limits_depth, _limits_saved
    with _limits_lock:
        if _limits_depth == 0:
            _limits_saved = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = None, False
        _limits_depth += 1
    try:
        yield
    finally:
        with _limits_lock:
            _limits_depth -= 1
            if _limits_depth == 0:
                Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = _limits_saved


def _decode_error(path: str, exc: BaseException) -> PageError:
    message = str(exc)
    # Pillow says it several ways: "image file is truncated", "Truncated File Read", "broken data stream".
    if "truncated" in message.lower() or "broken data stream" in message or isinstance(exc, EOFError):
        return PageError("Truncated", f"{path}: the image data is truncated (an incomplete copy?): {message}")
    if isinstance(exc, MemoryError):
        return PageError("OutOfMemory", f"{path}: not enough memory to decode the image")
    return PageError("UnreadableImage", f"{path}: the image cannot be decoded: {type(exc).__name__}: {message}")


def _to_bgr(image: Image.Image) -> np.ndarray:
    """8-bit BGR from any Pillow mode: deep modes scaled (not clipped), transparency composited on white."""
    if image.mode in _DEEP_MODES:
        image = Image.fromarray(_scale_to_8bit(np.asarray(image), image.mode))
    elif image.mode in _ALPHA_MODES or (image.mode in ("P", "L", "RGB") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


_DEEP_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})


def _scale_to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    # 16-bit samples map 0..65535 onto 0..255 (a dark 16-bit scan stays dark, not clipped or stretched);
    # mode "I" is what some decoders give 16-bit data, so it is 16-bit unless it fits in 8.
    values = values.astype(np.float64)
    top = 255.0
    if mode.startswith("I;16") or (mode == "I" and values.size and values.max() > 255):
        top = 65535.0
    elif mode == "F" and values.size and 0.0 <= values.min() and values.max() <= 1.0:
        top = 1.0
    return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
