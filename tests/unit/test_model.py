"""The typed model: loaded steps are complete frozen dataclasses; definition hashes."""
from __future__ import annotations

import dataclasses
import json

import pytest

from orchestrator.loader import parse_workstream
from orchestrator.model import FilesScope, Step, StepStatus

pytestmark = pytest.mark.timeout(30)


def test_loaded_steps_equal_steps_built_by_the_constructor(tmp_path):
    doc = {"id": "w", "steps": [
        {"id": "a", "tasks": ["true"], "files_scope": {"reads": ["x"], "writes": ["y"]},
         "env": {"K": "v"}, "timeout": 5, "retries": 1, "priority": 2, "cwd": "./sub/",
         "resources": {"gpu": 1}, "estimated_duration": 3, "description": "d"},
        {"id": "b", "tool": "python", "callable": "m:f", "args": [1], "kwargs": {"k": 2},
         "depends_on": ["a"]},
    ]}
    (tmp_path / "sub").mkdir()
    ws = parse_workstream(json.dumps(doc), "w.json", project_root=tmp_path)
    a, b = ws.steps
    assert a == Step(id="a", index=0, tasks=("true",), files_scope=FilesScope(("x",), ("y",)),
                     env={"K": "v"}, timeout=5.0, retries=1, priority=2, cwd="sub",
                     resources={"gpu": 1.0}, estimated_duration=3.0, description="d")
    assert b == Step(id="b", index=1, tool="python", callable="m:f", args=(1,), kwargs={"k": 2},
                     depends_on=("a",))
    assert set(vars(a)) >= {f.name for f in dataclasses.fields(Step)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.retries = 3


def test_definition_hash_ignores_hints_but_not_what_runs():
    base = Step("a", 0, tasks=("make",))
    assert base.definition_hash() == Step("a", 5, tasks=("make",), priority=9,
                                          estimated_duration=4).definition_hash()
    assert base.definition_hash() != Step("a", 0, tasks=("make all",)).definition_hash()


def test_status_vocabulary():
    assert {s.value for s in StepStatus if s.terminal} == {
        "succeeded", "failed", "timed_out", "blocked", "skipped", "cancelled"}
    assert StepStatus.FAILED.bad and not StepStatus.SUCCEEDED.bad
