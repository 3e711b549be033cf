"""Turning a step of the model into the `StepSpec` a worker runs: pure, given what the run knows.

A spec is everything one attempt needs and nothing else: the task argv (shell tasks through
`/bin/sh -c`; a named tool's command template filled in one pass, so braces inside a task are never
expanded; `python` steps as a callable with the outputs of their dependencies as `inputs`), the
acceptance tests, the environment (`ORCHESTRATOR_*`, the tool's and the step's `env`, `PWD`), the
working directory, the deadline and the run's paths. `${steps.<id>.outputs.<key>}`, `${workstream.id}`,
`${run.id}` and `${run.dir}` are substituted here; a missing output raises `InterpolationError`.
"""
from __future__ import annotations

import os

from .frozen import record
from .lean import DIGITS, LOWER, UPPER, Pattern
from .interp import substitute_task
from .model import PYTHON, SHELL, StepSpec, Task, Workstream

TYPE_CHECKING = False
if TYPE_CHECKING:
    from os import PathLike
    from typing import Any, Callable, Mapping

_PLACEHOLDER = Pattern(r"\{(task|step_id|ws_id|files)\}")   # tools' command templates


@record
class RunContext:
    """What every spec of one run shares."""

    ws: Workstream
    run_id: str
    run_dir: str
    project_root: str | PathLike[str]
    cancel_dir: str
    log_path: Callable[[str], str]
    output_path: Callable[[str], str]
    extra_env: Mapping[str, str]
    grace: float
    secrets: tuple[str, ...]


def build_spec(ctx: RunContext, sid: str, attempt: int, *, outputs: Mapping[str, Mapping[str, Any]],
               return_values: Mapping[str, Any], timeout: float, timeout_reason: str) -> StepSpec:
    ws = ctx.ws
    step = ws.step(sid)
    sub = dict(outputs=outputs, ws_id=ws.id, run_id=ctx.run_id, run_dir=ctx.run_dir)
    env = dict(ctx.extra_env)
    if step.tool not in (SHELL, PYTHON):
        env.update(ws.tools[step.tool].env)
    env.update(step.env)
    path = env.get("PATH")
    tasks: list[Task] = []
    if step.tool == PYTHON:
        inputs = {d: (return_values.get(d) if ws.step(d).tool == PYTHON else outputs[d])
                  for d in step.depends_on}
        tasks.append(Task(label=step.callable or "", callable=step.callable, args=tuple(step.args),
                          kwargs=dict(step.kwargs), inputs=inputs))
    elif step.tool == SHELL:
        for t in step.tasks:
            text = substitute_task(t, **sub)
            tasks.append(Task(label=text, argv=shell_argv(text, path)))
    else:
        tasks.extend(tool_task(ws, step.tool, substitute_task(t, **sub), sid) for t in step.tasks)
    tests = tuple(Task(label=t, argv=shell_argv(substitute_task(t, **sub), path))
                  for t in step.acceptance_tests)
    env.update(ORCHESTRATOR_WS_ID=ws.id, ORCHESTRATOR_RUN_ID=ctx.run_id, ORCHESTRATOR_STEP_ID=sid,
               ORCHESTRATOR_ATTEMPT=str(attempt), ORCHESTRATOR_RUN_DIR=ctx.run_dir)
    root = os.fspath(ctx.project_root)
    cwd = os.path.realpath(os.path.join(root, step.cwd)) if step.cwd else root
    # what a shell would have set: a plain command is exec'd without one (shell_argv), and would
    # otherwise see the directory the orchestrator was started in
    env.setdefault("PWD", cwd)
    return StepSpec(ws_id=ws.id, run_id=ctx.run_id, step_id=sid, attempt=attempt,
                    tasks=tuple(tasks), acceptance_tests=tests, env=env, cwd=cwd,
                    project_root=root, timeout=timeout, timeout_reason=timeout_reason,
                    log_path=ctx.log_path(sid), output_path=ctx.output_path(sid), grace=ctx.grace,
                    max_log_bytes=ws.execution.max_log_bytes, secrets=ctx.secrets,
                    cancel_dir=ctx.cancel_dir, resources=dict(step.resources))


# A command made of plain words only (no quoting, expansion, redirection, globbing, operators or
# newlines) means the same with or without a shell, so it is exec'd directly, as make does: one exec
# instead of two. Shell builtins and keywords, assignments and names not found on PATH keep the shell.
_PLAIN_CHARS = frozenset(LOWER + UPPER + DIGITS + "_./:,+@%=- ")


def _plain(text: str) -> bool:
    """`[A-Za-z0-9_./:,+@%=-]+(?: +[A-Za-z0-9_./:,+@%=-]+)*` in full, without a regex (`lean`)."""
    return text[:1] not in ("", " ") and text[-1] != " " and _PLAIN_CHARS.issuperset(text)


_SH_WORDS = frozenset(
    ". : [ alias bg break case cd command continue do done echo elif else esac eval exec exit export "
    "fc fg fi for getopts hash if in jobs kill local printf pwd read readonly return set shift "
    "test then times trap type ulimit umask unalias unset until wait while".split())
_FOUND: dict[tuple[str, str | None], str | None] = {}


def shell_argv(text: str, path: str | None = None) -> tuple[str, ...]:
    """argv for a shell task: the words themselves when the shell would only split them, else
    `/bin/sh -c text`. `path`: the PATH the step will see (None: ours)."""
    words = text.split() if _plain(text) else None
    if words and "/" not in words[0] and "=" not in words[0] and words[0] not in _SH_WORDS:
        key = (words[0], path)
        if key not in _FOUND:
            _FOUND[key] = _which(words[0], path)
        exe = _FOUND[key]
        if exe:
            return (exe, *words[1:])
    return ("/bin/sh", "-c", text)


def _which(name: str, path: str | None) -> str | None:
    """The executable `name` on `path` (ours when None), as the shell finds it (shutil.which costs
    3 ms to import on the way to a run's first step)."""
    for d in (path if path is not None else os.environ.get("PATH", os.defpath)).split(os.pathsep):
        full = os.path.join(d or ".", name)
        if os.access(full, os.X_OK) and not os.path.isdir(full):
            return full
    return None


def tool_task(ws: Workstream, tool: str, text: str, sid: str) -> Task:
    """One task of a step as argv: `/bin/sh -c` for shell, else the tool's command template."""
    if tool == SHELL:
        return Task(label=text, argv=("/bin/sh", "-c", text))
    files = list(ws.step(sid).files_scope.writes)
    values = {"task": text, "step_id": sid, "ws_id": ws.id, "files": " ".join(files)}
    argv: list[str] = []
    for part in ws.tools[tool].command:
        if part == "{files}":
            argv.extend(files)
            continue
        # one pass over the template, so braces inside the task itself are never expanded
        argv.append(_PLACEHOLDER.sub(lambda m: values[m.group(1)], part))
    return Task(label=text, argv=tuple(argv))
