"""The workstream document as text, and the problems found in it, reported like a compiler's.

`Doc` holds the text being loaded and its file name; every check after the JSON parse reports what
it finds as `Issue`s (a message at a JSON path, with an optional hint), and `Doc.fail` turns them
into one `ValidationError`: in file order, at most `MAX_ERRORS` of them, each at its line:column
(found by `jsonpos` only now that something is wrong), one per line after the first, and each also
on its own in the exception's `errors` for tools. `read_json` is the first stage: strict JSON (no
`NaN`, no number beyond a float's range, no key twice in one object) whose syntax errors carry a
line and column. `show` and `did_you_mean` word values and suggestions alike in every message.
"""
from __future__ import annotations

from .errors import ValidationError
from .interp import format_json_path
from .lean import decode_error, dumps, loads
from .jsonpos import JPath, duplicate_key, line_col, line_cols, locate, token_offset

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable, NoReturn, Sequence

__all__ = ["MAX_ERRORS", "Doc", "Issue", "did_you_mean", "read_json", "show"]

MAX_ERRORS = 50                  # more than this many lines helps nobody; the count of the rest is given


class Issue:
    """One problem found by a check: a message at a JSON path (None: the whole file)."""

    __slots__ = ("message", "where", "hint", "at_key")

    def __init__(self, message: str, where: JPath | None, hint: str | None = None,
                 at_key: bool = False) -> None:
        self.message, self.where, self.hint = message, where, hint
        self.at_key = at_key          # point at the key of `where`, not at its value


class Doc:
    """The text being loaded: raises `ValidationError`s placed at JSON paths (line:column found
    lazily, only when something is wrong)."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text[1:] if text.startswith("\ufeff") else text
        self.source = source

    def fail(self, issues: Sequence[Issue]) -> NoReturn:
        offsets, key_offsets = locate(self.text, [i.where for i in issues if i.where is not None])
        placed: list[tuple[tuple[bool, int, int], Issue, int | None]] = []
        for n, issue in enumerate(issues):
            offset = None
            if issue.where is not None:
                offset = (issue.at_key and key_offsets.get(issue.where)) or offsets.get(issue.where)
            placed.append(((offset is None, offset or 0, n), issue, offset))
        placed.sort(key=lambda p: p[0])               # in file order, like a compiler
        shown = placed[:MAX_ERRORS]
        lines = line_cols(self.text, [off for _, _, off in shown if off is not None])
        errors = []
        for _, issue, off in shown:
            line, col = lines[off] if off is not None else (None, None)
            errors.append(ValidationError(issue.message, path=self.source, line=line, column=col,
                                          where=format_json_path(issue.where) if issue.where else None,
                                          hint=issue.hint))
        first = errors[0]
        if len(errors) == 1:
            first.errors = errors  # type: ignore[attr-defined]
            raise first
        rest = [str(e) for e in errors[1:]]
        if len(placed) > MAX_ERRORS:
            rest.append(f"... and {len(placed) - MAX_ERRORS} more errors")
        head = first.message + (f" ({first.hint})" if first.hint else "")
        exc = ValidationError("\n".join([head, *rest]), path=first.path, where=first.where,
                              line=first.line, column=first.column)
        exc.errors = errors  # type: ignore[attr-defined]  # each problem on its own, for tools
        raise exc

    def check(self, issues: Sequence[Issue]) -> None:
        if issues:
            self.fail(issues)


# --- strict JSON --------------------------------------------------------------------------------

class _BadToken(Exception):
    def __init__(self, message: str, token: str) -> None:
        super().__init__(message)
        self.message, self.token = message, token


class _DuplicateKey(Exception):
    pass


def _reject_constant(name: str) -> Any:
    raise _BadToken(f"{name} is not valid JSON", name)


def _float(text: str) -> float:
    value = float(text)
    if value - value != 0.0:   # inf or nan (math.isfinite, without loading math)
        raise _BadToken(f"number {text} is too large", text)
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > 300:      # beyond a float's range: Python's int() has limits too
        raise _BadToken(f"number {text[:20]}... is too large", text)
    return int(text)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey()
    return out


def read_json(doc: Doc) -> Any:
    """The document's JSON value; any syntax error is a `ValidationError` with line and column."""
    try:
        return loads(doc.text, parse_constant=_reject_constant, parse_float=_float, parse_int=_int,
                     object_pairs_hook=_pairs)
    except decode_error() as e:
        raise ValidationError(f"malformed JSON: {e.msg}", path=doc.source, line=e.lineno,
                              column=e.colno) from None
    except _BadToken as e:
        where = token_offset(doc.text, e.token)
        line, col = line_col(doc.text, where) if where is not None else (None, None)
        raise ValidationError(f"malformed JSON: {e.message}", path=doc.source, line=line,
                              column=col) from None
    except _DuplicateKey:
        dup = duplicate_key(doc.text)
        if dup is None:
            raise ValidationError("duplicate key in an object", path=doc.source) from None
        line, col = line_col(doc.text, dup[1])
        raise ValidationError(f"duplicate key {dup[0][-1]!r} (a key may appear once per object)",
                              path=doc.source, where=format_json_path(dup[0]), line=line,
                              column=col) from None
    except ValueError as e:              # anything else the reader refuses, e.g. lone surrogates
        raise ValidationError(f"malformed JSON: {e}", path=doc.source) from None


# --- wording --------------------------------------------------------------------------------------

def show(value: Any) -> str:
    """A value as a person reads it in a message: its JSON type and a short rendering."""
    if isinstance(value, bool) or value is None:
        return dumps(value)
    if isinstance(value, int):
        return f"integer {value}" if len(str(value)) < 40 else "a very large integer"
    if isinstance(value, float):
        return f"number {value:g}"
    if isinstance(value, str):
        text = dumps(value)
        return "string " + (text if len(text) <= 60 else text[:57] + '..."')
    return "a list" if isinstance(value, list) else "an object"


def did_you_mean(word: Any, choices: Iterable[str]) -> str | None:
    """A hint naming the closest of `choices`, or None when nothing is close."""
    if not isinstance(word, str):
        return None
    import difflib  # only a document with an error gets this far: keep it off the start-up path
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
