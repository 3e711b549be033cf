"""String interpolation: `${env...}` in the execution block and `${steps...}` in task strings.

Two small languages, both parsed by hand with regular expressions and never evaluated. The
execution block of a workstream may use `${env.NAME}`, `${env.NAME:-default}`, `${env.NAME == 'x'}`
and `${env.NAME != 'x'}` in any string; the loader replaces them before schema validation, and a
string that is exactly one expression is typed after substitution (`"3"` -> 3, `"true"` -> True),
so `"max_workers": "${env.MAX_W:-4}"` becomes an integer. Problems are `ValidationError`s that name
the place (`execution.max_workers`). Task strings may use `${steps.<id>.outputs.<key>}`,
`${workstream.id}`, `${run.id}` and `${run.dir}`; these are replaced when a step is about to run,
and every other `${...}` (a shell's `${HOME}`) is left alone for the shell.
"""
from __future__ import annotations

from .errors import ValidationError
from .lean import dumps

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable, Mapping

__all__ = ["InterpolationError", "format_json_path", "interpolate_execution", "substitute_task",
           "task_references"]


class InterpolationError(ValueError):
    """A task string names an output that does not exist; the caller turns it into a step failure."""


# The patterns of this module are kept as text and compiled by `re` (which caches them) on first
# use, `re` imported only then: loading a workstream whose strings have no `${` never needs them
# (see `lean`).
_IDENT = r"[A-Za-z_][A-Za-z0-9_$-]*"


def format_json_path(parts: Iterable[str | int]) -> str:
    """`("steps", 3, "depends_on", 0)` -> `steps[3].depends_on[0]`; odd keys are quoted."""
    import re
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(_IDENT, part):
            out += f".{part}" if out else part
        else:
            out += "[" + dumps(part) + "]"
    return out or "(top level)"


# --- ${env...} in the execution block ---------------------------------------------------------------

# One expression body (what is between `${` and `}`). The default of `:-` runs up to the closing brace,
# so it cannot itself contain `}`; nesting is deliberately not supported.
_ENV_EXPR = (
    r"""\s*env\.(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*
        (?: :-(?P<default>[^}]*)
          | (?P<op>==|!=)\s*(?:'(?P<sq>[^']*)'|"(?P<dq>[^"]*)")\s*
          | )\s*\Z""")
_INT = r"[+-]?\d+"
_FLOAT = r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?"


def _typed(text: str) -> Any:
    """Type a substituted whole-string value the way a JSON reader would see it."""
    s = text.strip()
    if s in ("true", "false"):
        return s == "true"
    if s == "null":
        return None
    import re
    if re.fullmatch(_INT, s) and len(s) <= 300:   # very long digit runs stay strings (int() limits)
        return int(s)
    if re.fullmatch(_FLOAT, s):
        value = float(s)
        if value - value == 0.0:   # finite (math.isfinite, without loading math)
            return value
    return text


def _env_error(message: str, path: tuple[str | int, ...], hint: str | None = None) -> ValidationError:
    err = ValidationError(message, where=format_json_path(path), hint=hint)
    err.json_path = path  # type: ignore[attr-defined]  # the loader turns it into line:column
    return err


def _eval_expr(body: str, environ: Mapping[str, str], path: tuple[str | int, ...]) -> str | bool:
    import re
    m = re.match(_ENV_EXPR, body, re.VERBOSE)
    if m is None:
        raise _env_error(f"cannot read '${{{body}}}'", path,
                         hint="use ${env.NAME}, ${env.NAME:-default}, ${env.NAME == 'x'} "
                              "or ${env.NAME != 'x'}")
    name = m.group("name")
    value = environ.get(name)
    if m.group("op"):
        expected = m.group("sq") if m.group("sq") is not None else m.group("dq")
        # An unset variable compares as unequal to every string, like `[ "$X" = x ]` in a shell.
        equal = value is not None and value == expected
        return equal if m.group("op") == "==" else not equal
    if value is None:
        if m.group("default") is not None:
            return m.group("default")
        raise _env_error(f"environment variable {name} is not set", path,
                         hint=f"use ${{env.{name}:-default}}")
    return value


def _interpolate_string(text: str, environ: Mapping[str, str], path: tuple[str | int, ...]) -> Any:
    if "${" not in text:
        return text
    pieces: list[str] = []
    whole: Any = None
    pos = 0
    count = 0
    while True:
        start = text.find("${", pos)
        if start < 0:
            pieces.append(text[pos:])
            break
        end = text.find("}", start + 2)
        if end < 0:
            raise _env_error(f"unterminated '${{' in {text!r}", path, hint="close it with '}'")
        pieces.append(text[pos:start])
        result = _eval_expr(text[start + 2:end], environ, path)
        whole = result
        count += 1
        pieces.append(("true" if result else "false") if isinstance(result, bool) else result)
        pos = end + 1
    if count == 1 and pieces[0] == "" and pieces[-1] == "":
        # The whole string is one expression: its value is typed (a comparison is already a bool).
        return whole if isinstance(whole, bool) else _typed(whole)
    return "".join(pieces)


def interpolate_execution(obj: Any, environ: Mapping[str, str], *, where: str = "execution") -> Any:
    """Replace `${env...}` in every string inside `obj` (recursively); returns a new value.

    `where` is the JSON path of `obj`, used in messages. Iterative, so deep nesting cannot hit the
    recursion limit.
    """
    root_path: tuple[str | int, ...] = tuple(p for p in where.split(".") if p) if where else ()
    holder: list[Any] = [None]
    # Work items: (value, container to write into, key in that container, its JSON path).
    stack: list[tuple[Any, Any, Any, tuple[str | int, ...]]] = [(obj, holder, 0, root_path)]
    while stack:
        value, parent, key, path = stack.pop()
        if isinstance(value, str):
            parent[key] = _interpolate_string(value, environ, path)
        elif isinstance(value, dict):
            new: dict[Any, Any] = {}
            parent[key] = new
            for k, v in value.items():
                new[k] = None
                stack.append((v, new, k, path + (k,)))
        elif isinstance(value, list):
            new_list: list[Any] = [None] * len(value)
            parent[key] = new_list
            for i, v in enumerate(value):
                stack.append((v, new_list, i, path + (i,)))
        else:
            parent[key] = value
    return holder[0]


# --- ${steps...} in task strings ---------------------------------------------------------------------

# Step ids may contain dots, so the id is matched lazily up to the first `.outputs.`.
_TASK_REF = (
    r"\$\{\s*(?:steps\.(?P<step>[a-z0-9][a-z0-9._-]*?)\.outputs\.(?P<key>[A-Za-z0-9_.-]+)"
    r"|(?P<builtin>workstream\.id|run\.id|run\.dir))\s*\}")


def task_references(text: str) -> list[tuple[str, str]]:
    """The `(step_id, key)` pairs a task string reads through `${steps.<id>.outputs.<key>}`."""
    if "${" not in text:
        return []
    import re
    return [(m.group("step"), m.group("key")) for m in re.finditer(_TASK_REF, text) if m.group("step")]


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    return dumps(value, default=str)


def substitute_task(text: str, *, outputs: Mapping[str, Mapping[str, Any]], ws_id: str, run_id: str,
                    run_dir: str) -> str:
    """Replace the orchestrator's `${...}` references in one task string; leave any other `${...}`.

    Raises `InterpolationError` when a referenced step or output key is missing.
    """
    if "${" not in text:
        return text

    import re

    def replace(m: re.Match[str]) -> str:
        builtin = m.group("builtin")
        if builtin == "workstream.id":
            return ws_id
        if builtin == "run.id":
            return run_id
        if builtin == "run.dir":
            return run_dir
        step, key = m.group("step"), m.group("key")
        step_outputs = outputs.get(step)
        if step_outputs is None:
            raise InterpolationError(f"{m.group(0)}: step {step} has no outputs "
                                     "(it is not a finished dependency of this step)")
        if key not in step_outputs:
            known = ", ".join(sorted(map(str, step_outputs))) or "none"
            raise InterpolationError(f"{m.group(0)}: step {step} has no output '{key}' "
                                     f"(its outputs: {known})")
        return _render(step_outputs[key])

    return re.sub(_TASK_REF, replace, text)
