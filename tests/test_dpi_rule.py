"""The `dpi` benchmark's rule for the default `pdf_dpi` (`benchmarks.dpi.recommend`): cheapest resolution that
reads vector text about as well as the best, and every scanned PDF about as well as its own best."""

from benchmarks.dpi import TRUTH, recommend, score_scan, shortfall


def _vector(chars: dict[int, float]) -> dict[int, dict[str, float]]:
    return {dpi: {"chars": value, "words": 99.0, "seconds": 2.5} for dpi, value in chars.items()}


def _scan(chars: dict[int, float]) -> dict[int, dict]:
    return {dpi: {"chars": value} for dpi, value in chars.items()}


VECTOR = _vector({72: 99.5, 100: 99.8, 150: 99.7, 200: 99.5, 300: 99.8})


def test_vector_text_alone_picks_the_cheapest_resolution_near_the_best():
    assert recommend(VECTOR) == 72


def test_a_scan_that_loses_detail_below_its_resolution_raises_the_pick():
    scans = {"a-300-dpi-scan": _scan({72: 99.0, 100: 99.6, 150: 99.8, 200: 99.7, 300: 99.8}),
             "a-150-dpi-scan": _scan({72: 99.2, 100: 95.5, 150: 99.6, 200: 99.5, 300: 99.3})}
    assert recommend(VECTOR, scans) == 150


def test_when_no_resolution_serves_every_scan_the_one_whose_worst_scan_falls_least_short_is_picked():
    scans = {"one": _scan({72: 90.0, 100: 99.0, 150: 98.0, 200: 90.0, 300: 90.0}),
             "other": _scan({72: 90.0, 100: 90.0, 150: 98.0, 200: 90.0, 300: 99.0})}
    assert recommend(VECTOR, scans) == 150
    assert shortfall(scans, 150) == 1.0 and shortfall(scans, 72) == 9.0 and shortfall({}, 72) == 0.0


def test_a_scan_is_scored_against_its_pages_transcription():
    printed = (TRUTH / "huckfinn-c03-29.gt.txt").read_text(encoding="utf-8")
    lines = [line for line in printed.splitlines() if line.strip()]
    right = score_scan({"pdf": "x/huckfinn-c03-29.pdf", "dpi": 150, "seconds": 1.0, "pixels": 1,
                        "text": "\n".join(lines)})
    wrong = score_scan({"pdf": "x/huckfinn-c03-29.pdf", "dpi": 150, "seconds": 1.0, "pixels": 1,
                        "text": "\n".join(lines[: len(lines) // 2])})
    assert (right["chars"], right["words"]) == (100.0, 100.0)
    assert wrong["chars"] < 60 and wrong["words"] < 60
