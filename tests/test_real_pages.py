"""Real PaddleOCR (onnxruntime, the default preset's models) on real scans (`benchmarks/data/real/`), against their
hand transcriptions, scored as the `accuracy` benchmark scores them."""

import pytest

from benchmarks.accuracy import REAL, printed_lines
from benchmarks.plain_loop import bundled_models
from benchmarks.textscore import score
from ocrfleet.run.engine import PaddleOcrEngine
from ocrfleet.inputs.pages import load_page

# Characters read right (spaces ignored) and words read exactly, at least: PP-OCRv6 small measured 99.7% and 98.5%
# on eurotext, 99.8% and 96.6% on huckfinn (benchmarks/RESULTS.md, `accuracy`), less a margin for other CPUs'
# arithmetic; PP-OCRv4 mobile, which ran words together, read 87.9% and 67.5% of their words. A page read with
# another page's transcription scores below 30% of characters.
FLOORS = {"eurotext.png": (97.0, 93.0), "huckfinn-c03-29.jpg": (97.0, 90.0)}


@pytest.fixture(scope="module")
def engine():
    return PaddleOcrEngine(bundled_models("onnxruntime"), "cpu", threads=1)


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_a_real_scan_reads_within_its_measured_character_and_word_accuracy(engine, name):
    page = REAL / name
    read = [line.text for line in engine(load_page(str(page), 0, dpi=150, max_pixels=10**9))]
    scores = score(printed_lines(page), read)
    chars, words = FLOORS[name]
    assert scores["chars"] >= chars and scores["words"] >= words, (name, scores, read)


def test_a_reading_scored_against_another_pages_transcription_falls_below_every_floor():
    eurotext, huckfinn = printed_lines(REAL / "eurotext.png"), printed_lines(REAL / "huckfinn-c03-29.jpg")
    assert score(eurotext, huckfinn)["chars"] < 30
    assert score(huckfinn, eurotext)["chars"] < 30
