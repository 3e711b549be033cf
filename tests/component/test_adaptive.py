"""Adaptive scaling with an injected load probe: starts are held while it says overloaded."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from conftest import steps_by_id
from orchestrator.dispatcher import Dispatcher, RunOptions
from orchestrator.loader import load_workstream

pytestmark = pytest.mark.timeout(60)


class ScriptedProbe:
    """Overloaded until the test releases it; counts how often it was asked."""

    def __init__(self):
        self.release = threading.Event()
        self.calls = 0

    def overloaded(self):
        self.calls += 1
        return None if self.release.is_set() else "load average 9.0 > 2 CPUs"


def test_overload_holds_starts_to_one_running_step_then_resumes(make_workstream, project):
    # step a waits until the probe has been asked twice, then releases it: while held, b and c
    # (independent, max_workers 3) must not start, so none of them overlaps a
    probe = ScriptedProbe()
    gate = project / "gate"
    path = make_workstream([
        {"id": "a", "tasks": [f"until [ -f {gate} ]; do sleep 0.02; done"]},
        {"id": "b", "tasks": ["true"]},
        {"id": "c", "tasks": ["true"]},
    ], execution={"max_workers": 3, "adaptive_scaling": True})
    ws = load_workstream(path, project_root=project)
    opts = RunOptions(project_root=project, worktrees=project / ".worktrees")

    def release_when_probed():
        from conftest import wait_until
        wait_until(lambda: probe.calls >= 2, timeout=30)
        probe.release.set()
        wait_until(lambda: probe.calls >= 3, timeout=30)
        gate.touch()

    helper = threading.Thread(target=release_when_probed, daemon=True)
    helper.start()
    outcome = Dispatcher(ws, opts, load_probe=probe).run()
    helper.join(timeout=30)

    assert outcome.exit_code == 0
    summary = json.loads((Path(outcome.run_dir) / "results_summary.json").read_text())
    by = steps_by_id(summary)
    a_end = by["a"]["end_offset_s"]
    hold = summary["adaptive_holds"][0]
    assert "load average" in hold["reason"] and hold["end_offset_s"] is not None
    # b and c started only after the hold ended (a was the one step allowed to run meanwhile)
    for sid in ("b", "c"):
        assert by[sid]["start_offset_s"] >= hold["end_offset_s"] - 0.05
    assert by["a"]["start_offset_s"] <= hold["end_offset_s"] <= a_end
    log = (project / ".worktrees" / "ws-test" / "orchestrator.log").read_text()
    assert "HOLD new starts" in log and "RESUME starts" in log
    report = (Path(outcome.run_dir) / "execution_report.md").read_text()
    assert "Adaptive scaling held new starts" in report
