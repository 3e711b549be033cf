"""`${env...}` in the execution block and `${steps...}` in task strings (orchestrator.interp)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import ValidationError
from orchestrator.interp import (InterpolationError, format_json_path, interpolate_execution,
                                 substitute_task, task_references)

pytestmark = pytest.mark.timeout(30)

ENV = {"MAX_W": "8", "CI": "true", "RATE": "2.5", "EMPTY": "", "MODE": "dask", "HOST": "10.0.0.5",
       "NULLISH": "null", "WORD": "fast"}


@pytest.mark.parametrize("text, expected", [
    ("${env.MAX_W}", 8),                              # whole-string expressions are typed
    ("${env.RATE}", 2.5),
    ("${env.CI}", True),
    ("${env.NULLISH}", None),
    ("${env.WORD}", "fast"),
    ("${env.EMPTY}", ""),
    ("${env.MISSING:-4}", 4),                         # the default is typed too
    ("${env.MISSING:-}", ""),
    ("${env.MISSING:-auto}", "auto"),
    ("${env.MAX_W:-4}", 8),                           # a set variable wins over the default
    ("${env.CI == 'true'}", True),
    ("${env.CI == \"true\"}", True),
    ("${env.CI != 'true'}", False),
    ("${env.MODE == 'process'}", False),
    ("${env.MISSING == 'x'}", False),                 # unset compares unequal, never an error
    ("${env.MISSING != 'x'}", True),
    ("${ env.MAX_W }", 8),
    ("tcp://${env.HOST}:8786", "tcp://10.0.0.5:8786"),  # embedded: stays a string
    ("${env.MAX_W}${env.MAX_W}", "88"),
    ("ci=${env.CI == 'true'}", "ci=true"),
    ("plain", "plain"),
    ("$HOME and $", "$HOME and $"),
])
def test_execution_strings(text, expected):
    got = interpolate_execution({"k": text}, ENV)["k"]
    assert got == expected and type(got) is type(expected)


def test_nested_values_and_non_strings_untouched():
    src = {"max_workers": "${env.MAX_W}", "parallel": False, "rate_limit": 3,
           "circuit_breaker": {"failure_threshold": "${env.MISSING:-2}"}, "list": ["${env.CI}", 1]}
    out = interpolate_execution(src, ENV)
    assert out == {"max_workers": 8, "parallel": False, "rate_limit": 3,
                   "circuit_breaker": {"failure_threshold": 2}, "list": [True, 1]}
    assert src["max_workers"] == "${env.MAX_W}"       # the input is not modified


def test_unset_variable_names_the_place_and_suggests_a_default():
    with pytest.raises(ValidationError) as e:
        interpolate_execution({"max_workers": "${env.NOPE}"}, ENV)
    assert str(e.value) == ("execution.max_workers: environment variable NOPE is not set "
                            "(use ${env.NOPE:-default})")
    assert e.value.json_path == ("execution", "max_workers")


@pytest.mark.parametrize("text", [
    "${env.}", "${foo}", "${HOME}", "${env.X ==}", "${env.X == x}", "${env.X === 'x'}",
    "${env.1X}", "${env.X:-1", "prefix ${env.X", "${}", "${env.X + 1}", "${__import__('os')}",
])
def test_malformed_expressions_are_validation_errors(text):
    with pytest.raises(ValidationError) as e:
        interpolate_execution({"circuit_breaker": {"failure_threshold": text}}, {"X": "1"})
    assert e.value.where == "execution.circuit_breaker.failure_threshold"


def test_list_positions_in_messages():
    with pytest.raises(ValidationError) as e:
        interpolate_execution({"a": ["ok", "${bad}"]}, {})
    assert e.value.where == "execution.a[1]"


def test_format_json_path():
    assert format_json_path(("steps", 3, "depends_on", 0)) == "steps[3].depends_on[0]"
    assert format_json_path(("tools", "my tool", "command")) == 'tools["my tool"].command'
    assert format_json_path(()) == "(top level)"


OUTPUTS = {"build": {"version": "1.2", "count": 3, "flag": True},
           "a.b": {"x": "dotted"}}


def sub(text: str) -> str:
    return substitute_task(text, outputs=OUTPUTS, ws_id="ws1", run_id="20261125_143022_abc12345",
                           run_dir="/p/.worktrees/ws1/runs/r")


@pytest.mark.parametrize("text, expected", [
    ("echo ${steps.build.outputs.version}", "echo 1.2"),
    ("n=${steps.build.outputs.count} f=${steps.build.outputs.flag}", "n=3 f=true"),
    ("${steps.a.b.outputs.x}", "dotted"),
    ("${workstream.id}/${run.id} in ${run.dir}", "ws1/20261125_143022_abc12345 in /p/.worktrees/ws1/runs/r"),
    ("echo ${HOME} $HOME ${PATH:-x} ${steps}", "echo ${HOME} $HOME ${PATH:-x} ${steps}"),
    ("no references", "no references"),
])
def test_substitute_task(text, expected):
    assert sub(text) == expected


def test_unknown_output_key_is_an_interpolation_error():
    with pytest.raises(InterpolationError) as e:
        sub("echo ${steps.build.outputs.nope}")
    assert "step build has no output 'nope'" in str(e.value)
    assert "version" in str(e.value)                  # names what exists
    assert isinstance(e.value, ValueError)


def test_step_without_outputs_is_an_interpolation_error():
    with pytest.raises(InterpolationError, match="step other has no outputs"):
        sub("${steps.other.outputs.k}")


def test_task_references():
    text = "cp ${steps.a.outputs.path} ${steps.b-2.outputs.k_1} ${workstream.id} ${HOME}"
    assert task_references(text) == [("a", "path"), ("b-2", "k_1")]
    assert task_references("nothing here") == []


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="${}env.:-='\"!XAB_ 1", max_size=24))
@pytest.mark.timeout(60)
def test_any_execution_string_gives_a_value_or_a_validation_error(text):
    try:
        interpolate_execution({"k": [text]}, {"X": "1", "A": ""})
    except ValidationError as e:
        assert e.where == "execution.k[0]"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="${}steps.outputs.abk-_ HOME", max_size=40))
@pytest.mark.timeout(60)
def test_any_task_string_substitutes_or_raises_an_interpolation_error(text):
    try:
        out = substitute_task(text, outputs={"a": {"k": "v"}}, ws_id="w", run_id="r", run_dir="d")
    except InterpolationError:
        return
    if "${" not in text:
        assert out == text
