"""File-scope globs: normalising them, deciding exactly whether two can match one path, matching.

File scopes are globs relative to the project root: `*`, `?` and `[...]` stay inside one path
segment, a `**` segment matches any number of segments, and a pattern without a slash is anchored
at the root (`*.py` is the top-level Python files). A pattern that names directories covers
everything below them, as in gitignore: one written with a trailing `/`, or whose last segment has
no dot (`src`, `build/*`); a last segment with a dot (`*.py`, `util.py`) names files, so that
`**/*.md` does not overlap `src/util.py` through the impossible `src/util.py/x.md`. Two globs
overlap when some path is matched by both; `glob_overlap` decides it exactly, and names such a
path for messages, by searching the product of the two patterns' automata, first over path
segments and then, for two single-segment globs, over characters (character classes are intervals
of code points). `GlobNFA` reads one path segment at a time, so `scopes.scope_conflicts` can walk a
trie of literal paths and stop where a glob's state dies; `is_literal` and `literal_prefix` tell it
which patterns need no automaton and where a glob's matches can start. Pure functions, cached.
"""
from __future__ import annotations

from _collections import deque

from .lean import memo

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Iterable

__all__ = ["GlobNFA", "glob_overlap", "is_directory", "is_literal", "literal_prefix",
           "normalize_glob"]


_MAX_CP = 0x10FFFF
_SLASH = ord("/")
_ANY = ((0, _SLASH - 1), (_SLASH + 1, _MAX_CP))    # `?`: any character but '/'
_STAR = "*"
_DSTAR = "**"
_GLOB_CHARS = "*?[\\"

Intervals = tuple[tuple[int, int], ...]
Token = object                                     # _STAR or Intervals


def normalize_glob(pattern: str) -> str:
    """`./src//a/./b/` -> `src/a/b/`: drop `.` and empty segments and a leading `/`, collapse
    `**/**`; a trailing `/` (it says "a directory") is kept."""
    segs: list[str] = []
    for seg in pattern.split("/"):
        if seg in ("", "."):
            continue
        if seg == _DSTAR and segs and segs[-1] == _DSTAR:
            continue
        segs.append(seg)
    text = "/".join(segs)
    return text + "/" if text and pattern.endswith("/") and not text.endswith(_DSTAR) else text


def is_directory(pattern: str) -> bool:
    """Does the pattern (normalised) name directories, and so cover everything below them?

    Written with a trailing `/`, or a last segment without a dot (`src`, `build/*`): a directory.
    A last segment with a dot (`*.py`, `util.py`) names files: `**/test_*.py` must not be taken to
    overlap `src/util.py` just because `src/util.py/test_x.py` would be a path.
    """
    if not pattern or pattern.endswith("/"):
        return True
    return "." not in pattern.rsplit("/", 1)[-1]


@memo(65536)
def _segments(pattern: str) -> tuple[str, ...]:
    """A pattern's segments, plus a final `**` when it names directories (see `is_directory`)."""
    norm = normalize_glob(pattern)
    segs = [s for s in norm.split("/") if s]
    if is_directory(norm) and (not segs or segs[-1] != _DSTAR):
        segs.append(_DSTAR)
    return tuple(segs)


def _merge(iv: Iterable[tuple[int, int]]) -> Intervals:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(iv):
        if lo > hi:
            continue
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return tuple(out)


def _intersect(a: Intervals, b: Intervals) -> Intervals:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def _complement(a: Intervals) -> Intervals:
    out, start = [], 0
    for lo, hi in a:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= _MAX_CP:
        out.append((start, _MAX_CP))
    return tuple(out)


@memo(4096)
def _tokens(seg: str) -> tuple[Token, ...]:
    """One segment glob as tokens: `*`, or a set of characters (a literal is a one-char set)."""
    toks: list[Token] = []
    i, n = 0, len(seg)
    while i < n:
        c = seg[i]
        i += 1
        if c == "*":
            if not toks or toks[-1] != _STAR:        # `**` inside a segment is just `*`
                toks.append(_STAR)
        elif c == "?":
            toks.append(_ANY)
        elif c == "\\" and i < n:
            toks.append(((ord(seg[i]), ord(seg[i])),))
            i += 1
        elif c == "[":
            j = i
            negate = j < n and seg[j] in "!^"
            j += negate
            if j < n and seg[j] == "]":              # a leading ']' is a literal
                j += 1
            while j < n and seg[j] != "]":
                j += 1
            if j >= n:                               # no closing bracket: a literal '['
                toks.append(((ord("["), ord("[")),))
                continue
            body = seg[i + negate:j]
            i = j + 1
            ranges: list[tuple[int, int]] = []
            k = 0
            while k < len(body):
                lo = body[k]
                if lo == "\\" and k + 1 < len(body):
                    k += 1
                    lo = body[k]
                if k + 2 < len(body) and body[k + 1] == "-":
                    ranges.append((ord(lo), ord(body[k + 2])))
                    k += 3
                else:
                    ranges.append((ord(lo), ord(lo)))
                    k += 1
            iv = _merge(ranges)
            toks.append(_intersect(_complement(iv) if negate else iv, _ANY))
        else:
            toks.append(((ord(c), ord(c)),))
    return tuple(toks)


def _pick(iv: Intervals) -> str:
    """A readable character from a non-empty set, for example paths in messages."""
    for ch in "xabcdefghijklmnopqrstuvwyz0123456789_-.XABCDEFGHIJKLMNOPQRSTUVWYZ":
        o = ord(ch)
        if any(lo <= o <= hi for lo, hi in iv):
            return ch
    lo = iv[0][0]
    return chr(max(lo, 0x21)) if any(l <= 0x21 <= h for l, h in iv) else chr(lo)


@memo(65536)
def _segment_overlap(a: str, b: str) -> str | None:
    """A non-empty string matched by both segment globs, or None: 0-1 BFS over token positions."""
    ta, tb = _tokens(a), _tokens(b)

    def moves(i: int, j: int) -> list[tuple[tuple[int, int], str | None]]:
        x = ta[i] if i < len(ta) else None
        y = tb[j] if j < len(tb) else None
        out: list[tuple[tuple[int, int], str | None]] = []   # (next, char consumed; None: free)
        if x == _STAR:
            out.append(((i + 1, j), None))
        if y == _STAR:
            out.append(((i, j + 1), None))
        if x is not None and y is not None:
            if x == _STAR and y != _STAR:
                if y:                      # an empty class (`[/]`) matches nothing
                    out.append(((i, j + 1), _pick(y)))
            elif y == _STAR and x != _STAR:
                if x:
                    out.append(((i + 1, j), _pick(x)))
            elif x != _STAR and y != _STAR:
                both = _intersect(x, y)
                if both:
                    out.append(((i + 1, j + 1), _pick(both)))
        return out

    chars = _shortest_word((len(ta), len(tb)), moves)
    if chars is None:
        return None
    word = "".join(chars)
    if ta and tb and ta[0] == _STAR and tb[0] == _STAR and not word[:1].isalnum():
        word = "x" + word          # `a.py` reads better than the hidden `.py`; both fit
    return word


def _shortest_word(goal: tuple[int, int], moves: Callable[[int, int], list]) -> list[str] | None:
    """0-1 breadth-first search over pairs of positions (i, j) in two patterns, from (0, 0) to
    `goal`. `moves(i, j)` gives (next pair, label) steps; a None label is a free move, explored
    first. The labels along a path with the fewest labelled steps, or None when `goal` is out of
    reach."""
    start = (0, 0)
    parent: dict[tuple[int, int], tuple[tuple[int, int], str | None] | None] = {start: None}
    queue: deque[tuple[int, int]] = deque([start])
    while queue:
        state = queue.popleft()
        if state == goal:
            labels: list[str] = []
            while parent[state] is not None:
                state, label = parent[state]  # type: ignore[misc]
                if label is not None:
                    labels.append(label)
            return labels[::-1]
        for nxt, label in moves(*state):
            if nxt not in parent:
                parent[nxt] = (state, label)
                (queue.appendleft if label is None else queue.append)(nxt)
    return None


def glob_overlap(a: str, b: str) -> str | None:
    """A path matched by both globs (a witness for messages), or None when they cannot meet."""
    sa, sb = _segments(a), _segments(b)

    def moves(i: int, j: int) -> list[tuple[tuple[int, int], str | None]]:
        x = sa[i] if i < len(sa) else None
        y = sb[j] if j < len(sb) else None
        out: list[tuple[tuple[int, int], str | None]] = []  # (next, segment consumed; None: free)
        if x == _DSTAR:
            out.append(((i + 1, j), None))
        if y == _DSTAR:
            out.append(((i, j + 1), None))
        if x is not None and y is not None:
            seg: str | None = ""
            if x == _DSTAR and y != _DSTAR:
                seg, nxt = _segment_overlap(y, _STAR), (i, j + 1)
            elif y == _DSTAR and x != _DSTAR:
                seg, nxt = _segment_overlap(x, _STAR), (i + 1, j)
            elif x != _DSTAR and y != _DSTAR:
                seg, nxt = _segment_overlap(x, y), (i + 1, j + 1)
            if seg:                         # None: no name fits both (an unsatisfiable segment)
                out.append((nxt, seg))
        return out

    segs = _shortest_word((len(sa), len(sb)), moves)
    if segs is None:
        return None
    return "/".join(segs) or "**"   # both cover the whole tree


@memo(65536)
def _segment_regex(seg: str) -> re.Pattern[str]:
    """A compiled matcher for one segment glob, built from the same tokens as the overlap search."""
    import re   # only a workstream with file scopes gets here (see `lean`)
    parts = []
    for tok in _tokens(seg):
        if tok == _STAR:
            parts.append("[^/]*")
        else:
            parts.append("[" + "".join(
                f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in tok) + "]")
    return re.compile("(?s:" + "".join(parts) + r")\Z")


def is_literal(pattern: str) -> bool:
    """Has the pattern no wildcard at all (so it names exactly one path)?"""
    return not any(c in pattern for c in _GLOB_CHARS)


def literal_prefix(pattern: str) -> tuple[str, ...]:
    """The leading segments that contain no wildcard: the only place a glob's matches can start."""
    out = []
    for seg in normalize_glob(pattern).split("/"):
        if not seg or not is_literal(seg):
            break
        out.append(seg)
    return tuple(out)


class GlobNFA:
    """A glob (with its final `**` when it names directories) read one path segment at a time."""

    def __init__(self, pattern: str) -> None:
        self.segs = _segments(pattern)

    def closure(self, states: Iterable[int]) -> frozenset[int]:
        out = set()
        for i in states:
            out.add(i)
            while i < len(self.segs) and self.segs[i] == _DSTAR:   # `**` may match nothing
                i += 1
                out.add(i)
        return frozenset(out)

    def accepts(self, states: frozenset[int]) -> bool:
        return len(self.segs) in states

    def step(self, states: frozenset[int], name: str) -> frozenset[int]:
        nxt = []
        for i in states:
            if i >= len(self.segs):
                continue
            seg = self.segs[i]
            if seg == _DSTAR:
                nxt.append(i)
            elif _segment_regex(seg).match(name):
                nxt.append(i + 1)
        return self.closure(nxt) if nxt else frozenset()
