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
stage finds several problems they are all in the message, one line each. The pieces live next door:
`document` reads strict JSON and places each problem at its line:column, found only when there is
an error by the small tokenizer in `jsonpos`, and `schema` holds the compiled schema check, so
loading a valid 100 000-step file costs a JSON parse plus a compiled schema check (the `jsonschema`
package, exact but slow on big documents, runs only to explain a failure).
"""
from __future__ import annotations

import gc
import os
import posixpath
from itertools import chain
from _operator import itemgetter, methodcaller, ne

from . import graph, scopes
from .document import MAX_ERRORS, Doc, Issue, did_you_mean, read_json, show
from .errors import ValidationError
from .frozen import defaults
from .interp import interpolate_execution, task_references
from .model import (PYTHON, SHELL, Execution, FilesScope, OnFailure, Step, StepGroup, Tool,
                    Workstream)
from .lean import LOWER, UPPER
from .schema import ID_PATTERN, ID_RULE, is_id, load_schema, newline_ids, schema_issues
# `loader._validators` stays reachable: a property test holds the fast check to jsonschema.
from .schema import validators as _validators  # noqa: F401

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping, Sequence

__all__ = ["ID_PATTERN", "load_by_id", "load_schema", "load_workstream", "parse_workstream"]

ON_CONFLICT = ("error", "serialize")


_LETTERS = frozenset(LOWER + UPPER)


def _drive(path: str) -> bool:
    """`C:\\...` or `C:/...`: a Windows absolute path."""
    return len(path) >= 3 and path[0] in _LETTERS and path[1] == ":" and path[2] in "\\/"


# --- public entry points ----------------------------------------------------------------------------

def load_by_id(ws_id: str, workstreams_dir: str | os.PathLike[str], *,
               project_root: str | os.PathLike[str], environ: Mapping[str, str] | None = None,
               on_conflict: str = "error") -> Workstream:
    """Load `<workstreams_dir>/<ws_id>.json`; the id is checked first, so it cannot name a path."""
    if not isinstance(ws_id, str) or not is_id(ws_id):
        raise ValidationError(f"invalid workstream id {ws_id!r}: {ID_RULE}")
    directory = os.fspath(workstreams_dir)
    path = os.path.join(directory, f"{ws_id}.json")
    if not os.path.isfile(path):
        try:
            available = sorted(n[:-5] for n in os.listdir(directory) if n.endswith(".json"))
        except OSError:
            available = []
        listing = ", ".join(available) if available else "none"
        if not os.path.isdir(directory):
            raise ValidationError(f"no workstream file {path}: the directory {directory} does "
                                  "not exist", hint="give --workstreams-dir or a FILE")
        raise ValidationError(f"no workstream file {path} (available: {listing})",
                              hint=did_you_mean(ws_id, available))
    return load_workstream(path, project_root=project_root, expected_id=ws_id, environ=environ,
                           on_conflict=on_conflict)


def load_workstream(path: str | os.PathLike[str], *, project_root: str | os.PathLike[str],
                    expected_id: str | None = None, environ: Mapping[str, str] | None = None,
                    on_conflict: str = "error") -> Workstream:
    """Read and validate one workstream file (UTF-8 JSON)."""
    shown = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ValidationError("no such file", path=shown) from None
    except IsADirectoryError:
        raise ValidationError("is a directory, not a workstream file", path=shown) from None
    except OSError as e:
        raise ValidationError(f"cannot read the file: {e.strerror or e}", path=shown) from None
    skip = 3 if data.startswith(b"\xef\xbb\xbf") else 0   # a BOM, as "utf-8-sig" (a codec to load) drops it
    try:
        text = data[skip:].decode()
    except UnicodeDecodeError as e:
        at = e.start + skip
        raise ValidationError(f"not UTF-8 text (byte 0x{data[at]:02x} at offset {at})", path=shown) from None
    return parse_workstream(text, shown, project_root=project_root, expected_id=expected_id,
                            environ=environ, on_conflict=on_conflict)


def parse_workstream(text: str, source: str, *, project_root: str | os.PathLike[str],
                     expected_id: str | None = None, environ: Mapping[str, str] | None = None,
                     on_conflict: str = "error") -> Workstream:
    """Validate a workstream document given as text and build the model. Raises only
    `ValidationError`; `source` is the file name used in messages."""
    doc = Doc(text, source)
    # Loading allocates hundreds of thousands of containers that all stay alive; the cyclic garbage
    # collector would rescan them over and over (a third of the time on a 100 000-step file) and
    # find nothing to free. Pause it while we build; the few cycles made on the error path
    # (jsonschema errors point at their parents) are collected once it is back on.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _parse(doc, os.fspath(project_root), expected_id,
                      os.environ if environ is None else environ, on_conflict)
    except RecursionError:
        # Python's own JSON reader and jsonschema recurse; absurd nesting must not become a traceback.
        raise ValidationError("the document is nested too deeply", path=source) from None
    finally:
        if was_enabled:
            gc.enable()


# --- the stages ----------------------------------------------------------------------------------------

def _parse(doc: Doc, project_root: str, expected_id: str | None, environ: Mapping[str, str],
           on_conflict: str) -> Workstream:
    if on_conflict not in ON_CONFLICT:
        raise ValidationError(f"unknown on-conflict mode {on_conflict!r} (use error or serialize)")
    data = read_json(doc)
    if not isinstance(data, dict):
        doc.fail([Issue(f"the top level must be a JSON object, got {show(data)}", ())])
    if "execution" in data:
        try:
            data["execution"] = interpolate_execution(data["execution"], environ, where="execution")
        except ValidationError as e:
            doc.fail([Issue(e.message, getattr(e, "json_path", ("execution",)), e.hint)])
    doc.check(schema_issues(data) or newline_ids(data))
    steps: list[dict[str, Any]] = data["steps"]
    if expected_id is not None and data["id"] != expected_id:
        doc.fail([Issue(f"the id is '{data['id']}' but the file is named {expected_id}.json",
                        ("id",), "the id must equal the file name without .json")])
    index = _check_unique(doc, steps)
    deps = _dependencies(steps)
    try:
        # the scheduler's and the plan's graph, made here once: it looks up every dependency
        links = graph.StepLinks(tuple(index), list(deps.values()), index)
    except KeyError:
        _check_dependencies(doc, steps, index, deps)    # says which and where
        raise
    _check_tools(doc, steps, data.get("tools", {}))
    _check_references(doc, steps, deps)
    cycle = None if links.in_file_order else graph.find_cycle(deps)
    if cycle:
        doc.fail([Issue("dependency cycle: " + " -> ".join(cycle),
                        ("steps", index[cycle[0]], "depends_on"))])
    groups = _check_groups(doc, data.get("step_groups", []), index, deps)
    execution = _execution(doc, data.get("execution", {}))
    _check_paths(doc, steps, project_root)
    ws = Workstream(
        id=data["id"], steps=tuple(map(_step, range(len(steps)), steps, deps.values())),
        execution=execution, step_groups=groups, title=data.get("title", ""),
        description=data.get("description", ""), source=doc.source,
        tools={name: Tool(name=name, command=tuple(t["command"]), env=dict(t.get("env", {})))
               for name, t in data.get("tools", {}).items()})
    vars(ws).update(links=links, step_ids=links.ids)     # Workstream's cached properties, known
    if on_conflict == "error":
        conflicts = scopes.scope_conflicts(ws)
        doc.check([Issue(c.describe(), ("steps", index[c.step_b], "files_scope"),
                         "add a depends_on between them, or run with --on-conflict serialize")
                   for c in conflicts])
    return ws


def _dependencies(steps: list[dict[str, Any]]) -> dict[str, tuple[str, ...]]:
    """Each step's dependencies, each once (a step that names one twice is rare: looked for in C)."""
    lists = list(map(tuple, map(methodcaller("get", "depends_on", ()), steps)))
    if any(map(ne, map(len, lists), map(len, map(frozenset, lists)))):
        lists = [tuple(dict.fromkeys(ds)) for ds in lists]
    return dict(zip(map(itemgetter("id"), steps), lists))


def _check_unique(doc: Doc, steps: list[dict[str, Any]]) -> dict[str, int]:
    index = {s["id"]: i for i, s in enumerate(steps)}
    if len(index) == len(steps):       # no id twice: each maps to its only (so first) use
        return index
    index = {}
    issues = []
    for i, s in enumerate(steps):
        first = index.setdefault(s["id"], i)
        if first != i:
            issues.append(Issue(f"duplicate step id '{s['id']}' (first used by steps[{first}])",
                                ("steps", i, "id")))
    doc.check(issues)
    return index


def _check_dependencies(doc: Doc, steps: list[dict[str, Any]], index: Mapping[str, int],
                        deps: Mapping[str, Sequence[str]]) -> None:
    """Called when some dependency is unknown (`StepLinks` found it in C): which, and where."""
    issues = []
    for i, s in enumerate(steps):
        for k, d in enumerate(s.get("depends_on", ())):
            if d not in index:
                # difflib over 100 000 ids is slow: only look for a suggestion for reported errors.
                hint = did_you_mean(d, index) if len(issues) < MAX_ERRORS else None
                issues.append(Issue(f"unknown step '{d}'", ("steps", i, "depends_on", k), hint))
    doc.check(issues)


def _check_tools(doc: Doc, steps: list[dict[str, Any]], tools: Mapping[str, Any]) -> None:
    issues = []
    names = [SHELL, PYTHON, *tools]
    for i, s in enumerate(steps):
        tool = s.get("tool", SHELL)
        if tool not in names:
            issues.append(Issue(f"unknown tool '{tool}' (known: {', '.join(names)})",
                                ("steps", i, "tool"), did_you_mean(tool, names)))
        elif tool == PYTHON:
            if "callable" not in s:
                issues.append(Issue('a python step needs "callable": "package.module:function"',
                                    ("steps", i)))
            if s.get("tasks"):
                issues.append(Issue("a python step runs its callable; it takes no tasks",
                                    ("steps", i, "tasks")))
        else:
            for key in ("callable", "args", "kwargs"):
                if key in s:
                    issues.append(Issue(f'"{key}" is only used by the python tool '
                                        f"(this step's tool is {tool})", ("steps", i, key)))
    doc.check(issues)


def _check_references(doc: Doc, steps: list[dict[str, Any]], deps: Mapping[str, Sequence[str]]
                      ) -> None:
    """`${steps.X.outputs.k}` must name a step that finishes before this one starts: an ancestor."""
    # Most files have no `${` in any task: a look at all of them at once (in C) settles that.
    if not any("${" in _joined(steps, field) for field in ("tasks", "acceptance_tests")):
        return
    issues = []
    for i, s in enumerate(steps):
        for field in ("tasks", "acceptance_tests"):
            for k, text in enumerate(s.get(field, ())):
                refs = {ref for ref, _ in task_references(text)} if "${" in text else set()
                missing = refs - _ancestors(s["id"], deps, refs)
                for ref in sorted(missing):
                    what = ("unknown step" if ref not in deps
                            else f"step '{s['id']}' does not depend on step")
                    issues.append(Issue(f"${{steps.{ref}.outputs...}}: {what} '{ref}'",
                                        ("steps", i, field, k),
                                        did_you_mean(ref, deps) if ref not in deps
                                        else f"add '{ref}' to depends_on"))
    doc.check(issues)


def _joined(steps: list[dict[str, Any]], field: str) -> str:
    """Every string of one list field of every step, NUL-separated (no `${` can span two)."""
    return "\0".join(chain.from_iterable(map(methodcaller("get", field, ()), steps)))


def _ancestors(start: str, deps: Mapping[str, Sequence[str]], targets: set[str]) -> set[str]:
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


def _check_groups(doc: Doc, groups: list[dict[str, Any]], index: Mapping[str, int],
                  deps: Mapping[str, Sequence[str]]) -> tuple[StepGroup, ...]:
    issues = []
    owner: dict[str, str] = {}
    group_ids: set[str] = set()
    for g, group in enumerate(groups):
        if group["id"] in group_ids:
            issues.append(Issue(f"duplicate group id '{group['id']}'", ("step_groups", g, "id")))
        group_ids.add(group["id"])
        for k, sid in enumerate(group["steps"]):
            where = ("step_groups", g, "steps", k)
            if sid not in index:
                issues.append(Issue(f"unknown step '{sid}'", where, did_you_mean(sid, index)))
            elif sid in owner:
                issues.append(Issue(f"step '{sid}' is already in group '{owner[sid]}' "
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
            doc.fail([Issue("the listed order of the sequential group contradicts depends_on: "
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


def _execution(doc: Doc, ex: Mapping[str, Any]) -> Execution:
    issues = []
    workers = ex.get("max_workers", 4)
    if workers == "auto":
        workers = _cpus()
    elif workers < 1:
        issues.append(Issue("max-workers must be at least 1", ("execution", "max_workers")))
    on_failure = OnFailure(ex.get("on_failure", "continue"))
    if ex.get("fail_fast"):
        if "on_failure" in ex and on_failure is not OnFailure.FAIL_ALL:
            issues.append(Issue(f"fail_fast: true contradicts on_failure '{on_failure}'",
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


def _check_paths(doc: Doc, steps: list[dict[str, Any]], project_root: str) -> None:
    issues = []
    try:
        root = os.path.realpath(project_root)
    except (OSError, ValueError):
        root = str(project_root)
    for i, s in enumerate(steps):
        if "cwd" not in s and "files_scope" not in s:
            continue
        if "cwd" in s:
            problem = _cwd_problem(s["cwd"], root)
            if problem:
                issues.append(Issue(problem, ("steps", i, "cwd"),
                                    "cwd is a directory inside the project, relative to its root"))
        scope = s.get("files_scope", [])
        lists = [("files_scope",)] if isinstance(scope, list) else [
            ("files_scope", k) for k in ("reads", "writes") if k in scope]
        for where in lists:
            pats = scope if len(where) == 1 else scope[where[1]]
            for k, pat in enumerate(pats):
                if pat.startswith("/") or _drive(pat):
                    issues.append(Issue(f"'{pat}' is an absolute path; file scopes are relative "
                                        "to the project root", ("steps", i, *where, k)))
                elif ".." in pat.replace("\\", "/").split("/"):
                    issues.append(Issue(f"'{pat}' contains '..'; file scopes stay inside the "
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


def _files_scope(scope: Any) -> FilesScope:
    if not scope:
        return _NO_SCOPE
    if isinstance(scope, list):
        return FilesScope(writes=tuple(scope))
    return FilesScope(reads=tuple(scope.get("reads", ())), writes=tuple(scope.get("writes", ())))


_NO_SCOPE = FilesScope()
# How each key of a step's JSON becomes its field (None: as it is); `depends_on` comes deduplicated.
_STEP_FIELDS: dict[str, Callable[[Any], Any] | None] = {
    "id": None, "description": None, "tool": None, "callable": None, "tasks": tuple, "args": tuple,
    "kwargs": dict, "acceptance_tests": tuple, "timeout": float, "retries": int,
    "retry_delay": float, "env": dict, "cwd": posixpath.normpath, "estimated_duration": float,
    "priority": int, "resources": lambda r: {k: float(v) for k, v in r.items()},
    "files_scope": _files_scope}
_STEP_DEFAULTS = defaults(Step)


def _step(i: int, s: Mapping[str, Any], deps: tuple[str, ...]) -> Step:
    """Build the frozen Step from the defaults and the keys present, without its generated
    __init__, which sets each field through object.__setattr__ (a third of the load time of a
    100 000-step file); a typical step has three keys of eighteen."""
    fields = {**_STEP_DEFAULTS, "index": i, "depends_on": deps, "kwargs": {}, "env": {},
              "resources": {}}
    for key, value in s.items():
        if key in _STEP_FIELDS:
            convert = _STEP_FIELDS[key]
            fields[key] = value if convert is None else convert(value)
    step = object.__new__(Step)
    step.__dict__.update(fields)
    return step
