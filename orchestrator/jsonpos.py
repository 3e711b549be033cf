"""Where each value of a JSON text starts, by JSON path, and line:column of any offset in it.

The loader parses with Python's `json` module, which forgets positions; when something is wrong it
comes here to place the message. `locate` makes one linear pass with a small tokenizer that records
where each wanted value (and the key naming it) starts, jumping over containers that hold nothing
wanted, so finding a few positions in a 100 000-step file costs one scan and nothing is paid on the
valid path; `duplicate_key` uses the same pass to find the first key repeated in an object (which
the parser reports without saying where), and `token_offset` finds a bare token such as `NaN`.
Everything is iterative (absurd nesting is not a recursion error), takes text that the parser has
already read or refused, and answers "no position" rather than raising when the text is not JSON
after all. Paths are tuples of keys and list indexes, as `interp.format_json_path` prints them.
"""
from __future__ import annotations

from .lean import loads, memo

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable

__all__ = ["POSITIONS_LIMIT", "JPath", "duplicate_key", "line_col", "line_cols", "locate",
           "token_offset"]

POSITIONS_LIMIT = 64 * 2 ** 20   # characters; past this, messages carry no line:column

JPath = tuple  # of str | int: a place in a JSON document


def line_col(text: str, offset: int) -> tuple[int, int]:
    """Line and column (1-based) of one offset."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - text.rfind("\n", 0, offset)


def line_cols(text: str, offsets: Iterable[int]) -> dict[int, tuple[int, int]]:
    """Line and column (1-based) of many offsets in one pass over the text."""
    out: dict[int, tuple[int, int]] = {}
    line, last_nl, prev = 1, -1, 0
    for off in sorted(set(offsets)):
        line += text.count("\n", prev, off)
        nl = text.rfind("\n", prev, off)
        if nl >= 0:
            last_nl = nl
        out[off] = (line, off - last_nl)
        prev = off
    return out


@memo()
def _tokens() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """Whitespace, string, scalar, and string-or-bracket patterns, compiled the first time a
    document has something to place: a valid one never does (nor imports `re`, see `lean`)."""
    import re
    return (re.compile(r"[ \t\n\r]*"), re.compile(r'"(?:[^"\\]|\\.)*"', re.S),
            re.compile(r'[^\s,:\[\]{}"]+'), re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S))


def locate(text: str, paths: Iterable[JPath]) -> tuple[dict[JPath, int], dict[JPath, int]]:
    """Offset of the value at each JSON path (or, when it is absent, of its nearest ancestor), and
    of the key naming it when it is an object member."""
    wanted = set(paths)
    if not wanted or len(text) > POSITIONS_LIMIT:
        return {}, {}
    prefixes = {p[:k] for p in wanted for k in range(len(p) + 1)}
    keys: dict[JPath, int] = {}
    try:
        found, _ = _scan(text, prefixes, find_duplicate=False, keys=keys)
    except (IndexError, AttributeError, ValueError):  # not valid JSON after all: no positions
        found = {}
    out = {}
    for p in wanted:
        for k in range(len(p), -1, -1):
            if p[:k] in found:
                out[p] = found[p[:k]]
                break
    return out, keys


def duplicate_key(text: str) -> tuple[JPath, int] | None:
    """The first key repeated within one object: its path and the offset of the second use."""
    try:
        _, dup = _scan(text, set(), find_duplicate=True)
    except (IndexError, AttributeError, ValueError):  # not valid JSON after all: no position
        return None
    return dup


def token_offset(text: str, token: str) -> int | None:
    """Where a bare token (NaN, a huge number) first appears outside a string."""
    import re
    pattern = re.compile(r'"(?:[^"\\]|\\.)*"|(?<![0-9.eE+-])' + re.escape(token)
                         + r"(?![0-9.eE+-])", re.S)
    for m in pattern.finditer(text):
        if m.group()[0] != '"':
            return m.start()
    return None


def _key_at(text: str, pos: int) -> tuple[str, int]:
    ws, string, _, _ = _tokens()
    m = string.match(text, pos)
    if m is None:
        raise ValueError("a key was expected")
    raw = m.group()
    key = loads(raw) if "\\" in raw else raw[1:-1]
    pos = ws.match(text, m.end()).end() + 1           # past the ':'
    return key, ws.match(text, pos).end()


def _skip(text: str, pos: int) -> int:
    depth = 0
    for m in _tokens()[3].finditer(text, pos):
        tok = m.group()
        if tok[0] == '"':
            continue
        depth += 1 if tok in "[{" else -1
        if depth == 0:
            return m.end()
    raise ValueError("unbalanced")


def _scan(text: str, wanted: set[JPath], *, find_duplicate: bool,
          keys: dict[JPath, int] | None = None) -> tuple[dict[JPath, int], tuple[JPath, int] | None]:
    """One linear pass over JSON text: where each wanted value starts (and into `keys`, where its
    key starts); containers that hold nothing wanted are jumped over. With `find_duplicate`, the
    first key repeated in one object instead."""
    found: dict[JPath, int] = {}
    if keys is None:
        keys = {}
    ws, string, scalar, _ = _tokens()
    pos = ws.match(text).end()
    path: JPath = ()
    stack: list[list[Any]] = []                       # [path, is_object, index, keys seen]
    while True:
        if path in wanted:
            found[path] = pos
            if not find_duplicate and len(found) == len(wanted):
                return found, None
        c = text[pos]
        if c in "{[":
            if not find_duplicate and path not in wanted:
                pos = _skip(text, pos)
            else:
                is_obj = c == "{"
                pos = ws.match(text, pos + 1).end()
                if text[pos] in "}]":
                    pos += 1
                else:
                    frame = [path, is_obj, 0, set() if find_duplicate else None]
                    stack.append(frame)
                    if is_obj:
                        start = pos
                        key, pos = _key_at(text, pos)
                        path = frame[0] + (key,)
                        if find_duplicate:
                            frame[3].add(key)
                        elif path in wanted:
                            keys[path] = start
                    else:
                        path = frame[0] + (0,)
                    continue
        elif c == '"':
            pos = string.match(text, pos).end()      # type: ignore[union-attr]
        else:
            pos = scalar.match(text, pos).end()      # type: ignore[union-attr]
        while True:                                   # after a value: next sibling or close
            if not stack:
                return found, None
            pos = ws.match(text, pos).end()
            frame = stack[-1]
            if text[pos] == ",":
                pos = ws.match(text, pos + 1).end()
                if frame[1]:
                    start = pos
                    key, pos = _key_at(text, pos)
                    path = frame[0] + (key,)
                    if find_duplicate:
                        if key in frame[3]:
                            return found, (path, start)
                        frame[3].add(key)
                    elif path in wanted:
                        keys[path] = start
                else:
                    frame[2] += 1
                    path = frame[0] + (frame[2],)
                break
            pos += 1
            stack.pop()
