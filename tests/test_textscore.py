"""The accuracy benchmark's scoring (`benchmarks.textscore`): reading order does not count, misreads do."""

from benchmarks.textscore import levenshtein, score

# The bank statement's header (benchmarks/data/real/bank-statement-table.png): cells of two to four printed lines
# side by side, so short words repeat across printed lines; the lines below are how the engine reads it, every
# word right, cell by cell from the top.
HEADER = ["Previous Corresponding", "S. This Quarter Quarter Previous Year",
          "N. Particulars Ending (2078 Ending (2078 Quarter Ending", "Paush End) Asoj End) (2077 Paush End)"]
READ = ["This Quarter", "Previous", "Corresponding", "S.", "Quarter", "Previous Year", "N.", "Particulars",
        "Ending (2078", "Ending (2078", "Quarter Ending", "Paush End)", "Asoj End)", "(2077 Paush End)"]


def test_a_header_read_word_for_word_in_another_order_scores_near_full_marks():
    # Filed by best match alone, "Previous" and "Quarter" land under the wrong printed lines: 84.8%.
    assert score(HEADER, READ)["chars"] >= 95


def test_moving_lines_never_hides_a_misread():
    right = score(HEADER, READ)["chars"]
    misread = [line.replace("Particulars", "Partlcu1ars") for line in READ]
    printed_chars = len("".join("".join(HEADER).split()))
    assert levenshtein("Particulars", "Partlcu1ars") == 2
    assert score(HEADER, misread)["chars"] <= right - 100 * 2 / printed_chars + 1e-9


def test_lines_in_printed_order_score_full_marks():
    assert score(HEADER, HEADER) == {"chars": 100.0, "chars_spaced": 100.0, "words": 100.0, "chars_as_read": 100.0}


def test_cells_of_one_printed_line_read_in_another_order_are_no_misread():
    # The German printout's infobox at 300 dpi (benchmarks/data/scans/wikipedia-de-linux.pdf): a value read before
    # its label. In the engine's order alone it cost 8 characters and was filed under another line.
    printed = ["Aktuelle 4.7.2[1]", "Lizenz GPL", "• 1.2 Historische Entwicklung"]
    read = ["4.7.2[1]", "Aktuelle", "Lizenz GPL", "1.2 Historische Entwicklung"]
    scores = score(printed, read)
    assert scores["chars"] == 100 * (1 - 1 / len("".join("".join(printed).split())))  # only the bullet is missing
    assert score(printed, ["4.7.2[l]", "Aktuelle", "Lizenz GPL", "1.2 Historische Entwicklung"])["chars"] < \
        scores["chars"]
