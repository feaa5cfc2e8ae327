"""How close an engine's reading of a page is to the text printed on it: characters, characters with spaces, words.

Both sides are folded first (`fold`): NFKC, so the full-width punctuation the ch+en models print in Latin
text (`，` `（` `；`) and compatibility forms (`Ⅲ`, `…`) count as their plain forms, and typographic
quotes and list bullets count as one character each, whatever glyph was printed or read. Dashes, accents
and everything else count as they are.

The engine reads lines top to bottom, so two columns or a table come back interleaved row by row. Reading
order is not what these figures are about: `in_printed_order` files each line read under a printed line
before scoring (whole lines read are moved, never split or changed), the lines filed under one printed line in
the order that matches it best (cells of a row read right in another order are no misread), and `score`
reports the order as read apart (`chars_as_read`).
"""

from __future__ import annotations

import difflib
import itertools
import unicodedata

_FOLD = str.maketrans({"‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"',
                       "■": "•", "▪": "•", "●": "•", "·": "•", "∙": "•"})


def fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).translate(_FOLD)


def score(printed: list[str], read: list[str]) -> dict[str, float]:
    """Percent accuracies of the lines `read` against the lines `printed` (see the module docstring)."""
    printed = [fold(line) for line in printed]
    read = [fold(line) for line in read]
    as_read = _char_accuracy("".join(printed), "".join(read), spaces=False)
    ordered = in_printed_order(printed, read)
    if _char_accuracy("".join(printed), "".join(ordered), spaces=False) < as_read:
        ordered = read  # filing can misplace a short cell; the engine's own order was the better one
    return {"chars": _char_accuracy("".join(printed), "".join(ordered), spaces=False),
            "chars_spaced": _char_accuracy(" ".join(printed), " ".join(ordered), spaces=True),
            "words": word_accuracy(" ".join(printed), " ".join(ordered)),
            "chars_as_read": as_read}


PERMUTED = 4  # up to this many lines filed under one printed line are tried in every order (4! = 24)


def in_printed_order(printed: list[str], read: list[str]) -> list[str]:
    """`read` regrouped under the printed lines they match (`file_under`), within one in the order closest to it."""
    return [read[index] for target, members in _groups(file_under(printed, read)) for index in
            _arranged(_squeeze(printed[target]), [_squeeze(read[member]) for member in members], members)[1]]


def _groups(targets: list[int]) -> list[tuple[int, list[int]]]:
    """(printed line, the indices of the lines read filed under it in the engine's order), by printed line."""
    return [(target, [index for index, mine in enumerate(targets) if mine == target])
            for target in sorted(set(targets))]


def _arranged(printed: str, parts: list[str], members: list[int]) -> tuple[int, list[int]]:
    """The edit distance of `parts` (lines read, filed under `printed`) joined in the order closest to it, and
    `members` in that order; the engine's order wins among equals, and is the only one tried past PERMUTED."""
    orders = itertools.permutations(range(len(parts))) if len(parts) <= PERMUTED else [tuple(range(len(parts)))]
    distance, order = min((levenshtein(printed, "".join(parts[i] for i in order)), order) for order in orders)
    return distance, [members[i] for i in order]


def _squeeze(line: str) -> str:
    return "".join(line.split())


def file_under(printed: list[str], read: list[str]) -> list[int]:
    """For each line read, the printed line it is filed under: first the printed line holding most of it in
    order, among equals (a cell's value that repeats, a lone row number, a title repeated in a running header)
    the one nearest to where the line read before it was filed, the later one of two as near; then single
    lines read are moved to another printed line that holds part of them wherever that lowers the summed edit
    distance of the printed lines to what is filed under them (`_refile`). The first pass alone misfiles
    short words that a table's header repeats in several printed lines ("Quarter", "Previous")."""
    squeezed = [_squeeze(line) for line in printed]
    targets, previous = [], 0
    for line in read:
        mine = _squeeze(line)

        def closeness(target: int) -> tuple[float, int, bool]:
            return _overlap(mine, squeezed[target]), -abs(target - previous), target >= previous

        previous = max(range(len(printed)), key=closeness)
        targets.append(previous)
    return _refile(squeezed, [_squeeze(line) for line in read], targets)


def _refile(printed: list[str], read: list[str], targets: list[int], passes: int = 4) -> list[int]:
    """`targets` improved by moving one line read at a time to the printed line (among those sharing a run of
    at least two characters with it) that lowers the summed per-line edit distance most; lines filed under one
    printed line count in the order closest to it (`_arranged`)."""
    targets = list(targets)
    under: list[list[int]] = [[] for _ in printed]
    for index, target in enumerate(targets):
        under[target].append(index)

    def cost(target: int, members: list[int]) -> int:
        return _arranged(printed[target], [read[index] for index in members], members)[0]

    costs = [cost(target, members) for target, members in enumerate(under)]
    candidates = [[target for target, line in enumerate(printed)
                   if any(block.size >= 2 for block in difflib.SequenceMatcher(None, mine, line, autojunk=False)
                          .get_matching_blocks())] for mine in read]
    for _ in range(passes):
        moved = False
        for index, mine in enumerate(read):
            if not mine:
                continue
            source = targets[index]
            without = [member for member in under[source] if member != index]
            leave = cost(source, without) - costs[source]
            best, gain = None, 0
            for target in candidates[index]:
                if target == source:
                    continue
                joined = sorted(under[target] + [index])
                change = leave + cost(target, joined) - costs[target]
                if change < gain:
                    best, gain = target, change
            if best is not None:
                under[source], under[best] = without, sorted(under[best] + [index])
                costs[source], costs[best] = cost(source, without), cost(best, under[best])
                targets[index], moved = best, True
        if not moved:
            break
    return targets


def worst_lines(printed: list[str], read: list[str], count: int) -> list[tuple[str, str, int]]:
    """The `count` printed lines read worst: (printed, the lines read filed under it, edit distance once
    folded, spaces ignored), both sides as printed and read."""
    folded_printed, folded_read = [fold(line) for line in printed], [fold(line) for line in read]
    under = dict(_groups(file_under(folded_printed, folded_read)))
    filed = {target: _arranged(_squeeze(folded_printed[target]),
                               [_squeeze(folded_read[index]) for index in under.get(target, [])], under.get(target, []))
             for target in range(len(printed))}
    worst = sorted(range(len(printed)), key=lambda target: -filed[target][0])[:count]
    return [(printed[target], " ".join(read[index] for index in filed[target][1]), filed[target][0])
            for target in worst]


def word_accuracy(printed: str, read: str) -> float:
    """Printed words found, exactly and in order (`difflib` alignment), over the words printed."""
    words, found = printed.split(), read.split()
    matched = sum(block.size for block in difflib.SequenceMatcher(None, words, found, autojunk=False)
                  .get_matching_blocks())
    return 100 * matched / len(words)


def _char_accuracy(printed: str, read: str, spaces: bool) -> float:
    if spaces:
        printed, read = " ".join(printed.split()), " ".join(read.split())
    else:
        printed, read = "".join(printed.split()), "".join(read.split())
    return 100 * max(0.0, 1 - levenshtein(printed, read) / len(printed))


def _overlap(line: str, target: str) -> float:
    """How much of `line` appears in `target`, in order and in runs: the sum of the squared lengths of the
    matching runs over the squared length of `line`, so that a short line is filed where it appears whole,
    not where its characters merely occur one by one."""
    if not line:
        return 0.0
    blocks = difflib.SequenceMatcher(None, line, target, autojunk=False).get_matching_blocks()
    return sum(block.size ** 2 for block in blocks) / len(line) ** 2


def levenshtein(a: str, b: str) -> int:
    """Edit distance, bit-parallel (Myers 1999, Hyyro 2001): one pass of integer operations per char of `b`."""
    if not a or not b:
        return len(a) + len(b)
    mask, last = (1 << len(a)) - 1, 1 << (len(a) - 1)
    equal: dict[str, int] = {}
    for index, char in enumerate(a):
        equal[char] = equal.get(char, 0) | (1 << index)
    plus, minus, distance = mask, 0, len(a)  # vertical deltas of the DP column: all +1 at the start
    for char in b:
        eq = equal.get(char, 0)
        xv = eq | minus
        xh = (((eq & plus) + plus) ^ plus) | eq
        h_plus = minus | ~(xh | plus)
        h_minus = plus & xh
        if h_plus & last:
            distance += 1
        elif h_minus & last:
            distance -= 1
        h_plus = ((h_plus << 1) | 1) & mask  # the top row grows by one per char of b
        h_minus = (h_minus << 1) & mask
        plus = (h_minus | ~(xv | h_plus)) & mask
        minus = h_plus & xv
    return distance
