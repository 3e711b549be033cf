"""Loading and validating workstream files (orchestrator.loader): every SPEC 1.2 rejection, the
model that is built, and a property test that nothing but ValidationError ever escapes."""
from __future__ import annotations

import copy

import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import frozen, loader
from orchestrator.errors import OrchestratorError, ValidationError
from orchestrator.loader import load_by_id, load_schema, load_workstream, parse_workstream
from orchestrator.model import OnFailure, Step, Workstream

pytestmark = pytest.mark.timeout(30)

SRC = "workstreams/ws.json"


def doc(*steps, **top):
    d = {"id": "ws", "steps": list(steps) or [{"id": "a", "tasks": ["true"]}]}
    d.update(top)
    return d


def parse(d, root: Path, *, text: str | None = None, **kw) -> Workstream:
    kw.setdefault("environ", {})
    return parse_workstream(text if text is not None else json.dumps(d, indent=2), SRC,
                            project_root=root, **kw)


def rejected(d, root: Path, *, text: str | None = None, **kw) -> ValidationError:
    with pytest.raises(ValidationError) as e:
        parse(d, root, text=text, **kw)
    assert e.value.path == SRC
    return e.value


def position_of(text: str, needle: str) -> tuple[int, int]:
    off = text.index(needle)
    return text.count("\n", 0, off) + 1, off - text.rfind("\n", 0, off)


# --- what a valid file becomes ---------------------------------------------------------------------

def test_minimal_workstream_gets_the_defaults(tmp_path):
    ws = parse(doc(), tmp_path)
    assert ws.id == "ws" and ws.source == SRC and ws.step_ids == ("a",)
    step = ws.steps[0]
    assert (step.index, step.tool, step.tasks, step.depends_on, step.timeout, step.cwd) == (
        0, "shell", ("true",), (), None, None)
    ex = ws.execution
    assert (ex.parallel, ex.max_workers, ex.timeout_per_step, ex.on_failure) == (
        True, 4, 300.0, OnFailure.CONTINUE)


def test_full_workstream_model(tmp_path):
    (tmp_path / "sub").mkdir()
    d = doc(
        {"id": "a", "tasks": ["make"], "files_scope": ["src/a.py"], "env": {"K": "v"},
         "timeout": 30, "retries": 2, "retry_delay": 0.5, "cwd": "./sub/", "priority": 3,
         "estimated_duration": 12, "resources": {"gpu": 1}, "acceptance_tests": ["test -f x"],
         "description": "first"},
        {"id": "b", "tool": "python", "callable": "pkg.mod:run", "args": [1, [2]],
         "kwargs": {"x": {"y": None}}, "depends_on": ["a", "a"],
         "files_scope": {"reads": ["src/a.py"], "writes": ["out/"]}},
        {"id": "c", "tool": "aider", "tasks": ["fix it"], "depends_on": ["b"]},
        **{"$schema": "../schemas/workstream.schema.json", "title": "T", "description": "D",
           "tools": {"aider": {"command": ["aider", "--message", "{task}", "{files}"],
                               "env": {"A": "1"}, "description": "LLM"}},
           "step_groups": [{"id": "g", "steps": ["a", "c"], "execute": "sequential",
                            "max_workers": 1, "on_failure": "fail_all", "timeout": 60}],
           "execution": {"parallel": True, "max_workers": 2, "timeout_per_step": 10,
                         "run_timeout": 100, "rate_limit_delay": 0.1, "rate_limit": 5,
                         "fail_fast": True, "adaptive_scaling": True, "executor": "dask",
                         "scheduler_address": "tcp://h:8786",
                         "circuit_breaker": {"failure_threshold": 3}, "max_log_bytes": 1000}})
    ws = parse(d, tmp_path)
    a, b, c = ws.steps
    assert a.files_scope.writes == ("src/a.py",) and a.files_scope.reads == ()
    assert (a.env, a.timeout, a.retries, a.retry_delay, a.cwd, a.priority) == (
        {"K": "v"}, 30.0, 2, 0.5, "sub", 3)
    assert (a.estimated_duration, a.resources, a.acceptance_tests) == (12.0, {"gpu": 1.0},
                                                                      ("test -f x",))
    assert (b.callable, b.args, b.kwargs, b.depends_on) == ("pkg.mod:run", (1, [2]),
                                                            {"x": {"y": None}}, ("a",))
    assert b.files_scope.reads == ("src/a.py",) and b.files_scope.writes == ("out/",)
    assert ws.tools["aider"].command == ("aider", "--message", "{task}", "{files}")
    assert ws.tools["aider"].env == {"A": "1"}
    [g] = ws.step_groups
    assert (g.id, g.steps, g.execute, g.max_workers, g.on_failure, g.timeout) == (
        "g", ("a", "c"), "sequential", 1, OnFailure.FAIL_ALL, 60.0)
    ex = ws.execution
    assert ex.on_failure is OnFailure.FAIL_ALL                   # fail_fast
    assert (ex.max_workers, ex.run_timeout, ex.rate_limit, ex.executor) == (2, 100.0, 5.0, "dask")
    assert (ex.circuit_breaker_threshold, ex.max_log_bytes, ex.adaptive_scaling) == (3, 1000, True)
    assert (ws.title, ws.description) == ("T", "D")


def test_steps_have_every_field_and_their_own_mutable_values(tmp_path):
    # the loader builds steps without Step.__init__: no field may be missing or shared
    ws = parse(doc({"id": "a"}, {"id": "b", "env": {"K": "v"}, "depends_on": ["a"]}), tmp_path)
    a, b = ws.steps
    names = set(frozen.fields(Step))
    assert vars(a).keys() == names and vars(b).keys() == names
    assert a == Step(id="a", index=0) and b == Step(id="b", index=1, env={"K": "v"}, depends_on=("a",))
    assert a.kwargs is not b.kwargs and a.resources is not b.resources

def test_auto_workers_are_the_usable_cpus(tmp_path):
    ws = parse(doc(execution={"max_workers": "auto"}), tmp_path)
    assert ws.execution.max_workers == len(os.sched_getaffinity(0))


def test_execution_env_interpolation_is_typed(tmp_path):
    d = doc(execution={"max_workers": "${env.MAX_W:-3}", "parallel": "${env.CI != 'true'}",
                       "timeout_per_step": "${env.T}", "scheduler_address": "tcp://${env.H}:1"})
    ws = parse(d, tmp_path, environ={"CI": "true", "T": "2.5", "H": "host"})
    assert (ws.execution.max_workers, ws.execution.parallel) == (3, False)
    assert ws.execution.timeout_per_step == 2.5
    assert ws.execution.scheduler_address == "tcp://host:1"


def test_interpolated_values_are_validated_by_the_schema(tmp_path):
    e = rejected(doc(execution={"timeout_per_step": "${env.T}"}), tmp_path, environ={"T": "soon"})
    assert e.where == "execution.timeout_per_step" and 'got string "soon"' in e.message


def test_unset_env_variable_names_the_place(tmp_path):
    text = json.dumps(doc(execution={"max_workers": "${env.MAX_W}"}), indent=2)
    e = rejected(None, tmp_path, text=text)
    line, col = position_of(text, '"${env.MAX_W}"')
    assert str(e) == (f"{SRC}:{line}:{col}: execution.max_workers: environment variable MAX_W "
                      "is not set (use ${env.MAX_W:-default})")


def test_environ_defaults_to_the_process_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_TEST_W", "5")
    ws = parse_workstream(json.dumps(doc(execution={"max_workers": "${env.ORCH_TEST_W}"})), SRC,
                          project_root=tmp_path)
    assert ws.execution.max_workers == 5


# --- every SPEC 1.2 rejection ----------------------------------------------------------------------

def test_malformed_json_has_line_and_column(tmp_path):
    text = '{\n  "id": "ws",\n  "steps": [\n    {"id": "a",}\n  ]\n}\n'
    e = rejected(None, tmp_path, text=text)
    assert (e.line, e.column) == (4, 16)
    assert str(e).startswith(f"{SRC}:4:16: malformed JSON: ")


@pytest.mark.parametrize("text, message", [
    ('{"id": "ws", "steps": [{"id": "a", "timeout": NaN}]}', "NaN is not valid JSON"),
    ('{"id": "ws", "steps": [{"id": "a", "timeout": -Infinity}]}', "-Infinity is not valid JSON"),
    ('{"id": "ws", "steps": [{"id": "a", "timeout": 1e999}]}', "number 1e999 is too large"),
    ('{"id": "ws", "steps": [{"id": "a", "priority": 1' + "0" * 400 + '}]}', "too large"),
    ('{"id": "ws", "id": "x", "steps": []}', "duplicate key 'id'"),
    ('', "malformed JSON"),
    ('[1, 2', "malformed JSON"),
])
def test_json_that_python_would_accept_but_we_do_not(tmp_path, text, message):
    e = rejected(None, tmp_path, text=text)
    assert message in str(e)


def test_duplicate_key_is_placed(tmp_path):
    text = '{"id": "ws",\n "steps": [{"id": "a",\n   "tasks": [], "tasks": ["x"]}]}'
    e = rejected(None, tmp_path, text=text)
    assert (e.where, e.line) == ("steps[0].tasks", 3)


@pytest.mark.parametrize("value, shown", [([1], "a list"), ("x", 'string "x"'), (3, "integer 3"),
                                          (None, "null")])
def test_top_level_must_be_an_object(tmp_path, value, shown):
    e = rejected(None, tmp_path, text=json.dumps(value))
    assert e.message == f"the top level must be a JSON object, got {shown}"


@pytest.mark.parametrize("step, where, message", [
    ({"id": "a", "timeout": "x"}, "steps[1].timeout", 'expected a number, got string "x"'),
    ({"id": "a", "timeout": 0}, "steps[1].timeout", "must be greater than 0, got integer 0"),
    ({"id": "a", "retries": -1}, "steps[1].retries", "must be at least 0, got integer -1"),
    ({"id": "a", "retries": 1.5}, "steps[1].retries", "expected an integer, got number 1.5"),
    ({"id": "a", "tasks": "echo"}, "steps[1].tasks", 'expected a list, got string "echo"'),
    ({"id": "a", "tasks": ["ok", 3]}, "steps[1].tasks[1]", "expected a string, got integer 3"),
    ({"id": "a", "depends_on": [True]}, "steps[1].depends_on[0]", "expected a string, got true"),
    ({"id": "Bad Id"}, "steps[1].id", 'invalid id "Bad Id": use lowercase letters'),
    ({"id": "a\n"}, "steps[1].id", "ends with a newline"),
    ({"tasks": []}, "steps[1]", "missing required property 'id'"),
    ({"id": "a", "env": {"K": 1}}, "steps[1].env.K", "expected a string, got integer 1"),
    ({"id": "a", "files_scope": "src"}, "steps[1].files_scope",
     'expected a list of strings or an object, got string "src"'),
    ({"id": "a", "files_scope": {"writes": [1]}}, "steps[1].files_scope.writes[0]",
     "expected a string, got integer 1"),
    ({"id": "a", "files_scope": {"write": []}}, "steps[1].files_scope.write",
     "unexpected property 'write'"),
    ({"id": "a", "callable": "nocolon"}, "steps[1].callable",
     'invalid callable "nocolon": expected "package.module:function"'),
    ({"id": "a", "resources": {"gpu": -1}}, "steps[1].resources.gpu", "must be at least 0"),
])
def test_schema_violation_names_the_path(tmp_path, step, where, message):
    text = json.dumps(doc({"id": "z"}, step), indent=2)
    e = rejected(None, tmp_path, text=text)
    assert e.where == where and message in e.message, str(e)
    assert e.line is not None and e.line >= 5


def test_unexpected_property_suggests_the_known_one(tmp_path):
    text = json.dumps(doc({"id": "a", "depends_onn": []}), indent=2)
    e = rejected(None, tmp_path, text=text)
    line, col = position_of(text, '"depends_onn"')
    assert str(e) == (f"{SRC}:{line}:{col}: steps[0].depends_onn: unexpected property "
                      "'depends_onn' (did you mean 'depends_on'?)")


@pytest.mark.parametrize("execution, where, message", [
    ({"on_failure": "stop"}, "execution.on_failure",
     'must be one of "continue", "fail_all", "complete_running", got string "stop"'),
    ({"executor": "thread"}, "execution.executor", 'must be one of "process", "dask"'),
    ({"max_workers": "many"}, "execution.max_workers",
     'expected an integer or "auto", got string "many"'),
    ({"max_workers": 2.5}, "execution.max_workers", 'expected an integer or "auto", got number 2.5'),
    ({"parallel": "yes"}, "execution.parallel", 'expected true or false, got string "yes"'),
    ({"timeout_per_step": -1}, "execution.timeout_per_step", "must be greater than 0"),
    ({"circuit_breaker": {}}, "execution.circuit_breaker",
     "missing required property 'failure_threshold'"),
    ({"paralel": True}, "execution.paralel", "unexpected property 'paralel'"),
])
def test_execution_schema_messages(tmp_path, execution, where, message):
    e = rejected(doc(execution=execution), tmp_path)
    assert e.where == where and message in e.message, str(e)


def test_enum_violation_suggests_a_close_value(tmp_path):
    e = rejected(doc(step_groups=[{"id": "g", "steps": ["a"], "execute": "sequentail"}]), tmp_path)
    assert e.where == "step_groups[0].execute" and e.hint == "did you mean 'sequential'?"
    assert '"parallel", "sequential"' in e.message


def test_every_schema_error_is_reported_in_file_order(tmp_path):
    d = doc({"id": "a", "timeout": "x"}, {"id": "b", "retries": -2}, {"id": "c", "bogus": 1},
            execution={"on_failure": "nope"})
    text = json.dumps(d, indent=2)
    e = rejected(None, tmp_path, text=text)
    lines = str(e).splitlines()
    assert len(lines) == 4 and len(e.errors) == 4
    assert [x.where for x in e.errors] == ["steps[0].timeout", "steps[1].retries",
                                           "steps[2].bogus", "execution.on_failure"]
    assert all(re.match(rf"{re.escape(SRC)}:\d+:\d+: \S+: ", line) for line in lines)
    assert [x.line for x in e.errors] == sorted(x.line for x in e.errors)


def test_missing_steps_and_empty_steps(tmp_path):
    assert rejected({"id": "ws"}, tmp_path).message == "missing required property 'steps'"
    e = rejected({"id": "ws", "steps": []}, tmp_path)
    assert (e.where, e.message) == ("steps", "must not be empty")


def test_id_must_match_the_file_name(tmp_path):
    e = rejected(doc(), tmp_path, expected_id="other")
    assert e.where == "id" and "file is named other.json" in e.message


def test_duplicate_step_ids(tmp_path):
    text = json.dumps(doc({"id": "a"}, {"id": "b"}, {"id": "a"}), indent=2)
    e = rejected(None, tmp_path, text=text)
    assert e.where == "steps[2].id" and e.message == "duplicate step id 'a' (first used by steps[0])"
    assert e.line == text.count("\n", 0, text.rindex('"a"')) + 1


def test_unknown_dependency_with_did_you_mean(tmp_path):
    d = doc({"id": "step-01-math-utils"}, {"id": "step-02-string-utils"},
            {"id": "step-03", "depends_on": ["step-02-strng-utils"]})
    text = json.dumps(d, indent=2)
    e = rejected(None, tmp_path, text=text)
    line, col = position_of(text, '"step-02-strng-utils"')
    assert str(e) == (f"{SRC}:{line}:{col}: steps[2].depends_on[0]: unknown step "
                      "'step-02-strng-utils' (did you mean 'step-02-string-utils'?)")


def test_unknown_dependency_without_a_close_match(tmp_path):
    e = rejected(doc({"id": "a", "depends_on": ["zzzzzz"]}), tmp_path)
    assert e.message == "unknown step 'zzzzzz'" and e.hint is None


def test_cycle_is_listed(tmp_path):
    d = doc({"id": "a", "depends_on": ["c"]}, {"id": "b", "depends_on": ["a"]},
            {"id": "c", "depends_on": ["b"]}, {"id": "d", "depends_on": ["a"]})
    e = rejected(d, tmp_path)
    assert e.message == "dependency cycle: a -> c -> b -> a" and e.where == "steps[0].depends_on"


def test_self_dependency_is_a_cycle(tmp_path):
    assert rejected(doc({"id": "a", "depends_on": ["a"]}), tmp_path).message == (
        "dependency cycle: a -> a")


@pytest.mark.parametrize("step, where, message", [
    ({"id": "a", "tool": "aidr"}, "steps[0].tool", "unknown tool 'aidr' (known: shell, python, aider)"),
    ({"id": "a", "tool": "python"}, "steps[0]", 'a python step needs "callable"'),
    ({"id": "a", "tool": "python", "callable": "m:f", "tasks": ["x"]}, "steps[0].tasks",
     "takes no tasks"),
    ({"id": "a", "callable": "m:f"}, "steps[0].callable", "only used by the python tool"),
    ({"id": "a", "args": [1]}, "steps[0].args", "only used by the python tool"),
])
def test_unknown_tool_and_python_steps(tmp_path, step, where, message):
    e = rejected(doc(step, tools={"aider": {"command": ["aider", "{task}"]}}), tmp_path)
    assert e.where == where and message in e.message, str(e)


def test_unknown_tool_suggests(tmp_path):
    e = rejected(doc({"id": "a", "tool": "aidr"}, tools={"aider": {"command": ["aider"]}}), tmp_path)
    assert e.hint == "did you mean 'aider'?"


@pytest.mark.parametrize("tools, where, message", [
    ({"shell": {"command": ["x"]}}, "tools.shell", "built in"),
    ({"Bad Name": {"command": ["x"]}}, 'tools["Bad Name"]', "invalid tool name"),
    ({"t": {"command": []}}, "tools.t.command", "must not be empty"),
    ({"t": {}}, "tools.t", "missing required property 'command'"),
])
def test_tool_definitions(tmp_path, tools, where, message):
    e = rejected(doc(tools=tools), tmp_path)
    assert e.where == where and message in e.message, str(e)


@pytest.mark.parametrize("task, message", [
    ("echo ${steps.b.outputs.k}", "step 'a' does not depend on step 'b'"),
    ("echo ${steps.nope.outputs.k}", "unknown step 'nope'"),
])
def test_output_references_must_name_an_ancestor(tmp_path, task, message):
    e = rejected(doc({"id": "a", "tasks": [task]}, {"id": "b"}), tmp_path)
    assert e.where == "steps[0].tasks[0]" and message in e.message


def test_output_references_through_a_chain_are_fine(tmp_path):
    d = doc({"id": "a"}, {"id": "b", "depends_on": ["a"]},
            {"id": "c", "depends_on": ["b"], "tasks": ["echo ${steps.a.outputs.k} ${HOME}"],
             "acceptance_tests": ["test ${steps.b.outputs.x} = 1"]})
    assert parse(d, tmp_path).steps[2].tasks == ("echo ${steps.a.outputs.k} ${HOME}",)


@pytest.mark.parametrize("groups, where, message", [
    ([{"id": "g", "steps": ["a", "nope"]}], "step_groups[0].steps[1]", "unknown step 'nope'"),
    ([{"id": "g", "steps": ["a"]}, {"id": "h", "steps": ["b", "a"]}], "step_groups[1].steps[1]",
     "step 'a' is already in group 'g'"),
    ([{"id": "g", "steps": ["a"]}, {"id": "g", "steps": ["b"]}], "step_groups[1].id",
     "duplicate group id 'g'"),
    ([{"id": "g", "steps": ["b", "a"], "execute": "sequential"}], "step_groups[0].steps",
     "contradicts depends_on"),
    ([{"id": "g", "steps": ["a"], "max_workers": 0}], "step_groups[0].max_workers",
     "must be at least 1"),
])
def test_step_groups(tmp_path, groups, where, message):
    d = doc({"id": "a"}, {"id": "b", "depends_on": ["a"]}, step_groups=groups)
    e = rejected(d, tmp_path)
    assert e.where == where and message in e.message, str(e)


@pytest.mark.parametrize("workers", [0, -3, "${env.W}"])
def test_max_workers_at_least_one(tmp_path, workers):
    e = rejected(doc(execution={"max_workers": workers}), tmp_path, environ={"W": "0"})
    assert (e.where, e.message) == ("execution.max_workers", "max-workers must be at least 1")


def test_fail_fast_contradicting_on_failure(tmp_path):
    e = rejected(doc(execution={"fail_fast": True, "on_failure": "continue"}), tmp_path)
    assert e.where == "execution.fail_fast"
    ws = parse(doc(execution={"fail_fast": True, "on_failure": "fail_all"}), tmp_path)
    assert ws.execution.on_failure is OnFailure.FAIL_ALL


def test_write_write_scope_conflict(tmp_path):
    d = doc({"id": "a", "files_scope": ["src/*.py"]}, {"id": "b", "files_scope": ["src/util.py"]})
    e = rejected(d, tmp_path)
    assert e.where == "steps[1].files_scope"
    assert "'a'" in e.message and "'b'" in e.message and "both write" in e.message
    assert "src/*.py" in e.message and "src/util.py" in e.message
    assert "--on-conflict serialize" in e.hint and "depends_on" in e.hint


def test_write_read_scope_conflict(tmp_path):
    d = doc({"id": "a", "files_scope": {"reads": ["src/util.py"]}},
            {"id": "b", "files_scope": {"writes": ["src/*.py"]}})
    e = rejected(d, tmp_path)
    assert "'b' writes 'src/*.py'" in e.message and "'a' reads 'src/util.py'" in e.message


@pytest.mark.parametrize("d", [
    doc({"id": "a", "files_scope": ["src/*.py"]},
        {"id": "m", "depends_on": ["a"]},
        {"id": "b", "depends_on": ["m"], "files_scope": ["src/util.py"]}),
    doc({"id": "a", "files_scope": ["src/*.py"]}, {"id": "b", "files_scope": ["src/util.py"]},
        step_groups=[{"id": "g", "steps": ["a", "b"], "execute": "sequential"}]),
    doc({"id": "a", "files_scope": ["src/*.py"]}, {"id": "b", "files_scope": ["src/util.py"]},
        execution={"parallel": False}),
    doc({"id": "a", "files_scope": ["docs/*.md"]}, {"id": "b", "files_scope": ["src/*.py"]}),
])
def test_no_scope_conflict(tmp_path, d):
    parse(d, tmp_path)


def test_serialize_accepts_conflicts(tmp_path):
    d = doc({"id": "a", "files_scope": ["x"]}, {"id": "b", "files_scope": ["x"]})
    assert parse(d, tmp_path, on_conflict="serialize").step_ids == ("a", "b")
    with pytest.raises(ValidationError, match="on-conflict"):
        parse(d, tmp_path, on_conflict="maybe")


@pytest.mark.parametrize("cwd, message", [
    ("../elsewhere", "leads outside the project"),
    ("a/../../x", "leads outside the project"),
    ("/etc", "is an absolute path"),
    ("link/inside", "outside the project (through a symlink)"),
    ("bad\u0000dir", "NUL"),
])
def test_cwd_must_stay_inside_the_project(tmp_path, cwd, message):
    root = tmp_path / "proj"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    e = rejected(doc({"id": "a", "cwd": cwd}), root)
    assert e.where == "steps[0].cwd" and message in e.message, str(e)


def test_cwd_inside_the_project_is_fine(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    ws = parse(doc({"id": "a", "cwd": "a/../alias"}, {"id": "b", "cwd": "not/yet/there"}), tmp_path)
    assert [s.cwd for s in ws.steps] == ["alias", "not/yet/there"]


@pytest.mark.parametrize("scope, where, message", [
    (["/etc/passwd"], "steps[0].files_scope[0]", "absolute path"),
    ({"reads": ["ok", "../secret"]}, "steps[0].files_scope.reads[1]", "contains '..'"),
    (["src/../../x"], "steps[0].files_scope[0]", "contains '..'"),
])
def test_scope_globs_must_be_relative(tmp_path, scope, where, message):
    e = rejected(doc({"id": "a", "files_scope": scope}), tmp_path)
    assert e.where == where and message in e.message


# --- files and ids ---------------------------------------------------------------------------------

@pytest.fixture
def wsdir(tmp_path):
    d = tmp_path / "workstreams"
    d.mkdir()
    for name in ("alpha", "beta"):
        (d / f"{name}.json").write_text(json.dumps(doc(id=name)))
    return d


def test_load_by_id(wsdir, tmp_path):
    ws = load_by_id("alpha", wsdir, project_root=tmp_path, environ={})
    assert ws.id == "alpha" and ws.source == str(wsdir / "alpha.json")


@pytest.mark.parametrize("ws_id", ["../../etc/passwd", "a/b", "", "UPPER", "x" * 200, ".hidden"])
def test_load_by_id_refuses_ids_that_are_paths(wsdir, tmp_path, ws_id):
    with pytest.raises(ValidationError, match="invalid workstream id"):
        load_by_id(ws_id, wsdir, project_root=tmp_path)


def test_load_by_id_lists_what_exists(wsdir, tmp_path):
    with pytest.raises(ValidationError) as e:
        load_by_id("alpah", wsdir, project_root=tmp_path)
    assert "no workstream file" in e.value.message and "(available: alpha, beta)" in e.value.message
    assert e.value.hint == "did you mean 'alpha'?"


def test_load_by_id_checks_the_id_inside(wsdir, tmp_path):
    (wsdir / "gamma.json").write_text(json.dumps(doc(id="other")))
    with pytest.raises(ValidationError, match="file is named gamma.json"):
        load_by_id("gamma", wsdir, project_root=tmp_path)


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_load_workstream_file_problems(tmp_path, content, message):
    path = tmp_path / "x.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValidationError, match=message) as e:
        load_workstream(path, project_root=tmp_path)
    assert e.value.path == str(path)


def test_load_workstream_accepts_a_bom_and_reports_directories(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(doc()).encode())
    assert load_workstream(path, project_root=tmp_path, environ={}).id == "ws"
    with pytest.raises(ValidationError, match="directory"):
        load_workstream(tmp_path, project_root=tmp_path)


def test_a_bad_byte_after_a_bom_is_named_at_its_offset_in_the_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_bytes(b'\xef\xbb\xbf{"id": "x\xff"}')
    with pytest.raises(ValidationError, match=r"byte 0xff at offset 12\)"):
        load_workstream(path, project_root=tmp_path)


# --- schemas ---------------------------------------------------------------------------------------

def test_schema_is_package_data_and_documents_every_property():
    schema = load_schema("workstream")
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"] and schema["title"]
    missing = []

    def walk(node, where):
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                if not (isinstance(sub, dict) and sub.get("description")):
                    missing.append(f"{where}.{name}")
            for key, sub in node.items():
                walk(sub, f"{where}.{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{where}[{i}]")
    walk(schema, "")
    assert missing == []
    assert load_schema("workstream") is not load_schema("workstream")   # callers get a copy


def test_published_schema_accepts_env_expressions_for_editors():
    v = jsonschema.Draft202012Validator(load_schema("workstream"))
    assert v.is_valid(doc(execution={"max_workers": "${env.W:-4}", "parallel": "${env.CI == 'x'}"}))
    assert not v.is_valid(doc(execution={"max_workers": "four"}))


def test_results_summary_schema_loads():
    path = Path(loader.__file__).parent / "schemas" / "results_summary.schema.json"
    if not path.exists():
        pytest.skip("results_summary.schema.json is not written yet")
    assert isinstance(load_schema("results_summary"), dict)
    with pytest.raises(ValueError):
        load_schema("../secrets")


def test_a_big_workstream_loads(tmp_path):
    n = 20_000
    steps = [{"id": f"s{i}", "tasks": [f"echo {i}"],
              "depends_on": [f"s{j}" for j in range(max(0, i - 3), i)],
              **({"files_scope": [f"out/{i}.txt"]} if i % 50 == 0 else {})} for i in range(n)]
    ws = parse(doc(*steps), tmp_path)
    assert len(ws.steps) == n and ws.steps[-1].depends_on == (f"s{n - 4}", f"s{n - 3}", f"s{n - 2}")


# --- nothing but ValidationError, whatever the input -----------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12) | st.sampled_from(["a", "b", "shell", "python", "auto", "src/*.py",
                                             "..", "/abs", "${env.X}", "${steps.a.outputs.k}"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["id", "steps", "tasks", "depends_on", "tool", "files_scope",
                                       "reads", "writes", "execution", "max_workers", "cwd", "x"])
                      | st.text(max_size=6), children, max_size=4),
    max_leaves=20)

BASE = doc({"id": "a", "tasks": ["echo ${steps.b.outputs.k}"], "depends_on": ["b"],
            "files_scope": {"reads": ["src/*.py"], "writes": ["out/"]}, "cwd": "sub"},
           {"id": "b", "tool": "t", "tasks": ["x"], "files_scope": ["src/util.py"]},
           {"id": "c", "tool": "python", "callable": "m:f", "args": [1], "kwargs": {"k": 2}},
           tools={"t": {"command": ["t", "{task}"], "env": {"A": "1"}}},
           step_groups=[{"id": "g", "steps": ["a", "c"], "execute": "sequential"}],
           execution={"max_workers": "${env.X:-2}", "circuit_breaker": {"failure_threshold": 2},
                      "on_failure": "continue", "timeout_per_step": 5})


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_documents(draw):
    d = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(d) if p]
        path = draw(st.sampled_from(paths))
        parent = d
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
        else:
            parent.append(draw(json_values))
    return d


def _only_validation_errors(text: str, root: Path) -> None:
    try:
        ws = parse_workstream(text, SRC, project_root=root, environ={"X": "3"})
    except ValidationError as e:
        assert str(e) and e.message
        assert isinstance(e, OrchestratorError)
    else:
        assert isinstance(ws, Workstream)


@pytest.mark.timeout(60)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(d=st.one_of(mutated_documents(), json_values))
def test_random_documents_raise_only_validation_errors(tmp_path, d):
    _only_validation_errors(json.dumps(d), tmp_path)


@pytest.mark.timeout(60)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 10_000), insert=st.text(max_size=3), drop=st.integers(0, 3))
def test_damaged_text_raises_only_validation_errors(tmp_path, cut, insert, drop):
    text = json.dumps(BASE, indent=1)
    cut %= len(text)
    _only_validation_errors(text[:cut] + insert + text[cut + drop:], tmp_path)


@pytest.mark.timeout(60)
@settings(max_examples=200, deadline=None)
@given(d=mutated_documents())
def test_fast_schema_check_agrees_with_jsonschema(d):
    v = loader._validators()
    assert v.fast(d) == v.slow.is_valid(d)
    for step in d.get("steps", []) if isinstance(d.get("steps"), list) else []:
        assert v.fast_step(step) == v.slow_step.is_valid(step)


def test_deep_nesting_is_a_validation_error(tmp_path):
    for depth in (500, 100_000):
        text = '{"id": "ws", "steps": [{"id": "a", "args": ' + "[" * depth + "]" * depth + "}]}"
        _only_validation_errors(text, tmp_path)


@pytest.mark.parametrize("step", [
    {"id": "a", "depends_on": ["b", "c"]}, {"id": "a", "depends_on": []},
    {"id": "a", "depends_on": ["b", 1]}, {"id": "a", "depends_on": ["B"]},
    {"id": "a", "depends_on": ["b\n"]}, {"id": "a", "depends_on": "b"},
    {"id": "a\n"}, {"id": ""}, {"id": 3}, {"tasks": ["x"]},
    {"id": "a", "tasks": ["x", 2]}, {"id": "a", "tasks": [None]}, {"id": "a", "tasks": {}},
    {"id": "a", "files_scope": [""]}, {"id": "a", "files_scope": ["x", "y"]},
    {"id": "a", "files_scope": {"reads": ["x"], "writes": [""]}}, {"id": "a", "tool": ""},
    {"id": "a", "callable": "m:f"}, {"id": "a", "callable": "m.f"}, {"id": "a", "env": {"K": 1}},
    {"id": "a", "resources": {"gpu": -1}}, {"id": "a", "unknown": 1}, [], "a",
])
def test_fast_schema_check_agrees_on_each_compiled_shape(step):
    # strings with a pattern or a minimum length, lists of them, and objects are compiled into
    # single closures (see schema._compiler); each must answer as jsonschema does
    v = loader._validators()
    assert v.fast_step(step) == v.slow_step.is_valid(step)
    d = doc(step)
    assert v.fast(d) == v.slow.is_valid(d)


@pytest.mark.parametrize("steps, message", [
    ([{"id": "a"}, {"id": "b", "depends_on": ["a", "zz"]}], "unknown step 'zz'"),
    ([{"id": "b", "depends_on": ["a"]}, {"id": "a", "depends_on": ["b"]}],
     "dependency cycle: b -> a -> b"),
    ([{"id": "a", "tasks": ["echo ${steps.b.outputs.x}"]}, {"id": "b"}],
     "does not depend on step 'b'"),
    ([{"id": "a"}, {"id": "b", "acceptance_tests": ["test ${steps.c.outputs.x}"]}],
     "unknown step 'c'"),
    ([{"id": "a", "depends_on": ["a\n"]}], "it ends with a newline"),
])
def test_checks_with_a_quick_first_look_still_report(tmp_path, steps, message):
    # unknown dependencies, references, newlines and cycles are first looked for all at once;
    # when that look finds something, the step-by-step check must still say what and where
    assert message in rejected(doc(*steps), tmp_path).message


def test_steps_listed_before_their_dependencies_load(tmp_path):
    ws = parse(doc({"id": "c", "depends_on": ["b"]}, {"id": "b", "depends_on": ["a"]}, {"id": "a"}),
               tmp_path)
    assert ws.step_ids == ("c", "b", "a")
