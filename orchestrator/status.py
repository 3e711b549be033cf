"""Reading runs for `status`: never writes, works while a run is going on.

A run whose state says `running` but whose orchestrator is gone (its pid is dead, or the workstream's
lock is free) is reported as `stale`: it was killed, and `run --resume` continues it.
"""
from __future__ import annotations

import fcntl
import os
import time

from .errors import RunNotFoundError
from .procs import pid_alive
from .fmt import human_duration, parse_iso
from .status_view import render_status
from .store import latest_run_id, list_workstreams, read_run_state

TYPE_CHECKING = False
if TYPE_CHECKING:
    from os import PathLike


def lock_held(ws_dir: str | PathLike[str]) -> bool:
    """Whether some live process holds the workstream's lock (flock is dropped when its holder dies)."""
    try:
        fd = os.open(os.path.join(ws_dir, "lock"), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def is_stale(ws_dir: str | PathLike[str], state: dict) -> bool:
    if state.get("status") != "running":
        return False
    pid = state.get("pid")
    return not (isinstance(pid, int) and pid_alive(pid) and lock_held(ws_dir))


def read_status(root: str | PathLike[str], ws_id: str, run_id: str | None = None) -> tuple[dict, bool]:
    ws_dir = os.path.join(root, ws_id)
    rid = run_id or latest_run_id(ws_dir)
    if rid is None:
        known = ", ".join(list_workstreams(root)) or "none"
        raise RunNotFoundError(f"no runs of workstream {ws_id} (workstreams with runs: {known})",
                               path=os.fspath(root))
    state = read_run_state(ws_dir, rid)
    if state is None:
        raise RunNotFoundError(f"run {rid} of {ws_id} has no readable state.json",
                               path=os.path.join(ws_dir, "runs", rid))
    return state, is_stale(ws_dir, state)


def render_one(state: dict, stale: bool) -> str:
    return render_status(state, now_iso=None, stale=stale)


def overview(root: str | PathLike[str], *, now: float | None = None) -> str:
    """One line per workstream under the worktrees directory: latest run, status, progress, age."""
    now = time.time() if now is None else now
    rows = []
    for ws_id in list_workstreams(root):
        ws_dir = os.path.join(root, ws_id)
        rid = latest_run_id(ws_dir)
        state = read_run_state(ws_dir, rid) if rid else None
        if not state:
            continue
        steps = state.get("steps") or {}
        done = sum(1 for s in steps.values() if s.get("status") not in ("pending", "running"))
        status = "stale" if is_stale(ws_dir, state) else state.get("status", "?")
        started = parse_iso(state.get("started_at"))
        age = human_duration(now - started.timestamp()) + " ago" if started else "-"
        rows.append((ws_id, rid, status, f"{done}/{len(steps)}", age))
    if not rows:
        return f"no runs under {root}"
    from tabulate import tabulate
    return tabulate(rows, headers=["workstream", "latest run", "status", "progress", "started"],
                    tablefmt="plain")
