"""Component tests: the real dispatcher, the real process pool and real subprocesses.

Every run goes through `run_workstream` (load -> Dispatcher.run) in a temporary project. Nothing here
measures speed: parallelism and limits are checked from the recorded start/end offsets (order and
overlap), and every wait on something a step does is a bounded `wait_until` on a file or a process.
Steps that could leak processes put the test's `marker` in their argv, and the `marker` fixture fails
the test if any such process is still alive afterwards.
"""
from __future__ import annotations

import io
import json
import os
import re
import shlex
import stat
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import psutil
import pytest

from conftest import steps_by_id, stray_processes, wait_until

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
PY = shlex.quote(sys.executable)
RUN_ID_RE = re.compile(r"^\d{8}_\d{6}_[0-9a-f]{8}$")


# --- helpers ----------------------------------------------------------------------------------------

def sleeper(seconds: float, marker: str, *tags: str) -> str:
    """A shell task whose sleeping process carries the marker in its own argv (so leaks are found)."""
    extra = " ".join(shlex.quote(t) for t in tags)
    return f"{PY} -c 'import time; time.sleep({seconds})' {marker} {extra}".strip()


def interval(step: dict) -> tuple[float, float]:
    return step["start_offset_s"], step["end_offset_s"]


def overlaps(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals covering one instant (an end at t comes before a start at t)."""
    points = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    best = cur = 0
    for _, d in points:
        cur += d
        best = max(best, cur)
    return best


def results_schema() -> dict:
    return json.loads((REPO / "orchestrator" / "schemas" / "results_summary.schema.json").read_text())


def sh_steps(n: int, task: str, prefix: str = "s", **extra) -> list[dict]:
    return [{"id": f"{prefix}{i}", "tasks": [task], **extra} for i in range(n)]


# --- parallelism and limits ----------------------------------------------------------------------------

def test_independent_steps_run_at_the_same_time_and_the_summary_validates(make_workstream, run_workstream):
    path = make_workstream(sh_steps(3, "sleep 0.5"), execution={"max_workers": 3})
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 0
    assert summary["status"] == "succeeded"
    steps = summary["steps"]
    assert [s["status"] for s in steps] == ["succeeded"] * 3
    for i in range(3):
        for j in range(i + 1, 3):
            assert overlaps(interval(steps[i]), interval(steps[j])), (steps[i]["id"], steps[j]["id"])
    assert summary["summary"]["max_concurrency"] == 3
    assert summary["summary"]["succeeded"] == 3 and summary["summary"]["total"] == 3
    jsonschema.Draft202012Validator(results_schema()).validate(summary)


def test_max_workers_is_never_exceeded(make_workstream, run_workstream):
    path = make_workstream(sh_steps(8, "sleep 0.2"), execution={"max_workers": 2})
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 0
    spans = [interval(s) for s in summary["steps"]]
    assert most_at_once(spans) == 2
    assert summary["summary"]["max_concurrency"] == 2


def test_a_step_group_cap_holds_within_the_group(make_workstream, run_workstream):
    steps = sh_steps(3, "sleep 0.3", prefix="g") + sh_steps(2, "sleep 0.3", prefix="o")
    path = make_workstream(steps, execution={"max_workers": 4},
                           step_groups=[{"id": "grp", "steps": ["g0", "g1", "g2"], "max_workers": 1}])
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 0
    by = steps_by_id(summary)
    group = [interval(by[f"g{i}"]) for i in range(3)]
    assert most_at_once(group) == 1
    # the cap is the group's, not the run's: the other steps did run alongside the group
    assert most_at_once([interval(s) for s in summary["steps"]]) >= 2


def test_parallel_false_runs_one_step_at_a_time_in_file_order(make_workstream, run_workstream):
    path = make_workstream(sh_steps(4, "sleep 0.1"), execution={"parallel": False, "max_workers": 4})
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 0
    steps = summary["steps"]
    assert most_at_once([interval(s) for s in steps]) == 1
    started = sorted(steps, key=lambda s: s["start_offset_s"])
    assert [s["id"] for s in started] == ["s0", "s1", "s2", "s3"]
    assert summary["execution"]["parallel"] is False


def test_a_sequential_group_runs_in_its_listed_order(make_workstream, run_workstream):
    steps = sh_steps(3, "sleep 0.2", prefix="q")
    path = make_workstream(steps, execution={"max_workers": 4},
                           step_groups=[{"id": "seq", "steps": ["q2", "q0", "q1"], "execute": "sequential"}])
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 0
    by = steps_by_id(summary)
    order = ["q2", "q0", "q1"]
    for prev, nxt in zip(order, order[1:]):
        assert by[nxt]["start_offset_s"] >= by[prev]["end_offset_s"], (prev, nxt)


def test_a_ready_step_starts_without_waiting_for_a_level_barrier(make_workstream, run_workstream):
    path = make_workstream([
        {"id": "a", "tasks": ["sleep 0.2"]},
        {"id": "b", "tasks": ["sleep 2"]},
        {"id": "c", "tasks": ["sleep 0.2"], "depends_on": ["a"]},
    ], execution={"max_workers": 3})
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 0
    by = steps_by_id(summary)
    assert by["c"]["start_offset_s"] >= by["a"]["end_offset_s"]
    assert by["c"]["start_offset_s"] < by["b"]["end_offset_s"]


# --- failure policies -------------------------------------------------------------------------------

def test_continue_blocks_dependents_and_lets_the_independent_branch_finish(make_workstream, run_workstream):
    path = make_workstream([
        {"id": "a", "tasks": ["echo broken >&2; exit 3"]},
        {"id": "b", "tasks": ["echo never"], "depends_on": ["a"]},
        {"id": "c", "tasks": ["echo never"], "depends_on": ["b"]},
        {"id": "d", "tasks": ["sleep 0.2"]},
    ], execution={"max_workers": 2, "on_failure": "continue"})
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 1
    assert summary["status"] == "failed"
    by = steps_by_id(summary)
    assert by["a"]["status"] == "failed"
    assert by["a"]["exit_code"] == 3
    assert "exit code 3" in by["a"]["error"]
    assert by["b"]["status"] == "blocked" and by["b"]["blocked_by"] == ["a"]
    assert by["c"]["status"] == "blocked" and by["c"]["blocked_by"] == ["b"]
    assert by["d"]["status"] == "succeeded"
    assert summary["summary"]["blocked"] == 2 and summary["summary"]["failed"] == 1


def test_a_blocked_step_names_every_dependency_that_failed(make_workstream, run_workstream):
    """c is blocked by whichever of a and b fails first; the other's failure is added to its
    blocked_by afterwards, in the summary and the final state alike."""
    path = make_workstream([
        {"id": "a", "tasks": ["exit 3"]},
        {"id": "b", "tasks": ["exit 4"]},
        {"id": "c", "tasks": ["echo never"], "depends_on": ["a", "b"]},
    ], execution={"max_workers": 2, "on_failure": "continue"})
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 1
    by = steps_by_id(summary)
    assert by["a"]["status"] == by["b"]["status"] == "failed"
    assert by["c"]["status"] == "blocked" and sorted(by["c"]["blocked_by"]) == ["a", "b"]
    state = json.loads((Path(outcome.run_dir) / "state.json").read_text())
    assert sorted(state["steps"]["c"]["blocked_by"]) == ["a", "b"]


def test_fail_all_cancels_the_running_sibling_and_kills_its_tree(make_workstream, run_workstream, marker, project):
    path = make_workstream([
        {"id": "long", "tasks": [f"touch long.started; {sleeper(30, marker)}"]},
        {"id": "a", "tasks": ["while [ ! -f long.started ]; do sleep 0.02; done; exit 1"], "timeout": 20},
        {"id": "later", "tasks": ["echo never"]},
        {"id": "after-long", "tasks": ["echo never"], "depends_on": ["long"]},
    ], execution={"max_workers": 2, "on_failure": "fail_all"})
    outcome, summary = run_workstream(path, grace=2.0)

    assert outcome.exit_code == 1
    by = steps_by_id(summary)
    assert by["a"]["status"] == "failed"
    assert by["long"]["status"] == "cancelled"
    assert by["later"]["status"] == "skipped"
    assert by["after-long"]["status"] == "skipped"
    assert wait_until(lambda: not stray_processes(marker), timeout=5)


def test_complete_running_lets_the_running_step_finish_and_starts_nothing_more(make_workstream, run_workstream):
    # b ends only once the orchestrator has recorded a's failure, so the policy is in force while b
    # still runs (and the slot b frees cannot go to c)
    a_recorded = 'grep -q "STEP END a " "${run.dir}/../../orchestrator.log"'
    path = make_workstream([
        {"id": "b", "tasks": [f"touch b.started; until {a_recorded}; do sleep 0.02; done; sleep 0.1"],
         "timeout": 20},
        {"id": "a", "tasks": ["while [ ! -f b.started ]; do sleep 0.02; done; exit 1"], "timeout": 20},
        {"id": "c", "tasks": ["echo never"]},
    ], execution={"max_workers": 2, "on_failure": "complete_running"})
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 1
    by = steps_by_id(summary)
    assert by["a"]["status"] == "failed"
    assert by["b"]["status"] == "succeeded"
    assert by["b"]["end_offset_s"] >= by["a"]["end_offset_s"]
    assert by["c"]["status"] == "skipped"
    assert by["c"]["start_offset_s"] is None


# --- timeouts ---------------------------------------------------------------------------------------

def test_a_step_past_its_timeout_is_timed_out(make_workstream, run_workstream, marker):
    path = make_workstream([
        {"id": "slow", "tasks": [sleeper(30, marker)], "timeout": 1},
        {"id": "quick", "tasks": ["true"]},
    ])
    outcome, summary = run_workstream(path, grace=1.0)

    assert outcome.exit_code == 1
    by = steps_by_id(summary)
    assert by["slow"]["status"] == "timed_out"
    assert "timeout" in by["slow"]["error"] and "1s" in by["slow"]["error"]
    assert by["quick"]["status"] == "succeeded"
    assert summary["summary"]["timed_out"] == 1


@pytest.mark.parametrize("ending", ["wait", "exit", "exit-quietly"])
def test_no_descendant_outlives_its_step(make_workstream, run_workstream, marker, project, ending):
    """Background and `setsid` grandchildren are ended with the step: at its timeout (wait), or when
    the step's own shell exits while they still hold its output (exit) or not (exit-quietly)."""
    bg = f"{PY} -c 'import sys, time; open(sys.argv[1], \"w\").close(); time.sleep(30)' bg.started {marker}"
    ss = f"{PY} -c 'import sys, time; open(sys.argv[1], \"w\").close(); time.sleep(31)' ss.started {marker}"
    wait_both = "while [ ! -f bg.started ] || [ ! -f ss.started ]; do sleep 0.02; done"
    if ending == "wait":
        task, timeout, expected = f"{bg} & setsid {ss} & {wait_both}; wait", 2, "timed_out"
    elif ending == "exit":
        task, timeout, expected = f"{bg} & setsid {ss} & {wait_both}; echo leader done", 20, "succeeded"
    else:
        task = f"{bg} >/dev/null 2>&1 & setsid {ss} >/dev/null 2>&1 & {wait_both}; echo leader done"
        timeout, expected = 20, "succeeded"
    path = make_workstream([{"id": "spawner", "tasks": [task], "timeout": timeout}])
    outcome, summary = run_workstream(path, grace=1.0)

    assert steps_by_id(summary)["spawner"]["status"] == expected, steps_by_id(summary)["spawner"]["error"]
    assert (project / "bg.started").exists() and (project / "ss.started").exists()
    assert wait_until(lambda: not stray_processes(marker), timeout=5), \
        [p.info["cmdline"] for p in stray_processes(marker)]


def test_run_timeout_cancels_the_running_step_and_skips_the_rest(make_workstream, run_workstream, marker):
    path = make_workstream([
        {"id": "long", "tasks": [sleeper(30, marker)]},
        {"id": "p1", "tasks": ["true"]},
        {"id": "p2", "tasks": ["true"], "depends_on": ["long"]},
    ], execution={"max_workers": 1, "run_timeout": 1})
    outcome, summary = run_workstream(path, grace=1.0)

    assert outcome.exit_code == 1
    assert summary["status"] != "succeeded"
    by = steps_by_id(summary)
    assert by["long"]["status"] == "cancelled"
    assert by["p1"]["status"] == "skipped" and by["p2"]["status"] == "skipped"
    assert "run timeout" in by["p1"]["error"]
    assert wait_until(lambda: not stray_processes(marker), timeout=5)


# --- rate limit and retries -------------------------------------------------------------------------

def test_rate_limit_delay_spaces_the_starts(make_workstream, run_workstream):
    # `warm` has the pool's first worker started before the spaced steps, so no process start-up
    # sits between one step's start and the next (each quick step finds that worker idle again)
    steps = [{"id": "warm", "tasks": ["true"]}] + sh_steps(4, "true", depends_on=["warm"])
    path = make_workstream(steps, execution={"max_workers": 4, "rate_limit_delay": 0.3})
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 0
    starts = sorted(s["start_offset_s"] for s in summary["steps"])
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert all(g >= 0.25 for g in gaps), gaps


def test_a_failed_attempt_is_retried(make_workstream, run_workstream):
    task = ('echo "attempt $ORCHESTRATOR_ATTEMPT running"; '
            'if [ "$ORCHESTRATOR_ATTEMPT" = 1 ]; then echo first-try-fails; exit 1; fi; echo second-try-works')
    path = make_workstream([{"id": "flaky", "tasks": [task], "retries": 2, "retry_delay": 0.1}])
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 0
    step = steps_by_id(summary)["flaky"]
    assert step["status"] == "succeeded"
    assert step["attempts"] == 2
    log = (Path(outcome.run_dir) / "steps" / "flaky.log").read_text()
    assert "first-try-fails" in log and "second-try-works" in log
    assert "attempt 1 running" in log and "attempt 2 running" in log
    assert log.index("first-try-fails") < log.index("second-try-works")


# --- data between steps -------------------------------------------------------------------------------

def test_outputs_flow_into_dependent_tasks(make_workstream, run_workstream, project):
    path = make_workstream([
        {"id": "make", "tasks": ['echo "k=v" >> "$ORCHESTRATOR_OUTPUT"',
                                 'echo "other=two words" >> "$ORCHESTRATOR_OUTPUT"']},
        {"id": "use", "depends_on": ["make"],
         "tasks": ["echo '${steps.make.outputs.k}' > got.txt",
                   "echo '${steps.make.outputs.other}' >> got.txt"]},
    ])
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 0, steps_by_id(summary)
    assert (project / "got.txt").read_text().splitlines() == ["v", "two words"]
    assert steps_by_id(summary)["make"]["outputs"] == {"k": "v", "other": "two words"}


CALC = '''
import os, time

def start(n):
    return {"n": n}

def square(inputs):
    return {"sq": inputs["src"]["n"] ** 2}

def double(inputs, factor=1):
    return {"dbl": inputs["src"]["n"] * factor}

def join(inputs):
    return {"total": inputs["left"]["sq"] + inputs["right"]["dbl"], "seen": sorted(inputs)}

def boom():
    raise ValueError("bad input 42")

def spin():
    with open("spin.pid", "w") as f:
        f.write(str(os.getpid()))
    while True:
        pass

def value():
    return 7
'''


@pytest.fixture
def calc_module(project):
    pkg = project / "calcmods"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "calc.py").write_text(CALC)
    return "calcmods.calc"


def test_python_steps_pass_data_through_a_diamond(make_workstream, run_workstream, calc_module):
    m = calc_module
    path = make_workstream([
        {"id": "src", "tool": "python", "callable": f"{m}:start", "args": [3]},
        {"id": "left", "tool": "python", "callable": f"{m}:square", "depends_on": ["src"]},
        {"id": "right", "tool": "python", "callable": f"{m}:double", "kwargs": {"factor": 2},
         "depends_on": ["src"]},
        {"id": "join", "tool": "python", "callable": f"{m}:join", "depends_on": ["left", "right"]},
        {"id": "show", "depends_on": ["join"],
         "tasks": ['test "${steps.join.outputs.total}" = 15']},
    ], execution={"max_workers": 2})
    outcome, summary = run_workstream(path)

    by = steps_by_id(summary)
    assert outcome.exit_code == 0, {k: v["error"] for k, v in by.items()}
    assert by["left"]["outputs"] == {"sq": 9}
    assert by["right"]["outputs"] == {"dbl": 6}
    assert by["join"]["outputs"] == {"total": 15, "seen": ["left", "right"]}
    assert by["show"]["status"] == "succeeded"
    assert by["join"]["start_offset_s"] >= max(by["left"]["end_offset_s"], by["right"]["end_offset_s"])


def test_a_python_step_that_raises_fails_with_the_exception(make_workstream, run_workstream, calc_module):
    path = make_workstream([
        {"id": "bad", "tool": "python", "callable": f"{calc_module}:boom"},
        {"id": "good", "tool": "python", "callable": f"{calc_module}:value"},
    ])
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 1
    by = steps_by_id(summary)
    assert by["bad"]["status"] == "failed"
    assert "ValueError" in by["bad"]["error"] and "bad input 42" in by["bad"]["error"]
    assert "ValueError" in (Path(outcome.run_dir) / "steps" / "bad.log").read_text()
    assert by["good"]["status"] == "succeeded"
    assert by["good"]["outputs"] == {"value": 7}


def test_a_python_step_that_never_returns_times_out_alone(make_workstream, run_workstream, calc_module, project):
    path = make_workstream([
        {"id": "spin", "tool": "python", "callable": f"{calc_module}:spin", "timeout": 1},
        {"id": "fine", "tool": "python", "callable": f"{calc_module}:value"},
        {"id": "after", "tasks": ["echo after"], "depends_on": ["fine"]},
    ], execution={"max_workers": 2})
    outcome, summary = run_workstream(path, grace=1.0)

    assert outcome.exit_code == 1
    by = steps_by_id(summary)
    assert by["spin"]["status"] == "timed_out"
    assert "timeout" in by["spin"]["error"]
    assert by["fine"]["status"] == "succeeded" and by["after"]["status"] == "succeeded"
    pid = int((project / "spin.pid").read_text())

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    assert wait_until(gone, timeout=5)


# --- named tools ------------------------------------------------------------------------------------

def test_a_named_tool_gets_the_task_as_one_argument_without_a_shell(make_workstream, run_workstream, project):
    record = ("import json, sys; print('argv', sys.argv[1]); "
              "open('argv_' + sys.argv[2] + '.json', 'w').write(json.dumps(sys.argv[1:]))")
    task = "fix  the   bug; echo $(echo injected) > hacked.txt `touch hacked2.txt`"
    path = make_workstream([
        {"id": "echo-step", "tool": "echoer", "tasks": [task]},
        {"id": "argv-step", "tool": "argv", "tasks": [task, "second task"],
         "files_scope": ["one.txt", "dir/two.txt"]},
    ], tools={
        "echoer": {"command": ["sh", "-c", 'printf "%s\\n" "TOOL:$0" > "out_$1.txt"', "{task}", "{step_id}"]},
        "argv": {"command": [sys.executable, "-c", record, "{task}", "{step_id}", "{ws_id}", "{files}"]},
    })
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 0, {s["id"]: s["error"] for s in summary["steps"]}
    assert (project / "out_echo-step.txt").read_text() == f"TOOL:{task}\n"
    # the last task wins the file; both ran (two tasks, one argv each)
    assert json.loads((project / "argv_argv-step.json").read_text()) == [
        "second task", "argv-step", "ws-test", "one.txt", "dir/two.txt"]
    assert not (project / "hacked.txt").exists() and not (project / "hacked2.txt").exists()
    log = (Path(outcome.run_dir) / "steps" / "argv-step.log").read_text()
    assert "task 1/2" in log and "task 2/2" in log


def test_a_named_tool_passes_braces_in_the_task_verbatim(make_workstream, run_workstream, project):
    """`{task}` is the task string as written: placeholders inside the task itself are not expanded."""
    record = "import json, sys; open('argv.json', 'w').write(json.dumps(sys.argv[1:]))"
    task = 'rename {step_id} and {ws_id} in {"files": "{files}"}'
    path = make_workstream([{"id": "braces", "tool": "argv", "tasks": [task], "files_scope": ["x.txt"]}],
                           tools={"argv": {"command": [sys.executable, "-c", record, "{task}", "{step_id}"]}})
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 0, summary["steps"][0]["error"]
    assert json.loads((project / "argv.json").read_text()) == [task, "braces"]


# --- acceptance tests ---------------------------------------------------------------------------------

def test_acceptance_tests_decide_success(make_workstream, run_workstream):
    path = make_workstream([
        {"id": "good", "tasks": ["touch made.txt"], "acceptance_tests": ["test -f made.txt"]},
        {"id": "bad", "tasks": ["true"],
         "acceptance_tests": ["true", "echo nope; exit 1", "echo third"]},
    ])
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 1
    by = steps_by_id(summary)
    assert by["good"]["status"] == "succeeded"
    assert by["bad"]["status"] == "failed"
    assert "echo nope; exit 1" in by["bad"]["error"]
    assert [t["status"] for t in by["bad"]["acceptance_tests"]] == ["passed", "failed", "passed"]
    assert [t["command"] for t in by["bad"]["acceptance_tests"]] == ["true", "echo nope; exit 1", "echo third"]
    assert by["bad"]["acceptance_tests"][1]["exit_code"] == 1
    assert [t["status"] for t in by["good"]["acceptance_tests"]] == ["passed"]
    assert "nope" in (Path(outcome.run_dir) / "steps" / "bad.log").read_text()

    root = ET.parse(Path(outcome.run_dir) / "junit.xml").getroot()
    cases = list(root.iter("testcase"))
    assert len(cases) == 4
    assert int(root.get("tests")) == 4 and int(root.get("failures")) == 1
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(failed) == 1 and failed[0].get("classname") == "bad"
    assert failed[0].get("name") == "echo nope; exit 1"


# --- environment and secrets --------------------------------------------------------------------------

def test_steps_see_the_orchestrator_variables_and_their_own_env(make_workstream, run_workstream, project):
    dump = 'env | grep "^ORCHESTRATOR_\\|^MY_VAR=" | sort > "env_$ORCHESTRATOR_STEP_ID.txt"'
    path = make_workstream([
        {"id": "one", "tasks": [dump], "env": {"MY_VAR": "hello world"}},
        {"id": "two", "tasks": [dump]},
    ])
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 0
    for sid in ("one", "two"):
        env = dict(line.split("=", 1) for line in (project / f"env_{sid}.txt").read_text().splitlines())
        assert env["ORCHESTRATOR_WS_ID"] == "ws-test"
        assert env["ORCHESTRATOR_RUN_ID"] == outcome.run_id
        assert env["ORCHESTRATOR_STEP_ID"] == sid
        assert env["ORCHESTRATOR_ATTEMPT"] == "1"
        assert "ORCHESTRATOR_OUTPUT" in env
    assert dict(line.split("=", 1) for line in (project / "env_one.txt").read_text().splitlines())[
        "MY_VAR"] == "hello world"
    assert "MY_VAR" not in (project / "env_two.txt").read_text()


def test_a_secret_is_masked_in_the_log_and_never_written_under_worktrees(make_workstream, run_workstream, project):
    path = make_workstream([
        {"id": "leaky", "env": {"API_TOKEN": "supersecretvalue"},
         "tasks": ['echo "token is $API_TOKEN"', 'echo "again: $API_TOKEN" >&2; exit 1']},
    ])
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 1
    log = (Path(outcome.run_dir) / "steps" / "leaky.log").read_text()
    assert "token is ***" in log and "again: ***" in log
    leaks = [str(p) for p in (project / ".worktrees").rglob("*")
             if p.is_file() and not p.is_symlink() and b"supersecretvalue" in p.read_bytes()]
    assert leaks == []


# --- the console --------------------------------------------------------------------------------------

def test_a_steps_line_reaches_the_console_while_the_run_goes_on(project, make_workstream, run_workstream):
    """The console holds lines back for the loop's next tick, never to the run's end: a's line is
    written while b still waits for the test to open its fifo."""
    from orchestrator.console import PlainReporter
    gate = project / "gate"
    os.mkfifo(gate)
    seen = threading.Event()

    class Stream(io.StringIO):
        def write(self, text: str) -> int:
            n = super().write(text)
            if "✓ a (" in self.getvalue():
                seen.set()
            return n

    out = Stream()
    path = make_workstream([{"id": "a", "tasks": ["true"]},
                            {"id": "b", "tasks": ["cat gate"], "depends_on": ["a"]}])
    result = {}
    reporter = PlainReporter(out)
    runner = threading.Thread(target=lambda: result.update(run=run_workstream(path, reporter=reporter)))
    runner.start()

    def open_gate():   # once b reads the fifo; then b sees EOF and ends
        try:
            os.close(os.open(gate, os.O_WRONLY | os.O_NONBLOCK))
            return True
        except OSError:
            return False
    try:
        assert seen.wait(30), out.getvalue()
        assert "✓ b (" not in out.getvalue()
    finally:
        assert wait_until(open_gate, timeout=30)
        runner.join(60)
    outcome, summary = result["run"]
    assert outcome.exit_code == 0 and summary["summary"]["succeeded"] == 2
    assert "✓ b (" in out.getvalue()


# --- the run directory ----------------------------------------------------------------------------------

def test_the_run_directory_follows_the_spec(make_workstream, run_workstream, project):
    path = make_workstream([
        {"id": "a", "tasks": ["echo hello"]},
        {"id": "b", "tasks": ["echo world"], "depends_on": ["a"]},
    ])
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 0
    ws_dir = project / ".worktrees" / "ws-test"
    assert RUN_ID_RE.match(outcome.run_id)
    assert Path(outcome.run_dir) == ws_dir / "runs" / outcome.run_id
    latest = ws_dir / "latest"
    assert latest.is_symlink() and latest.resolve() == Path(outcome.run_dir).resolve()
    state = json.loads((Path(outcome.run_dir) / "state.json").read_text())
    assert state["status"] == "succeeded" and state["run_id"] == outcome.run_id
    assert state["workstream_id"] == "ws-test" and state["pid"] == os.getpid()
    assert {sid: s["status"] for sid, s in state["steps"].items()} == {"a": "succeeded", "b": "succeeded"}
    for name in ("results_summary.json", "execution_report.md", "junit.xml", "steps/a.log", "steps/b.log"):
        assert (Path(outcome.run_dir) / name).is_file(), name
    assert "hello" in (Path(outcome.run_dir) / "steps" / "a.log").read_text()

    log = (ws_dir / "orchestrator.log").read_text().splitlines()
    def index_of(prefix: str) -> int:
        return next(i for i, line in enumerate(log) if prefix in line)
    assert index_of("RUN START") < index_of("STEP START a") < index_of("STEP END a") \
        < index_of("STEP START b") < index_of("STEP END b") < index_of("RUN END")
    assert outcome.run_id in log[index_of("RUN START")]

    wrong = []
    for p in [ws_dir, *ws_dir.rglob("*")]:
        if p.is_symlink():
            continue
        mode = stat.S_IMODE(p.stat().st_mode)
        want = 0o700 if p.is_dir() else 0o600
        if mode != want:
            wrong.append(f"{p.relative_to(ws_dir)}: {oct(mode)} (want {oct(want)})")
    assert wrong == [], "\n".join(wrong)


class BackgroundRun:
    """Dispatcher.run in a thread (signal handling is skipped off the main thread), so the test can
    look at the run while it goes on. `release` creates the flag file the steps wait for."""

    def __init__(self, path: Path, project: Path, flag: str = "go.flag"):
        from orchestrator.dispatcher import Dispatcher, RunOptions
        from orchestrator.loader import load_workstream

        ws = load_workstream(path, project_root=project)
        self.dispatcher = Dispatcher(ws, RunOptions(project_root=project, worktrees=project / ".worktrees"))
        self.flag = project / flag
        self.outcome = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.outcome = self.dispatcher.run()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def __enter__(self) -> "BackgroundRun":
        self.thread.start()
        return self

    def release(self) -> None:
        self.flag.touch()

    def __exit__(self, *exc) -> None:
        self.release()
        self.thread.join(timeout=30)


WAIT_FOR_FLAG = "while [ ! -f go.flag ]; do sleep 0.02; done"


def test_step_output_reaches_the_log_while_the_step_runs(make_workstream, project):
    path = make_workstream([{"id": "talk", "timeout": 30,
                             "tasks": [f"echo first-line; {WAIT_FOR_FLAG}; echo last-line"]}])
    log = project / ".worktrees" / "ws-test" / "latest" / "steps" / "talk.log"
    with BackgroundRun(path, project) as run:
        seen = wait_until(lambda: log.exists() and "first-line" in log.read_text(), timeout=15)
        still_running = run.thread.is_alive() and not run.flag.exists()
        text_then = log.read_text() if log.exists() else ""
    assert seen, "the first line never reached the log while the step ran"
    assert still_running
    assert "last-line" not in text_then.splitlines()
    assert not run.thread.is_alive()
    assert run.error is None, run.error
    assert run.outcome.exit_code == 0
    assert "last-line" in log.read_text().splitlines()


def test_state_json_describes_running_steps(make_workstream, project):
    """SPEC §3: state.json has the run's status and pid, and per running step its start, attempt,
    and current task index and count."""
    path = make_workstream([
        {"id": "multi", "timeout": 30, "tasks": ["true", WAIT_FOR_FLAG, "true"]},
        {"id": "single", "timeout": 30, "tasks": [WAIT_FOR_FLAG]},
        {"id": "later", "tasks": ["true"], "depends_on": ["single"]},
    ])
    state_path = project / ".worktrees" / "ws-test" / "latest" / "state.json"

    def state() -> dict:
        try:
            return json.loads(state_path.read_text())
        except (OSError, ValueError):
            return {}

    with BackgroundRun(path, project) as run:
        def ready() -> dict | None:
            st = state()
            steps = st.get("steps", {})
            multi, single = steps.get("multi", {}), steps.get("single", {})
            if (multi.get("status") == "running" and multi.get("task_index") == 2
                    and single.get("status") == "running" and single.get("started_at")):
                return st
            return None
        live = wait_until(ready, timeout=15)
        last = state()
    assert live, last
    assert live["status"] == "running" and live["pid"] == os.getpid()
    assert live["workstream_id"] == "ws-test" and RUN_ID_RE.match(live["run_id"])
    assert live["started_at"] and live["updated_at"]
    multi, single, later = (live["steps"][k] for k in ("multi", "single", "later"))
    assert multi["task_count"] == 3 and multi["attempt"] == 1 and multi["started_at"]
    assert later["status"] == "pending" and later["started_at"] is None
    assert single["attempt"] == 1
    assert (single["task_index"], single["task_count"]) == (1, 1)
    assert run.error is None and run.outcome.exit_code == 0


def test_a_huge_log_is_capped_keeping_head_and_tail(make_workstream, run_workstream):
    script = ("print('FIRST-LINE'); [print('x' * 99) for _ in range(10000)]; print('LAST-LINE')")
    path = make_workstream([{"id": "noisy", "tasks": [f"{PY} -c {shlex.quote(script)}"]}],
                           execution={"max_log_bytes": 10000})
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 0
    log_path = Path(outcome.run_dir) / "steps" / "noisy.log"
    size = log_path.stat().st_size
    assert 10000 <= size <= 10000 + 1000, size
    text = log_path.read_text()
    assert "FIRST-LINE" in text and "LAST-LINE" in text
    cut = re.search(r"(\d+) bytes cut", text)
    assert cut, text[4000:6000]
    assert int(cut.group(1)) > 900_000


def test_a_short_rate_limit_never_stalls_the_run(make_workstream, run_workstream):
    """Regression: a token that became available between handing out steps and computing the next
    wakeup left the loop asleep for ever (every run with rate_limit_delay 0.02 hung)."""
    path = make_workstream([{"id": f"s{i}", "tasks": ["true"]} for i in range(10)],
                           execution={"max_workers": 4, "rate_limit_delay": 0.02})
    outcome, summary = run_workstream(path)
    assert outcome.exit_code == 0
    assert summary["summary"]["succeeded"] == 10
