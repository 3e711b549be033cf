"""The typed model: loaded steps are complete frozen records; records themselves; definition hashes."""
from __future__ import annotations

import json
import pickle

import pytest

from orchestrator import frozen
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
    assert set(vars(a)) >= set(frozen.fields(Step))
    with pytest.raises(frozen.FrozenInstanceError):
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


# --- frozen.record: what the model's classes are made with ------------------------------------------

@frozen.record
class _Point:
    x: int
    y: int = 0
    tags: dict = frozen.factory(dict)


@frozen.record(frozen=False)
class _Box:
    items: list = frozen.factory(list)


@frozen.record
class _Other:
    a: int
    b: str = "b"


def test_a_record_is_built_positionally_or_by_keyword_with_fresh_defaults():
    p, q = _Point(1), _Point(x=1, y=2)
    assert (p.x, p.y, p.tags, q.y) == (1, 0, {}, 2)
    assert p.tags is not _Point(1).tags
    assert frozen.fields(_Point) == ("x", "y", "tags") and frozen.defaults(_Point) == {"y": 0}
    with pytest.raises(TypeError, match="missing the argument 'x'"):
        _Point()
    with pytest.raises(TypeError, match="no field 'z'"):
        _Point(1, z=3)
    with pytest.raises(TypeError, match="twice"):
        _Point(1, x=2)
    with pytest.raises(TypeError, match="positional"):
        _Point(1, 2, {}, 4)


def test_a_record_compares_hashes_and_shows_its_fields():
    assert _Point(1, 2) == _Point(1, 2) != _Point(1, 3)
    assert _Point(1) != _Other(1) and (_Point(1) == (1, 0, {})) is False
    assert hash(_Other(1)) == hash(_Other(1, "b"))
    assert repr(_Point(1, 2)) == "_Point(x=1, y=2, tags={})"
    with pytest.raises(TypeError):
        hash(_Box())          # mutable: unhashable


def test_a_frozen_record_refuses_changes_and_replace_makes_a_copy():
    p = _Point(1, 2)
    with pytest.raises(frozen.FrozenInstanceError):
        p.x = 5
    with pytest.raises(frozen.FrozenInstanceError):
        del p.y
    with pytest.raises(frozen.FrozenInstanceError):
        _Other(1).a = 2
    q = frozen.replace(p, y=7)
    assert (q.x, q.y, p.y) == (1, 7, 2)
    with pytest.raises(TypeError, match="no field"):
        frozen.replace(p, z=1)
    box = _Box()
    box.items = [1]
    assert box == _Box([1])


@pytest.mark.parametrize("obj", [_Point(1, 2, {"k": "v"}), _Other(3, "x"), _Box([1, 2]),
                                 StepStatus.FAILED])
def test_records_pickle_to_equal_values(obj):
    assert pickle.loads(pickle.dumps(obj)) == obj
