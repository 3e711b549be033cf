"""Factory fixtures shared by every test level.

`project` is a temporary project root (the current directory during the test) with a `workstreams/`
folder. `make_workstream(steps=[...], **top)` writes `workstreams/<id>.json` and returns its path;
`run_workstream(path, **options)` runs it in-process through the real dispatcher and process pool and
returns `(outcome, summary)`. `stray_processes(marker)` lists live processes whose command line holds
a marker, so a test can prove nothing it started is left running.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    (root / "workstreams").mkdir(parents=True)
    monkeypatch.chdir(root)
    monkeypatch.delenv("ORCHESTRATOR_WORKTREES_DIR", raising=False)
    return root


@pytest.fixture
def make_workstream(project):
    def make(steps, *, ws_id="ws-test", execution=None, name=None, **top):
        doc = {"id": ws_id, "steps": steps, **top}
        if execution is not None:
            doc["execution"] = execution
        path = project / "workstreams" / f"{name or ws_id}.json"
        path.write_text(json.dumps(doc, indent=2))
        return path
    return make


@pytest.fixture
def run_workstream(project):
    from orchestrator.dispatcher import Dispatcher, RunOptions
    from orchestrator.loader import load_workstream

    def run(path, *, on_conflict="error", reporter=None, **options):
        ws = load_workstream(path, project_root=project, on_conflict=on_conflict)
        opts = RunOptions(project_root=project, worktrees=project / ".worktrees",
                          on_conflict=on_conflict, **options)
        outcome = Dispatcher(ws, opts, reporter=reporter).run()
        summary = json.loads((Path(outcome.run_dir) / "results_summary.json").read_text())
        return outcome, summary
    return run


def steps_by_id(summary):
    return {s["id"]: s for s in summary["steps"]}


def ignored_signals(status: str) -> set[int]:
    """The signals a /proc/<pid>/status text says are ignored (its SigIgn mask)."""
    mask = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    return {s for s in range(1, 65) if mask >> (s - 1) & 1}


def stray_processes(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(marker in part for part in (p.info["cmdline"] or [])):
                found.append(p)
        except psutil.Error:
            continue
    return found


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02):
    """Wait for a condition with a deadline (not a sleep used as synchronisation)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


@pytest.fixture
def marker(request):
    """A unique string to put in step command lines, checked for strays after the test."""
    tag = f"orchmark{os.getpid()}x{abs(hash(request.node.nodeid)) % 10**8}"
    yield tag
    wait_until(lambda: not stray_processes(tag), timeout=5.0)
    leftovers = stray_processes(tag)
    for p in leftovers:
        try:
            p.kill()
        except psutil.Error:
            pass
    assert not leftovers, f"processes left running: {[p.info['cmdline'] for p in leftovers]}"
