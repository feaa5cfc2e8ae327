"""Real PaddleOCR (onnxruntime, the bundled models) on real scans (`benchmarks/data/real/`), against their
hand transcriptions, scored as the `accuracy` benchmark scores them."""

import pytest

from benchmarks.accuracy import REAL, printed_lines
from benchmarks.plain_loop import bundled_models
from benchmarks.textscore import score
from ocrfleet.run.engine import PaddleOcrEngine
from ocrfleet.inputs.pages import load_page

# Characters read right, spaces ignored, at least: measured 97.1% and 99.7% (benchmarks/RESULTS.md, `accuracy`),
# less a margin for other CPUs' arithmetic. A page read with another page's transcription scores below 30%.
FLOORS = {"eurotext.png": 94.0, "huckfinn-c03-29.jpg": 97.0}


@pytest.fixture(scope="module")
def engine():
    return PaddleOcrEngine(bundled_models("onnxruntime"), "cpu", threads=1)


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_a_real_scan_reads_within_its_measured_character_accuracy(engine, name):
    page = REAL / name
    read = [line.text for line in engine(load_page(str(page), 0, dpi=150, max_pixels=10**9))]
    accuracy = score(printed_lines(page), read)["chars"]
    assert accuracy >= FLOORS[name], (name, accuracy, read)


def test_a_reading_scored_against_another_pages_transcription_falls_below_every_floor():
    eurotext, huckfinn = printed_lines(REAL / "eurotext.png"), printed_lines(REAL / "huckfinn-c03-29.jpg")
    assert score(eurotext, huckfinn)["chars"] < 30
    assert score(huckfinn, eurotext)["chars"] < 30
