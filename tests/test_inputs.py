"""Inputs: files, folders, globs, page ranges and manifests become sorted, de-duplicated pages with costs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from ocrfleet.inputs import listing as inputs_module
from ocrfleet.inputs.listing import InputError, collect_pages, parse_page_range
from tests.test_pages import write_pdf, write_tiff


def image(path: Path, size: tuple[int, int] = (30, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, "white").save(path, format="PNG" if path.suffix.lower() != ".jpg" else "JPEG")
    return path


def keys(pages, root: Path) -> list[tuple[str, int]]:
    return [(os.path.relpath(page.source, root), page.page) for page in pages]


def test_pdfs_and_tiff_stacks_expand_to_one_page_each_with_pixel_costs_size_and_mtime(tmp_path):
    write_pdf(tmp_path / "doc.pdf", [["a"], ["b"], ["c"]], size=(72, 36))
    write_tiff(tmp_path / "stack.tif", [(10, 10), (20, 10)])
    image(tmp_path / "one.png")
    pages = collect_pages([str(tmp_path)], dpi=144)
    assert keys(pages, tmp_path) == [("doc.pdf", 0), ("doc.pdf", 1), ("doc.pdf", 2), ("one.png", 0),
                                     ("stack.tif", 0), ("stack.tif", 1)]
    assert [page.cost for page in pages] == [144 * 72.0] * 3 + [600.0, 100.0, 200.0]
    stat = os.stat(tmp_path / "doc.pdf")
    assert (pages[0].size, pages[0].mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def test_files_folders_and_globs_are_absolute_sorted_and_deduplicated(tmp_path, monkeypatch):
    for name in ("b.png", "a.JPG", "deep/c.png", "d.webp"):
        image(tmp_path / name)
    (tmp_path / "notes.doc").write_text("not a page")
    monkeypatch.chdir(tmp_path)
    pages = collect_pages([".", "b.png", "*.webp", str(tmp_path / "**" / "*.png")])
    assert keys(pages, tmp_path) == [("a.JPG", 0), ("b.png", 0), ("d.webp", 0), (os.path.join("deep", "c.png"), 0)]
    assert all(os.path.isabs(page.source) for page in pages)


def test_a_symlinked_folder_loop_is_walked_once_and_links_keep_their_names(tmp_path):
    image(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "loop").symlink_to(tmp_path / "in")
    (tmp_path / "in" / "alias.png").symlink_to(tmp_path / "in" / "a.png")
    assert keys(collect_pages([str(tmp_path / "in")]), tmp_path / "in") == [("a.png", 0), ("alias.png", 0)]


@pytest.mark.parametrize("name", ["with space.png", "quote'\"s.png", "ünïcødé 文字.png", "new\nline.png",
                                  "-leading-dash.png", "$(touch pwned).png", "semi;colon`tick`.png"])
def test_odd_file_names_are_taken_literally(tmp_path, name):
    image(tmp_path / name)
    assert keys(collect_pages([str(tmp_path / name)]), tmp_path) == [(name, 0)]
    assert keys(collect_pages([str(tmp_path)]), tmp_path) == [(name, 0)]
    assert not (tmp_path / "pwned").exists()


def test_a_page_range_after_a_file_name_selects_those_pages(tmp_path):
    pdf = write_pdf(tmp_path / "doc.pdf", [[str(n)] for n in range(10)], size=(72, 72))
    pages = collect_pages([f"{pdf}[2-4,9]", f"{pdf}[3]"])
    assert [page.page for page in pages] == [1, 2, 3, 8]
    assert [page.page for page in collect_pages([f"{pdf}[2-4]", str(pdf)])] == list(range(10))  # all wins
    with pytest.raises(InputError, match=r"page\(s\) 11, 12 asked for, but it has 10"):
        collect_pages([f"{pdf}[9-12]"])
    with pytest.raises(InputError, match="bad page range"):
        collect_pages([f"{pdf}[5-2]"])


def test_a_file_whose_name_looks_like_a_range_is_itself(tmp_path):
    named = image(tmp_path / "scan[1].png")
    assert keys(collect_pages([str(named)]), tmp_path) == [("scan[1].png", 0)]


def test_page_ranges_are_one_based_inclusive_and_stored_zero_based():
    assert parse_page_range("1-5,8") == {0, 1, 2, 3, 4, 7}
    assert parse_page_range(" 3 ") == {2}
    for bad in ("0", "a", "1-", "-3", "4-2", "1,,2", ""):
        with pytest.raises(ValueError):
            parse_page_range(bad)


def test_a_txt_manifest_resolves_relative_paths_against_its_folder_and_skips_comments(tmp_path, monkeypatch):
    image(tmp_path / "data" / "a.png")
    image(tmp_path / "data" / "sub" / "b.png")
    write_pdf(tmp_path / "data" / "doc.pdf", [["x"], ["y"], ["z"]], size=(72, 72))
    manifest = tmp_path / "data" / "list.txt"
    manifest.write_text(f"# scans for Monday\n\na.png\n  sub/b.png  \ndoc.pdf[2-3]\n{tmp_path / 'data' / 'a.png'}\n")
    monkeypatch.chdir(tmp_path)
    pages = collect_pages(["data/list.txt"])
    assert keys(pages, tmp_path / "data") == [("a.png", 0), ("doc.pdf", 1), ("doc.pdf", 2),
                                              (os.path.join("sub", "b.png"), 0)]


def test_csv_and_jsonl_manifests_take_a_named_column_pages_and_cost(tmp_path):
    write_pdf(tmp_path / "doc.pdf", [["x"]] * 6, size=(72, 72))
    image(tmp_path / "odd name, with comma.png")
    (tmp_path / "m.csv").write_text('file,pages,cost\ndoc.pdf,"1-2,6",\n"odd name, with comma.png",,5\n')
    (tmp_path / "m.jsonl").write_text('{"file": "doc.pdf", "pages": [3]}\n\n{"file": "doc.pdf", "pages": "4-4", "cost": 7}\n')
    pages = collect_pages([str(tmp_path / "m.csv"), str(tmp_path / "m.jsonl")], manifest_path_column="file")
    assert keys(pages, tmp_path) == [("doc.pdf", n) for n in (0, 1, 2, 3, 5)] + [("odd name, with comma.png", 0)]
    assert pages[-1].cost == 5.0 and pages[0].cost == (100 / 72) ** 2 * 72 * 72  # the default dpi


def test_every_bad_manifest_row_is_reported_at_once_with_its_line(tmp_path):
    image(tmp_path / "a.png")
    rows = ['{"path": "a.png"}', "{not json", '{"name": "a.png"}', '"a.png"', '{"path": "missing.png"}',
            '{"path": "a.png", "pages": "x"}', '{"path": "a.png", "cost": -1}', '{"path": "a.png", "cost": "inf"}']
    (tmp_path / "m.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(InputError) as caught:
        collect_pages([str(tmp_path / "m.jsonl")])
    message = str(caught.value)
    for line in range(2, 9):
        assert f"m.jsonl:{line}:" in message
    assert "m.jsonl:1:" not in message and "m.jsonl:5: missing.png: no such file" in message


def test_a_long_list_of_bad_rows_is_cut_to_ten(tmp_path):
    (tmp_path / "m.txt").write_text("".join(f"gone{n}.png\n" for n in range(25)))
    with pytest.raises(InputError, match=r"and 15 more") as caught:
        collect_pages([str(tmp_path / "m.txt")])
    assert str(caught.value).count("no such file") == 10


def test_missing_files_are_reported_in_the_order_the_manifest_names_them(tmp_path):
    (tmp_path / "m.txt").write_text("".join(f"gone{n}.png\n" for n in (9, 10, 2)))
    with pytest.raises(InputError) as caught:
        collect_pages([str(tmp_path / "m.txt")])
    lines = str(caught.value).splitlines()[1:]
    assert [line.split(": ")[1] for line in lines] == ["gone9.png", "gone10.png", "gone2.png"]


def test_a_csv_manifest_without_the_path_column_names_the_columns_it_has(tmp_path):
    (tmp_path / "m.csv").write_text("filename\na.png\n")
    with pytest.raises(InputError, match=r"m.csv:1: no 'path' column \(columns: \['filename'\]\)"):
        collect_pages([str(tmp_path / "m.csv")])


def test_include_and_exclude_globs_match_the_path_or_the_name(tmp_path):
    for name in ("keep/a.png", "keep/b.jpg", "drafts/c.png", "keep/d.png"):
        image(tmp_path / name)
    pages = collect_pages([str(tmp_path)], include_globs=["*.png"], exclude_globs=["*/drafts/*", "d.*"])
    assert keys(pages, tmp_path) == [(os.path.join("keep", "a.png"), 0)]
    with pytest.raises(InputError, match="all left out by include/exclude globs"):
        collect_pages([str(tmp_path)], include_globs=["*.tiff"])


def test_inputs_that_name_nothing_usable_are_clear_errors(tmp_path):
    (tmp_path / "notes.doc").write_text("x")
    with pytest.raises(InputError, match="no such file"):
        collect_pages([str(tmp_path / "missing.png")])
    with pytest.raises(InputError, match="not a supported image type"):
        collect_pages([str(tmp_path / "notes.doc")])
    with pytest.raises(InputError, match="no images found"):
        collect_pages([str(tmp_path)])


def test_unreadable_documents_are_planned_as_one_unit_costed_by_size_for_the_worker_to_fail(tmp_path):
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.7 garbage")
    (tmp_path / "empty.png").write_bytes(b"")
    pages = collect_pages([str(tmp_path)])
    assert [(page.page, page.cost) for page in pages] == [(0, 16 * inputs_module.PIXELS_PER_BYTE), (0, 0.0)]


def test_many_plain_images_are_costed_from_their_size_without_opening_them(tmp_path, monkeypatch):
    for n in range(3):
        image(tmp_path / f"p{n}.png", size=(30 + n, 20))
    monkeypatch.setattr(inputs_module, "PROBE_LIMIT", 2)
    monkeypatch.setattr(inputs_module, "probe_pages", lambda *a, **k: pytest.fail("opened a plain image"))
    pages = collect_pages([str(tmp_path)])
    assert [page.cost for page in pages] == [os.path.getsize(page.source) * 8.0 for page in pages]


def test_one_file_named_on_many_rows_gets_every_page_with_its_own_cost(tmp_path):
    # Speed at this scale is the plan benchmark's business (no timed assertions here); this is the content.
    image(tmp_path / "a.png")
    rows = "".join(json.dumps({"path": "a.png", "pages": f"{n}", "cost": n % 7 + 1}) + "\n" for n in range(1, 20_001))
    (tmp_path / "m.jsonl").write_text(rows)
    pages = collect_pages([str(tmp_path / "m.jsonl")])
    assert [(page.page, page.cost) for page in pages] == [(n - 1, float(n % 7 + 1)) for n in range(1, 20_001)]


def test_files_stated_while_the_manifest_is_read_give_the_same_pages_and_missing_files(tmp_path, monkeypatch):
    for n in range(23):
        (tmp_path / f"p{n:02d}.png").write_bytes(b"x" * (n + 1))  # never opened: costs come from sizes
    names = [f"p{n:02d}.png" for n in range(23)]
    (tmp_path / "m.txt").write_text("\n".join(reversed(names)) + "\n")
    monkeypatch.setattr(inputs_module, "PROBE_LIMIT", 0)
    whole = collect_pages([str(tmp_path / "m.txt")], include_globs=["*"])  # globs: stat'ed after reading
    monkeypatch.setattr(inputs_module._Stats, "_BATCH", 4)  # several batches, on the stat threads
    early = collect_pages([str(tmp_path / "m.txt")])
    assert early == whole and [page.size for page in early] == list(range(1, 24))
    (tmp_path / "m.txt").write_text("\n".join(names + ["gone.png"]) + "\n")
    with pytest.raises(InputError, match=r"m.txt:24: gone.png: no such file"):
        collect_pages([str(tmp_path / "m.txt")])


def test_a_folder_and_a_symlink_to_it_are_read_once_under_the_first_name(tmp_path):
    for n in range(3):
        image(tmp_path / "data" / "scans" / f"p{n}.png")
    (tmp_path / "data" / "alias").symlink_to(tmp_path / "data" / "scans")
    (tmp_path / "elsewhere").symlink_to(tmp_path / "data")
    named = collect_pages([str(tmp_path / "data" / "scans"), str(tmp_path / "data" / "alias"),
                           str(tmp_path / "elsewhere")])
    assert keys(named, tmp_path / "data") == [(os.path.join("scans", f"p{n}.png"), 0) for n in range(3)]
    globbed = collect_pages([str(tmp_path / "data" / "*")])  # the glob reaches `alias` first
    assert keys(globbed, tmp_path / "data") == [(os.path.join("alias", f"p{n}.png"), 0) for n in range(3)]


def test_a_folder_that_cannot_be_listed_is_an_error_naming_it(tmp_path, monkeypatch):
    image(tmp_path / "in" / "a.png")
    image(tmp_path / "in" / "locked" / "b.png")
    locked, scandir = str(tmp_path / "in" / "locked"), os.scandir

    def denying(path="."):  # as chmod 000 would for a user other than root (tests run as root)
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denying)
    with pytest.raises(InputError, match=f"{locked}: cannot list this folder \\(permission denied\\)"):
        collect_pages([str(tmp_path / "in")])
    with pytest.raises(InputError, match="cannot list this folder"):
        collect_pages([locked])  # a folder named directly, with nothing else to read


def test_an_input_behind_a_folder_that_cannot_be_searched_says_access_denied_and_where(tmp_path, monkeypatch):
    image(tmp_path / "locked" / "a.png")
    locked, real_stat = str(tmp_path / "locked"), os.stat

    def denying(path, *args, **kwargs):  # as a chmod 000 parent would for a user other than root
        if os.fspath(path).startswith(locked + os.sep):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", denying)
    with pytest.raises(InputError, match=r"a.png: access denied \(Permission denied\); make it readable") as caught:
        collect_pages([str(tmp_path / "locked" / "a.png")])
    assert "Errno" not in str(caught.value)
