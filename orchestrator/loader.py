"""Read a workstream file, validate it once at the edge, and build the typed model.

`parse_workstream` is the pure core (`load_workstream` reads a file, `load_by_id` finds one by id).
The checks run in a fixed order and each stage reports every problem it finds before the next stage
runs: JSON syntax (line and column from the decoder) -> the top level is an object -> `${env...}`
in `execution` is interpolated -> JSON Schema (every error, with its JSON path) -> the id matches
the file name -> duplicate step ids -> unknown dependencies ("did you mean") -> unknown tools and
python callables -> `${steps.X.outputs.k}` names an ancestor -> dependency cycles -> step groups ->
`max_workers` and the failure policy -> paths stay inside the project -> file-scope conflicts.
Every failure is one `ValidationError` whose text reads like a compiler's
(`workstreams/x.json:14:5: steps[2].depends_on[0]: unknown step 'a' (did you mean 'b'?)`); when a
stage finds several problems they are all in the message, one line each. Line and column are found
only when there is an error, by a small tokenizer that records where each value starts by its JSON
path, so loading a valid 100 000-step file costs a JSON parse plus a compiled schema check (the
`jsonschema` package, exact but slow on big documents, runs only to explain a failure).
"""
from __future__ import annotations

import copy
import difflib
import functools
import gc
import json
import math
import os
import posixpath
import re
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NoReturn, Sequence

import jsonschema

from . import graph
from .errors import ValidationError
from .interp import format_json_path, interpolate_execution, task_references
from .model import (PYTHON, SHELL, Execution, FilesScope, OnFailure, Step, StepGroup, Tool,
                    Workstream)

__all__ = ["ID_PATTERN", "load_by_id", "load_schema", "load_workstream", "parse_workstream"]

ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN[1:-1])
_ID_RULE = ("use lowercase letters, digits, '.', '_' or '-', starting with a letter or digit, "
            "at most 128 characters")
MAX_ERRORS = 50                  # more than this many lines helps nobody; the count of the rest is given
POSITIONS_LIMIT = 64 * 2 ** 20   # characters; past this, messages carry no line:column
ON_CONFLICT = ("error", "serialize")

JPath = tuple[Any, ...]


# --- public entry points ----------------------------------------------------------------------------

def load_schema(name: str) -> dict[str, Any]:
    """The JSON Schema shipped as package data: "workstream" or "results_summary" (a fresh copy)."""
    return copy.deepcopy(_schema(name))


@functools.lru_cache(maxsize=None)
def _schema(name: str) -> dict[str, Any]:
    if name not in ("workstream", "results_summary"):
        raise ValueError(f"unknown schema {name!r}")
    ref = resources.files("orchestrator") / "schemas" / f"{name}.schema.json"
    return json.loads(ref.read_text(encoding="utf-8"))


def load_by_id(ws_id: str, workstreams_dir: str | os.PathLike[str], *, project_root: Path,
               environ: Mapping[str, str] | None = None, on_conflict: str = "error") -> Workstream:
    """Load `<workstreams_dir>/<ws_id>.json`; the id is checked first, so it cannot name a path."""
    if not isinstance(ws_id, str) or not _ID_RE.fullmatch(ws_id):
        raise ValidationError(f"invalid workstream id {ws_id!r}: {_ID_RULE}")
    directory = Path(workstreams_dir)
    path = directory / f"{ws_id}.json"
    if not path.is_file():
        try:
            available = sorted(p.stem for p in directory.glob("*.json"))
        except OSError:
            available = []
        listing = ", ".join(available) if available else "none"
        if not directory.is_dir():
            raise ValidationError(f"no workstream file {path}: the directory {directory} does "
                                  "not exist", hint="give --workstreams-dir or a FILE")
        raise ValidationError(f"no workstream file {path} (available: {listing})",
                              hint=_did_you_mean(ws_id, available))
    return load_workstream(path, project_root=project_root, expected_id=ws_id, environ=environ,
                           on_conflict=on_conflict)


def load_workstream(path: str | os.PathLike[str], *, project_root: Path,
                    expected_id: str | None = None, environ: Mapping[str, str] | None = None,
                    on_conflict: str = "error") -> Workstream:
    """Read and validate one workstream file (UTF-8 JSON)."""
    shown = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ValidationError("no such file", path=shown) from None
    except IsADirectoryError:
        raise ValidationError("is a directory, not a workstream file", path=shown) from None
    except OSError as e:
        raise ValidationError(f"cannot read the file: {e.strerror or e}", path=shown) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValidationError(f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})",
                              path=shown) from None
    return parse_workstream(text, shown, project_root=project_root, expected_id=expected_id,
                            environ=environ, on_conflict=on_conflict)


def parse_workstream(text: str, source: str, *, project_root: Path | str,
                     expected_id: str | None = None, environ: Mapping[str, str] | None = None,
                     on_conflict: str = "error") -> Workstream:
    """Validate a workstream document given as text and build the model. Raises only
    `ValidationError`; `source` is the file name used in messages."""
    doc = _Doc(text, source)
    # Loading allocates hundreds of thousands of containers that all stay alive; the cyclic garbage
    # collector would rescan them over and over (a third of the time on a 100 000-step file) and
    # find nothing to free. Pause it while we build; the few cycles made on the error path
    # (jsonschema errors point at their parents) are collected once it is back on.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _parse(doc, Path(project_root), expected_id,
                      os.environ if environ is None else environ, on_conflict)
    except RecursionError:
        # Python's own JSON reader and jsonschema recurse; absurd nesting must not become a traceback.
        raise ValidationError("the document is nested too deeply", path=source) from None
    finally:
        if was_enabled:
            gc.enable()


# --- errors with positions ----------------------------------------------------------------------------

class _Issue:
    __slots__ = ("message", "where", "hint", "at_key")

    def __init__(self, message: str, where: JPath | None, hint: str | None = None,
                 at_key: bool = False) -> None:
        self.message, self.where, self.hint = message, where, hint
        self.at_key = at_key          # point at the key of `where`, not at its value


class _Doc:
    """The text being loaded: raises `ValidationError`s placed at JSON paths (line:column found
    lazily, only when something is wrong)."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text[1:] if text.startswith("\ufeff") else text
        self.source = source

    def fail(self, issues: Sequence[_Issue]) -> NoReturn:
        offsets, key_offsets = _locate(self.text, [i.where for i in issues if i.where is not None])
        placed: list[tuple[tuple[bool, int, int], _Issue, int | None]] = []
        for n, issue in enumerate(issues):
            offset = None
            if issue.where is not None:
                offset = (issue.at_key and key_offsets.get(issue.where)) or offsets.get(issue.where)
            placed.append(((offset is None, offset or 0, n), issue, offset))
        placed.sort(key=lambda p: p[0])               # in file order, like a compiler
        shown = placed[:MAX_ERRORS]
        lines = _line_cols(self.text, [off for _, _, off in shown if off is not None])
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

    def check(self, issues: Sequence[_Issue]) -> None:
        if issues:
            self.fail(issues)


def _line_col(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - text.rfind("\n", 0, offset)


def _line_cols(text: str, offsets: Iterable[int]) -> dict[int, tuple[int, int]]:
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


_WS = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_SCALAR = re.compile(r'[^\s,:\[\]{}"]+')
_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)


def _locate(text: str, paths: Iterable[JPath]) -> tuple[dict[JPath, int], dict[JPath, int]]:
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


def _key_at(text: str, pos: int) -> tuple[str, int]:
    m = _STRING.match(text, pos)
    if m is None:
        raise ValueError("a key was expected")
    raw = m.group()
    key = json.loads(raw) if "\\" in raw else raw[1:-1]
    pos = _WS.match(text, m.end()).end() + 1           # past the ':'
    return key, _WS.match(text, pos).end()


def _skip(text: str, pos: int) -> int:
    depth = 0
    for m in _BRACKETS.finditer(text, pos):
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
    pos = _WS.match(text).end()
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
                pos = _WS.match(text, pos + 1).end()
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
            pos = _STRING.match(text, pos).end()      # type: ignore[union-attr]
        else:
            pos = _SCALAR.match(text, pos).end()      # type: ignore[union-attr]
        while True:                                   # after a value: next sibling or close
            if not stack:
                return found, None
            pos = _WS.match(text, pos).end()
            frame = stack[-1]
            if text[pos] == ",":
                pos = _WS.match(text, pos + 1).end()
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


# --- JSON ------------------------------------------------------------------------------------------

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
    if not math.isfinite(value):
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


def _parse_json(doc: _Doc) -> Any:
    try:
        return json.loads(doc.text, parse_constant=_reject_constant, parse_float=_float,
                          parse_int=_int, object_pairs_hook=_pairs)
    except json.JSONDecodeError as e:
        raise ValidationError(f"malformed JSON: {e.msg}", path=doc.source, line=e.lineno,
                              column=e.colno) from None
    except _BadToken as e:
        where = _token_offset(doc.text, e.token)
        line, col = _line_col(doc.text, where) if where is not None else (None, None)
        raise ValidationError(f"malformed JSON: {e.message}", path=doc.source, line=line,
                              column=col) from None
    except _DuplicateKey:
        try:
            _, dup = _scan(doc.text, set(), find_duplicate=True)
        except (IndexError, AttributeError, ValueError):
            dup = None
        if dup is None:
            raise ValidationError("duplicate key in an object", path=doc.source) from None
        line, col = _line_col(doc.text, dup[1])
        raise ValidationError(f"duplicate key {dup[0][-1]!r} (a key may appear once per object)",
                              path=doc.source, where=format_json_path(dup[0]), line=line,
                              column=col) from None
    except ValueError as e:              # anything else the reader refuses, e.g. lone surrogates
        raise ValidationError(f"malformed JSON: {e}", path=doc.source) from None


def _token_offset(text: str, token: str) -> int | None:
    """Where a bare token (NaN, a huge number) first appears outside a string."""
    pattern = re.compile(r'"(?:[^"\\]|\\.)*"|(?<![0-9.eE+-])' + re.escape(token)
                         + r"(?![0-9.eE+-])", re.S)
    for m in pattern.finditer(text):
        if m.group()[0] != '"':
            return m.start()
    return None


# --- schema ------------------------------------------------------------------------------------------

class _Validators:
    """The schema as the loader applies it: `execution` is interpolated first, so the `${env...}`
    strings the published schema accepts (for editors) are no longer acceptable values.

    `fast` and `fast_step` answer "valid?" quickly; `slow` (jsonschema) explains what is wrong.
    """

    def __init__(self) -> None:
        schema = load_schema("workstream")
        schema["$defs"]["env_expr"] = False
        self.slow = jsonschema.Draft202012Validator(schema)
        self.slow_step = self.slow.evolve(schema=schema["$defs"]["step"])
        compile_ = _compiler(schema)
        self.fast = compile_(schema)
        self.fast_step = compile_(schema["$defs"]["step"])


@functools.lru_cache(maxsize=None)
def _validators() -> _Validators:
    return _Validators()


_ANNOTATIONS = {"description", "title", "$id", "$schema", "$defs", "default", "examples", "$comment"}
_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
    "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
    # JSON Schema counts 3.0 as an integer; jsonschema agrees, so the fast check must too.
    "integer": lambda x: (isinstance(x, int) and not isinstance(x, bool))
    or (isinstance(x, float) and x.is_integer()),
}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _compiler(root: dict[str, Any]) -> Callable[[Any], Callable[[Any], bool]]:
    """Turn the subset of JSON Schema our schema uses into nested closures answering "valid?".

    About 20x faster than `jsonschema` on a big document. It must agree with `jsonschema` exactly
    (a property test checks it); a keyword it does not know makes it refuse to compile, and a
    document it rejects is explained by `jsonschema` anyway.
    """
    done: dict[int, Callable[[Any], bool]] = {}

    def resolve(ref: str) -> Any:
        if not ref.startswith("#/"):
            raise NotImplementedError(ref)
        node: Any = root
        for part in ref[2:].split("/"):
            node = node[part]
        return node

    def comp(s: Any) -> Callable[[Any], bool]:
        if s is True:
            return lambda x: True
        if s is False:
            return lambda x: False
        if id(s) in done:
            return done[id(s)]
        checks: list[Callable[[Any], bool]] = []
        props = {k: comp(v) for k, v in s.get("properties", {}).items()}
        extra = s.get("additionalProperties", True)
        extra_f = None if extra is True else comp(extra)
        for kw, val in s.items():
            if kw in _ANNOTATIONS:
                continue
            if kw == "$ref":
                checks.append(comp(resolve(val)))
            elif kw == "type":
                kinds = [_TYPES[t] for t in ([val] if isinstance(val, str) else val)]
                checks.append(kinds[0] if len(kinds) == 1 else
                              (lambda x, k=kinds: any(f(x) for f in k)))
            elif kw in ("properties", "additionalProperties"):
                if kw == "properties" or "properties" not in s:
                    checks.append(functools.partial(_check_object, props, extra_f))
            elif kw == "required":
                checks.append(lambda x, r=tuple(val): not isinstance(x, dict) or all(k in x for k in r))
            elif kw == "items":
                checks.append(functools.partial(_check_items, comp(val)))
            elif kw == "minItems":
                checks.append(lambda x, n=val: not isinstance(x, list) or len(x) >= n)
            elif kw == "minLength":
                checks.append(lambda x, n=val: not isinstance(x, str) or len(x) >= n)
            elif kw == "pattern":
                rx = re.compile(val)
                checks.append(lambda x, rx=rx: not isinstance(x, str) or rx.search(x) is not None)
            elif kw in ("enum", "const"):
                values = val if kw == "enum" else [val]
                if not all(isinstance(v, str) for v in values):
                    raise NotImplementedError(kw)
                allowed = frozenset(values)
                checks.append(lambda x, a=allowed: isinstance(x, str) and x in a)
            elif kw == "minimum":
                checks.append(lambda x, m=val: not _is_number(x) or x >= m)
            elif kw == "exclusiveMinimum":
                checks.append(lambda x, m=val: not _is_number(x) or x > m)
            elif kw == "anyOf":
                branches = [comp(b) for b in val]
                checks.append(lambda x, b=branches: any(f(x) for f in b))
            elif kw == "propertyNames":
                f = comp(val)
                checks.append(lambda x, f=f: not isinstance(x, dict) or all(f(k) for k in x))
            elif kw == "not":
                f = comp(val)
                checks.append(lambda x, f=f: not f(x))
            else:
                raise NotImplementedError(kw)

        if len(checks) == 1:
            check = checks[0]
        elif len(checks) == 2:
            first, second = checks
            check = lambda x: first(x) and second(x)  # noqa: E731  (the common case, kept flat)
        else:
            check = functools.partial(_check_all, tuple(checks))
        done[id(s)] = check
        return check

    return comp


def _check_all(checks: tuple[Callable[[Any], bool], ...], x: Any) -> bool:
    for c in checks:
        if not c(x):
            return False
    return True


def _check_items(item: Callable[[Any], bool], x: Any) -> bool:
    if isinstance(x, list):
        for v in x:
            if not item(v):
                return False
    return True


def _check_object(props: dict[str, Callable[[Any], bool]], extra: Callable[[Any], bool] | None,
                  x: Any) -> bool:
    if not isinstance(x, dict):
        return True
    for k, v in x.items():
        f = props.get(k)
        if f is None:
            if extra is not None and not extra(v):
                return False
        elif not f(v):
            return False
    return True


def _schema_issues(data: Any) -> list[_Issue]:
    v = _validators()
    try:
        if v.fast(data):
            return []
    except NotImplementedError:
        pass
    errors: list[tuple[JPath, jsonschema.ValidationError]] = []
    steps = data.get("steps") if isinstance(data, dict) else None
    if isinstance(steps, list) and len(steps) > 1:
        # jsonschema needs seconds for 100 000 steps: explain only the steps the fast check refuses,
        # and the rest of the document with one stand-in step (so "at least one step" still holds).
        rest = dict(data, steps=[{"id": "x"}])
        errors += [((), e) for e in v.slow.iter_errors(rest)]
        for i, step in enumerate(steps):
            if not v.fast_step(step):
                errors += [(("steps", i), e) for e in v.slow_step.iter_errors(step)]
    else:
        errors += [((), e) for e in v.slow.iter_errors(data)]
    issues: list[_Issue] = []
    seen: set[tuple[Any, str]] = set()
    for prefix, err in errors:
        for issue in _explain(err, v.slow.schema, prefix):
            if (issue.where, issue.message) not in seen:
                seen.add((issue.where, issue.message))
                issues.append(issue)
    return issues


def _show(value: Any) -> str:
    """A value as a person reads it in a message: its JSON type and a short rendering."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return f"integer {value}" if len(str(value)) < 40 else "a very large integer"
    if isinstance(value, float):
        return f"number {value:g}"
    if isinstance(value, str):
        text = json.dumps(value)
        return "string " + (text if len(text) <= 60 else text[:57] + '..."')
    return "a list" if isinstance(value, list) else "an object"


_TYPE_WORDS = {"integer": "an integer", "number": "a number", "string": "a string",
               "boolean": "true or false", "array": "a list", "object": "an object", "null": "null"}


def _deref(schema: Any, root: dict[str, Any]) -> Any:
    while isinstance(schema, dict) and "$ref" in schema and schema["$ref"].startswith("#/"):
        node: Any = root
        for part in schema["$ref"][2:].split("/"):
            node = node[part]
        schema = node
    return schema


def _wanted(schema: Any, root: dict[str, Any]) -> str:
    s = _deref(schema, root)
    if not isinstance(s, dict):
        return "anything"
    if "const" in s:
        return json.dumps(s["const"])
    if "enum" in s:
        return "one of " + ", ".join(json.dumps(v) for v in s["enum"])
    t = s.get("type")
    if t == "array":
        items = _deref(s.get("items"), root)
        if isinstance(items, dict) and isinstance(items.get("type"), str):
            return f"a list of {items['type']}s"
    words = _TYPE_WORDS.get(t, "a value") if isinstance(t, str) else "a value"
    if "exclusiveMinimum" in s:
        words += f" greater than {s['exclusiveMinimum']}"
    elif "minimum" in s:
        words += f" of at least {s['minimum']}"
    return words


def _fits_type(schema: Any, root: dict[str, Any], value: Any) -> bool:
    s = _deref(schema, root)
    if not isinstance(s, dict):
        return s is not False
    if "type" in s:
        t = s["type"]
        return any(_TYPES[k](value) for k in ([t] if isinstance(t, str) else t))
    values = s.get("enum", [s["const"]] if "const" in s else None)
    if values is not None:
        return any(type(v) is type(value) for v in values)
    return True


def _explain(err: jsonschema.ValidationError, root: dict[str, Any], prefix: JPath = ()
             ) -> list[_Issue]:
    """One jsonschema error as messages a person can act on (`prefix`: where its instance is)."""
    path: JPath = prefix + tuple(err.absolute_path)
    v, value, inst = err.validator, err.validator_value, err.instance
    if "propertyNames" in err.schema_path:   # a tool name; the error sits on the object
        if v == "not":
            return [_Issue(f"'{inst}' is built in and cannot be redefined as a tool", path + (inst,),
                           at_key=True)]
        return [_Issue(f"invalid tool name {json.dumps(inst)}: use letters, digits, '.', '_' or "
                       "'-', starting with a letter or digit", path + (inst,), at_key=True)]
    if v == "required":
        return [_Issue(f"missing required property '{k}'", path) for k in value if k not in inst]
    if v == "additionalProperties" and value is False:
        known = list(err.schema.get("properties", {}))
        return [_Issue(f"unexpected property '{k}'", path + (k,),
                       _did_you_mean(k, known) or "allowed: " + ", ".join(known), at_key=True)
                for k in inst if k not in known]
    if v == "type":
        kinds = [value] if isinstance(value, str) else value
        return [_Issue(f"expected {' or '.join(_TYPE_WORDS.get(k, k) for k in kinds)}, "
                       f"got {_show(inst)}", path)]
    if v in ("enum", "const"):
        allowed = value if v == "enum" else [value]
        text = ", ".join(json.dumps(a) for a in allowed)
        hint = _did_you_mean(inst, [str(a) for a in allowed]) if isinstance(inst, str) else None
        return [_Issue(f"must be {'one of ' if len(allowed) > 1 else ''}{text}, got {_show(inst)}",
                       path, hint)]
    if v == "pattern":
        if value == ID_PATTERN:
            return [_Issue(f"invalid id {json.dumps(inst)}: {_ID_RULE}", path)]
        if path and path[-1] == "callable":
            return [_Issue(f"invalid callable {json.dumps(inst)}: expected "
                           '"package.module:function"', path)]
        return [_Issue(f"{json.dumps(inst)} does not match the pattern {value}", path)]
    if v == "minItems":
        return [_Issue("must not be empty" if value == 1 else f"must have at least {value} items",
                       path)]
    if v == "minLength":
        return [_Issue("must not be empty", path)]
    if v == "minimum":
        return [_Issue(f"must be at least {value}, got {_show(inst)}", path)]
    if v == "exclusiveMinimum":
        return [_Issue(f"must be greater than {value}, got {_show(inst)}", path)]
    if v == "anyOf":
        branches = [(i, b) for i, b in enumerate(value) if _deref(b, root) is not False]
        by_branch: dict[int, list[jsonschema.ValidationError]] = {}
        for sub in err.context or ():
            by_branch.setdefault(sub.relative_schema_path[0], []).append(sub)
        fitting = [i for i, b in branches if _fits_type(b, root, inst)]
        if len(branches) == 1 or len(fitting) == 1:
            subs = by_branch.get(branches[0][0] if len(branches) == 1 else fitting[0], [])
            shallow = all(len(s.absolute_path) == len(err.absolute_path)
                          and s.validator in ("type", "const", "enum") for s in subs)
            if subs and (len(branches) == 1 or not shallow):
                return [issue for s in subs for issue in _explain(s, root, prefix)]
        wanted = " or ".join(_wanted(b, root) for _, b in branches)
        return [_Issue(f"expected {wanted}, got {_show(inst)}", path)]
    return [_Issue(err.message, path)]


def _did_you_mean(word: Any, choices: Iterable[str]) -> str | None:
    if not isinstance(word, str):
        return None
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


# --- the stages ----------------------------------------------------------------------------------------

def _parse(doc: _Doc, project_root: Path, expected_id: str | None, environ: Mapping[str, str],
           on_conflict: str) -> Workstream:
    if on_conflict not in ON_CONFLICT:
        raise ValidationError(f"unknown on-conflict mode {on_conflict!r} (use error or serialize)")
    data = _parse_json(doc)
    if not isinstance(data, dict):
        doc.fail([_Issue(f"the top level must be a JSON object, got {_show(data)}", ())])
    if "execution" in data:
        try:
            data["execution"] = interpolate_execution(data["execution"], environ, where="execution")
        except ValidationError as e:
            doc.fail([_Issue(e.message, getattr(e, "json_path", ("execution",)), e.hint)])
    doc.check(_schema_issues(data) or _newline_ids(data))
    steps: list[dict[str, Any]] = data["steps"]
    if expected_id is not None and data["id"] != expected_id:
        doc.fail([_Issue(f"the id is '{data['id']}' but the file is named {expected_id}.json",
                         ("id",), "the id must equal the file name without .json")])
    index = _check_unique(doc, steps)
    deps = {s["id"]: list(dict.fromkeys(s.get("depends_on", ()))) for s in steps}
    _check_dependencies(doc, steps, index)
    _check_tools(doc, steps, data.get("tools", {}))
    _check_references(doc, steps, deps)
    cycle = graph.find_cycle(deps)
    if cycle:
        doc.fail([_Issue("dependency cycle: " + " -> ".join(cycle),
                         ("steps", index[cycle[0]], "depends_on"))])
    groups = _check_groups(doc, data.get("step_groups", []), index, deps)
    execution = _execution(doc, data.get("execution", {}))
    _check_paths(doc, steps, project_root)
    ws = Workstream(
        id=data["id"], steps=tuple(_step(i, s, deps[s["id"]]) for i, s in enumerate(steps)),
        execution=execution, step_groups=groups, title=data.get("title", ""),
        description=data.get("description", ""), source=doc.source,
        tools={name: Tool(name=name, command=tuple(t["command"]), env=dict(t.get("env", {})))
               for name, t in data.get("tools", {}).items()})
    if on_conflict == "error":
        conflicts = graph.scope_conflicts(ws)
        doc.check([_Issue(c.describe(), ("steps", index[c.step_b], "files_scope"),
                          "add a depends_on between them, or run with --on-conflict serialize")
                   for c in conflicts])
    return ws


def _newline_ids(data: dict[str, Any]) -> list[_Issue]:
    """The schema's patterns use `$`, which (in Python and so in jsonschema) also matches before a
    final newline; an id must not smuggle one in."""
    def places() -> Iterable[tuple[JPath, str]]:
        yield ("id",), data["id"]
        for i, s in enumerate(data["steps"]):
            yield ("steps", i, "id"), s["id"]
            for k, d in enumerate(s.get("depends_on", ())):
                yield ("steps", i, "depends_on", k), d
            if "callable" in s:
                yield ("steps", i, "callable"), s["callable"]
        for g, group in enumerate(data.get("step_groups", ())):
            yield ("step_groups", g, "id"), group["id"]
            for k, x in enumerate(group["steps"]):
                yield ("step_groups", g, "steps", k), x

    # A cheap first look: the full walk (which builds a path per value) only when there is one.
    flat = [data["id"]] + [s["id"] for s in data["steps"]] + [
        d for s in data["steps"] for d in s.get("depends_on", ())]
    if not any(v.endswith("\n") for v in flat) and not any(
            "callable" in s for s in data["steps"]) and "step_groups" not in data:
        return []
    return [_Issue(f"invalid value {json.dumps(value)}: it ends with a newline", where)
            for where, value in places() if value.endswith("\n")]


def _check_unique(doc: _Doc, steps: list[dict[str, Any]]) -> dict[str, int]:
    index: dict[str, int] = {}
    issues = []
    for i, s in enumerate(steps):
        first = index.setdefault(s["id"], i)
        if first != i:
            issues.append(_Issue(f"duplicate step id '{s['id']}' (first used by steps[{first}])",
                                 ("steps", i, "id")))
    doc.check(issues)
    return index


def _check_dependencies(doc: _Doc, steps: list[dict[str, Any]], index: Mapping[str, int]) -> None:
    issues = []
    for i, s in enumerate(steps):
        for k, d in enumerate(s.get("depends_on", ())):
            if d not in index:
                # difflib over 100 000 ids is slow: only look for a suggestion for reported errors.
                hint = _did_you_mean(d, index) if len(issues) < MAX_ERRORS else None
                issues.append(_Issue(f"unknown step '{d}'", ("steps", i, "depends_on", k), hint))
    doc.check(issues)


def _check_tools(doc: _Doc, steps: list[dict[str, Any]], tools: Mapping[str, Any]) -> None:
    issues = []
    names = [SHELL, PYTHON, *tools]
    for i, s in enumerate(steps):
        tool = s.get("tool", SHELL)
        if tool not in names:
            issues.append(_Issue(f"unknown tool '{tool}' (known: {', '.join(names)})",
                                 ("steps", i, "tool"), _did_you_mean(tool, names)))
        elif tool == PYTHON:
            if "callable" not in s:
                issues.append(_Issue('a python step needs "callable": "package.module:function"',
                                     ("steps", i)))
            if s.get("tasks"):
                issues.append(_Issue("a python step runs its callable; it takes no tasks",
                                     ("steps", i, "tasks")))
        else:
            for key in ("callable", "args", "kwargs"):
                if key in s:
                    issues.append(_Issue(f'"{key}" is only used by the python tool '
                                         f"(this step's tool is {tool})", ("steps", i, key)))
    doc.check(issues)


def _check_references(doc: _Doc, steps: list[dict[str, Any]], deps: Mapping[str, list[str]]) -> None:
    """`${steps.X.outputs.k}` must name a step that finishes before this one starts: an ancestor."""
    issues = []
    for i, s in enumerate(steps):
        for field in ("tasks", "acceptance_tests"):
            for k, text in enumerate(s.get(field, ())):
                refs = {ref for ref, _ in task_references(text)} if "${" in text else set()
                missing = refs - _ancestors(s["id"], deps, refs)
                for ref in sorted(missing):
                    what = ("unknown step" if ref not in deps
                            else f"step '{s['id']}' does not depend on step")
                    issues.append(_Issue(f"${{steps.{ref}.outputs...}}: {what} '{ref}'",
                                         ("steps", i, field, k),
                                         _did_you_mean(ref, deps) if ref not in deps
                                         else f"add '{ref}' to depends_on"))
    doc.check(issues)


def _ancestors(start: str, deps: Mapping[str, list[str]], targets: set[str]) -> set[str]:
    """Which of `targets` `start` depends on, directly or not (BFS that stops once all are found)."""
    if not targets:
        return set()
    seen = {start}
    found: set[str] = set()
    queue = [start]
    while queue and len(found) < len(targets):
        for d in deps.get(queue.pop(), ()):
            if d not in seen:
                seen.add(d)
                queue.append(d)
                if d in targets:
                    found.add(d)
    return found


def _check_groups(doc: _Doc, groups: list[dict[str, Any]], index: Mapping[str, int],
                  deps: Mapping[str, list[str]]) -> tuple[StepGroup, ...]:
    issues = []
    owner: dict[str, str] = {}
    group_ids: set[str] = set()
    for g, group in enumerate(groups):
        if group["id"] in group_ids:
            issues.append(_Issue(f"duplicate group id '{group['id']}'", ("step_groups", g, "id")))
        group_ids.add(group["id"])
        for k, sid in enumerate(group["steps"]):
            where = ("step_groups", g, "steps", k)
            if sid not in index:
                issues.append(_Issue(f"unknown step '{sid}'", where, _did_you_mean(sid, index)))
            elif sid in owner:
                issues.append(_Issue(f"step '{sid}' is already in group '{owner[sid]}' "
                                     "(a step belongs to at most one group)", where))
            else:
                owner[sid] = group["id"]
    doc.check(issues)
    # A sequential group adds "each listed step waits for the one before it"; if depends_on says
    # the opposite somewhere, nothing could ever start: a cycle through the group's order.
    sequential = [g for g in groups if g.get("execute") == "sequential"]
    if sequential:
        merged = {k: list(v) for k, v in deps.items()}
        for group in sequential:
            for before, after in zip(group["steps"], group["steps"][1:]):
                merged[after].append(before)
        cycle = graph.find_cycle(merged)
        if cycle:
            g = next(n for n, grp in enumerate(groups) if cycle[0] in grp["steps"]
                     and grp.get("execute") == "sequential")
            doc.fail([_Issue("the listed order of the sequential group contradicts depends_on: "
                             + " -> ".join(cycle) + " (each step waits for the ones before it)",
                             ("step_groups", g, "steps"))])
    return tuple(StepGroup(id=g["id"], steps=tuple(g["steps"]), execute=g.get("execute", "parallel"),
                           max_workers=g.get("max_workers"),
                           on_failure=OnFailure(g["on_failure"]) if "on_failure" in g else None,
                           timeout=float(g["timeout"]) if "timeout" in g else None)
                 for g in groups)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):      # not on Linux
        return os.cpu_count() or 1


def _execution(doc: _Doc, ex: Mapping[str, Any]) -> Execution:
    issues = []
    workers = ex.get("max_workers", 4)
    if workers == "auto":
        workers = _cpus()
    elif workers < 1:
        issues.append(_Issue("max-workers must be at least 1", ("execution", "max_workers")))
    on_failure = OnFailure(ex.get("on_failure", "continue"))
    if ex.get("fail_fast"):
        if "on_failure" in ex and on_failure is not OnFailure.FAIL_ALL:
            issues.append(_Issue(f"fail_fast: true contradicts on_failure '{on_failure}'",
                                 ("execution", "fail_fast"), "fail_fast means on_failure fail_all"))
        on_failure = OnFailure.FAIL_ALL
    doc.check(issues)
    breaker = ex.get("circuit_breaker")
    return Execution(
        parallel=ex.get("parallel", True), max_workers=int(workers),
        timeout_per_step=float(ex.get("timeout_per_step", 300.0)),
        run_timeout=float(ex["run_timeout"]) if "run_timeout" in ex else None,
        rate_limit_delay=float(ex.get("rate_limit_delay", 0.0)),
        rate_limit=float(ex["rate_limit"]) if "rate_limit" in ex else None,
        on_failure=on_failure, adaptive_scaling=ex.get("adaptive_scaling", False),
        executor=ex.get("executor", "process"), scheduler_address=ex.get("scheduler_address"),
        circuit_breaker_threshold=int(breaker["failure_threshold"]) if breaker else None,
        **({"max_log_bytes": int(ex["max_log_bytes"])} if "max_log_bytes" in ex else {}))


def _check_paths(doc: _Doc, steps: list[dict[str, Any]], project_root: Path) -> None:
    issues = []
    try:
        root = os.path.realpath(project_root)
    except (OSError, ValueError):
        root = str(project_root)
    for i, s in enumerate(steps):
        if "cwd" in s:
            problem = _cwd_problem(s["cwd"], root)
            if problem:
                issues.append(_Issue(problem, ("steps", i, "cwd"),
                                     "cwd is a directory inside the project, relative to its root"))
        scope = s.get("files_scope", [])
        lists = [("files_scope",)] if isinstance(scope, list) else [
            ("files_scope", k) for k in ("reads", "writes") if k in scope]
        for where in lists:
            pats = scope if len(where) == 1 else scope[where[1]]
            for k, pat in enumerate(pats):
                if pat.startswith("/") or re.match(r"[A-Za-z]:[\\/]", pat):
                    issues.append(_Issue(f"'{pat}' is an absolute path; file scopes are relative "
                                         "to the project root", ("steps", i, *where, k)))
                elif ".." in pat.replace("\\", "/").split("/"):
                    issues.append(_Issue(f"'{pat}' contains '..'; file scopes stay inside the "
                                         "project", ("steps", i, *where, k)))
    doc.check(issues)


def _cwd_problem(cwd: str, root: str) -> str | None:
    if "\0" in cwd:
        return "cwd contains a NUL character"
    if os.path.isabs(cwd):
        return f"cwd '{cwd}' is an absolute path"
    norm = posixpath.normpath(cwd)
    if norm == ".." or norm.startswith("../"):
        return f"cwd '{cwd}' leads outside the project"
    try:
        real = os.path.realpath(os.path.join(root, norm))
    except (OSError, ValueError) as e:
        return f"cwd '{cwd}' cannot be resolved: {e}"
    if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        return f"cwd '{cwd}' resolves to {real}, outside the project (through a symlink)"
    return None


def _step(i: int, s: Mapping[str, Any], deps: list[str]) -> Step:
    scope = s.get("files_scope", [])
    if isinstance(scope, list):
        files = FilesScope(writes=tuple(scope))
    else:
        files = FilesScope(reads=tuple(scope.get("reads", ())), writes=tuple(scope.get("writes", ())))
    return Step(
        id=s["id"], index=i, tool=s.get("tool", SHELL), tasks=tuple(s.get("tasks", ())),
        callable=s.get("callable"), args=tuple(s.get("args", ())), kwargs=dict(s.get("kwargs", {})),
        depends_on=tuple(deps), files_scope=files,
        acceptance_tests=tuple(s.get("acceptance_tests", ())),
        timeout=float(s["timeout"]) if "timeout" in s else None, retries=int(s.get("retries", 0)),
        retry_delay=float(s.get("retry_delay", 1.0)), env=dict(s.get("env", {})),
        cwd=posixpath.normpath(s["cwd"]) if "cwd" in s else None,
        estimated_duration=(float(s["estimated_duration"]) if "estimated_duration" in s else None),
        priority=int(s.get("priority", 0)),
        resources={k: float(v) for k, v in s.get("resources", {}).items()},
        description=s.get("description", ""))
