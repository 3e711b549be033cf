"""What `run` and `validate` do, without click: the CLI (`cli`) and the fast entry (`entry`) both call
these with the parsed options, so the two ways in behave the same.

Bad input raises an `OrchestratorError` (the callers print its one line and exit with its code); a
run returns its exit code. Plans and the `validate` line go to stdout, progress to stderr.
"""
from __future__ import annotations

import gc
import os
import sys

from .entry import kept
from .errors import UsageError
from .model import OnFailure, Workstream

ON_FAILURE_CHOICES = tuple(m.value for m in OnFailure)
ON_CONFLICT_CHOICES = ("error", "serialize")
EXECUTOR_CHOICES = ("process", "dask")


def project_root() -> str:
    # paths stay strings on the way of `run` and `validate`: pathlib costs ~8 ms of every start-up
    return os.path.realpath(os.getcwd())


def worktrees(override: str | None) -> str:
    from .store import worktrees_root
    return worktrees_root(project_root(), override)


def max_workers_option(value: str | None) -> int | None:
    """`--max-workers N|auto`: a whole number of at least 1, or the usable CPUs."""
    if value is None:
        return None
    if value == "auto":
        return len(os.sched_getaffinity(0))
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"--max-workers: expected a whole number or 'auto', got {value!r}") from None
    if n < 1:
        raise UsageError("max-workers must be at least 1")
    return n


def load(file: str | None, ws_id: str | None, workstreams_dir: str | None, *,
         on_conflict: str = "error") -> Workstream:
    from .loader import load_by_id, load_workstream
    root = project_root()
    if bool(file) == bool(ws_id):
        raise UsageError("give either a workstream FILE or --ws-id ID (one of them)")
    if ws_id:
        ws = load_by_id(ws_id, workstreams_dir or "workstreams", project_root=root,
                        on_conflict=on_conflict)
    else:
        ws = load_workstream(file, project_root=root, on_conflict=on_conflict)
    # the workstream lives as long as the process: keep the collector from rescanning it (with
    # 100 000 steps, full collections cost more than the scheduling itself)
    gc.freeze()
    return kept(ws)


def run(file, ws_id, workstreams_dir, max_workers, sequential, fail_fast, on_failure, on_conflict,
        dry_run, resume, force, grace, executor, scheduler, worktrees_dir, quiet, verbose) -> int:
    """`orchestrator run`: the exit code (SPEC §2). `max_workers` is already checked."""
    if quiet and verbose:
        raise UsageError("-q and -v exclude each other")
    if grace < 0:
        raise UsageError("--grace must be at least 0")
    ws = load(file, ws_id, workstreams_dir, on_conflict=on_conflict)
    if sequential:
        max_workers = 1
    policy = OnFailure.FAIL_ALL if fail_fast else (OnFailure(on_failure) if on_failure else None)
    chosen_executor = executor or ws.execution.executor
    pool_factory = None
    if chosen_executor == "dask":
        from .dask_pool import dask_pool_factory
        pool_factory = dask_pool_factory(scheduler or ws.execution.scheduler_address)
    if dry_run:
        gc.disable()  # a short-lived command that builds ~10 objects a step and frees them at exit
        print(plan_text(ws, max_workers, on_conflict, worktrees_dir))
        return 0
    from .console import make_reporter
    from .dispatcher import Dispatcher, RunOptions
    opts = RunOptions(project_root=project_root(), worktrees=worktrees(worktrees_dir),
                      max_workers=max_workers, on_failure=policy, on_conflict=on_conflict, grace=grace,
                      resume=resume, force=force, executor=chosen_executor,
                      scheduler_address=scheduler or ws.execution.scheduler_address)
    reporter = make_reporter(quiet=quiet, verbose=verbose, stream=sys.stderr)
    return kept(Dispatcher(ws, opts, pool_factory=pool_factory, reporter=reporter)).run().exit_code


def plan_text(ws: Workstream, max_workers: int | None, on_conflict: str,
              worktrees_dir: str | None = None) -> str:
    from . import scopes
    from .plan import build_plan
    from .status_view import render_plan
    from .store import RunStore
    serialize = ([(c.step_a, c.step_b) for c in scopes.scope_conflicts(ws)]
                 if on_conflict == "serialize" else [])
    past = RunStore(worktrees(worktrees_dir), ws.id).read_history()
    return render_plan(kept(build_plan(ws, workers=max_workers or ws.execution.effective_workers,
                                       history=past, serialize=serialize)))


def validate(file, ws_id, workstreams_dir, on_conflict) -> int:
    """`orchestrator validate`: one line on stdout for a valid file."""
    ws = load(file, ws_id, workstreams_dir, on_conflict=on_conflict)
    edges = sum(len(s.depends_on) for s in ws.steps)
    print(f"OK: {ws.source}: workstream {ws.id}, {len(ws.steps)} steps, {edges} dependencies")
    return 0
