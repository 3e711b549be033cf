"""CLI tests: `click.testing.CliRunner` on `orchestrator.cli.cli` in a temporary project, plus real
subprocesses of every entry point (`python -m orchestrator`, the three scripts) for exit codes, the
lock and interrupts. Waits are bounded polls on state.json or processes, never sleeps.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import steps_by_id, stray_processes, wait_until
from orchestrator.cli import cli

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
PY = shlex.quote(sys.executable)


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args))
    # a bad input must end as a clean exit, never as an exception escaping the command
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


def latest_summary(project: Path, ws_id: str = "ws-test") -> dict:
    return json.loads((project / ".worktrees" / ws_id / "latest" / "results_summary.json").read_text())


def sleeper(seconds: float, marker: str) -> str:
    return f"{PY} -c 'import time; time.sleep({seconds})' {marker}"


def read_state(project: Path, ws_id: str) -> dict:
    try:
        return json.loads((project / ".worktrees" / ws_id / "latest" / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def module_env() -> dict[str, str]:
    """Environment for `python -m orchestrator` from a project dir (the package is not installed)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env.pop("ORCHESTRATOR_WORKTREES_DIR", None)
    return env


def script_env() -> dict[str, str]:
    """Environment for the scripts: they must find the package themselves."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("ORCHESTRATOR_WORKTREES_DIR", None)
    return env


# --- validate ---------------------------------------------------------------------------------------

def test_validate_accepts_a_good_file(make_workstream):
    path = make_workstream([{"id": "a", "tasks": ["true"]}, {"id": "b", "tasks": ["true"], "depends_on": ["a"]}])
    result = invoke("validate", str(path))
    assert result.exit_code == 0, result.output
    assert "ws-test" in result.output


CYCLE = re.compile(r"dependency cycle: (a -> c -> b -> a|c -> b -> a -> c|b -> a -> c -> b"
                   r"|a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c)")

# kind -> (file content, texts the one error message must hold: the place and the problem)
BAD_INPUTS = {
    "malformed-json": ('{"id": "ws-test", "steps": [\n  {"id": "a", "tasks": ["true"]},\n]}',
                       ["ws-test.json:3:", "malformed JSON"]),
    "schema-violation": ({"id": "ws-test", "steps": [{"id": "a", "tasks": "not a list"}]},
                         ["steps[0].tasks"]),
    "duplicate-ids": ({"id": "ws-test", "steps": [{"id": "a"}, {"id": "b"}, {"id": "a"}]},
                      ["steps[2].id", "'a'"]),
    "unknown-dependency": ({"id": "ws-test", "steps": [{"id": "a", "depends_on": ["nope"]}]},
                           ["steps[0].depends_on[0]", "nope"]),
    "cycle": ({"id": "ws-test", "steps": [{"id": "a", "depends_on": ["c"]}, {"id": "b", "depends_on": ["a"]},
                                          {"id": "c", "depends_on": ["b"]}]},
              [CYCLE]),
    "unknown-tool": ({"id": "ws-test", "steps": [{"id": "a", "tool": "hammer", "tasks": ["x"]}]},
                     ["steps[0].tool", "hammer"]),
    "max-workers-0": ({"id": "ws-test", "execution": {"max_workers": 0}, "steps": [{"id": "a"}]},
                      ["execution.max_workers", "max-workers must be at least 1"]),
    "scope-conflict": ({"id": "ws-test", "steps": [{"id": "writer-a", "files_scope": ["src/*.py"]},
                                                   {"id": "writer-b", "files_scope": ["src/util.py"]}]},
                       ["writer-a", "writer-b", "src/util.py"]),
}


def write_bad(project: Path, content) -> Path:
    path = project / "workstreams" / "ws-test.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    return path


@pytest.mark.parametrize("kind", list(BAD_INPUTS))
@pytest.mark.parametrize("command", [["validate"], ["run"], ["run", "--dry-run"]])
def test_bad_input_is_refused_with_one_message_and_exit_2(project, kind, command):
    content, expected = BAD_INPUTS[kind]
    path = write_bad(project, content)
    result = invoke(*command, str(path))

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "ws-test.json" in result.output
    assert result.output.count("error:") == 1, result.output
    for text in expected:
        if isinstance(text, re.Pattern):
            assert text.search(result.output), (text.pattern, result.output)
        else:
            assert text in result.output, (text, result.output)
    assert not (project / ".worktrees" / "ws-test" / "runs").exists()


def test_bad_input_by_ws_id_is_refused_too(project):
    write_bad(project, BAD_INPUTS["cycle"][0])
    result = invoke("validate", "--ws-id", "ws-test")
    assert result.exit_code == 2
    assert "ws-test.json" in result.output and "Traceback" not in result.output


def test_run_max_workers_0_is_a_usage_error(make_workstream, project):
    path = make_workstream([{"id": "a", "tasks": ["true"]}])
    result = invoke("run", str(path), "--max-workers", "0")
    assert result.exit_code == 2
    assert "max-workers must be at least 1" in result.output
    assert "Traceback" not in result.output
    assert not (project / ".worktrees").exists()


# --- run --------------------------------------------------------------------------------------------

def test_dry_run_prints_the_waves_and_runs_nothing(make_workstream, project):
    path = make_workstream([
        {"id": "a", "tasks": ["touch ran-a"]},
        {"id": "b", "tasks": ["touch ran-b"]},
        {"id": "c", "tasks": ["touch ran-c"], "depends_on": ["a", "b"]},
    ])
    result = invoke("run", str(path), "--dry-run")

    assert result.exit_code == 0, result.output
    out = result.output
    assert "wave 1: a, b" in out and "wave 2: c" in out
    for sid in ("a", "b", "c"):
        assert sid in out
    assert not (project / ".worktrees" / "ws-test" / "runs").exists()
    assert not (project / ".worktrees" / "ws-test" / "latest").exists()
    assert not any((project / f"ran-{s}").exists() for s in "abc")


def test_on_conflict_serialize_never_runs_conflicting_steps_together(make_workstream, project):
    path = make_workstream([
        {"id": "w1", "tasks": ["sleep 0.3"], "files_scope": ["src/*.py"]},
        {"id": "w2", "tasks": ["sleep 0.3"], "files_scope": ["src/util.py"]},
        {"id": "free", "tasks": ["sleep 0.3"], "files_scope": ["docs/*"]},
    ], execution={"max_workers": 3})
    assert invoke("run", str(path)).exit_code == 2

    result = invoke("run", str(path), "--on-conflict", "serialize")
    assert result.exit_code == 0, result.output
    by = steps_by_id(latest_summary(project))
    w1, w2 = by["w1"], by["w2"]
    assert w1["end_offset_s"] <= w2["start_offset_s"] or w2["end_offset_s"] <= w1["start_offset_s"]
    assert all(s["status"] == "succeeded" for s in by.values())


def test_run_exit_codes(make_workstream):
    ok = make_workstream([{"id": "a", "tasks": ["true"]}], ws_id="ws-ok")
    bad = make_workstream([{"id": "a", "tasks": ["exit 4"]}], ws_id="ws-bad")
    assert invoke("run", str(ok)).exit_code == 0
    assert invoke("run", str(bad)).exit_code == 1
    assert invoke("run", "--ws-id", "ws-ok").exit_code == 0


@pytest.mark.parametrize("flag", ["--fail-fast", "--on-failure=fail_all"])
def test_fail_fast_options_override_the_file(make_workstream, project, marker, flag):
    path = make_workstream([
        {"id": "a", "timeout": 20, "tasks": ["while [ ! -f b.started ]; do sleep 0.02; done; exit 1"]},
        {"id": "b", "tasks": [f"touch b.started; {sleeper(30, marker)}"]},
        {"id": "c", "tasks": ["true"]},
    ], execution={"max_workers": 2, "on_failure": "continue"})
    result = invoke("run", str(path), flag, "--grace", "1")
    assert result.exit_code == 1, result.output
    summary = latest_summary(project)
    by = steps_by_id(summary)
    assert summary["execution"]["on_failure"] == "fail_all"
    assert (by["a"]["status"], by["b"]["status"], by["c"]["status"]) == ("failed", "cancelled", "skipped")


def test_sequential_option_overrides_the_file(make_workstream, project):
    path = make_workstream([{"id": f"s{i}", "tasks": ["sleep 0.1"]} for i in range(3)],
                           execution={"max_workers": 3})
    result = invoke("run", str(path), "--sequential")
    assert result.exit_code == 0, result.output
    summary = latest_summary(project)
    spans = sorted((s["start_offset_s"], s["end_offset_s"]) for s in summary["steps"])
    assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:])), spans
    assert summary["execution"]["max_workers"] == 1


@pytest.mark.parametrize("how", ["option", "environment"])
def test_the_worktrees_dir_can_be_moved(make_workstream, project, monkeypatch, how):
    path = make_workstream([{"id": "a", "tasks": ["true"]}])
    elsewhere = project / "runs-here"
    if how == "option":
        args = ["--worktrees-dir", str(elsewhere)]
    else:
        monkeypatch.setenv("ORCHESTRATOR_WORKTREES_DIR", str(elsewhere))
        args = []
    assert invoke("run", str(path), *args).exit_code == 0
    assert (elsewhere / "ws-test" / "latest" / "results_summary.json").is_file()
    assert not (project / ".worktrees").exists()
    result = invoke("status", "ws-test", *args)
    assert result.exit_code == 0 and "Status: succeeded" in result.output


# --- status and graph -------------------------------------------------------------------------------

@pytest.fixture
def finished_run(make_workstream, project):
    path = make_workstream([
        {"id": "good", "tasks": ["echo fine"]},
        {"id": "bad", "tasks": ["echo broken >&2; exit 5"]},
        {"id": "dependent", "tasks": ["true"], "depends_on": ["bad"]},
    ])
    result = invoke("run", str(path))
    assert result.exit_code == 1, result.output
    return path


def test_status_prints_the_spec_sections(finished_run):
    result = invoke("status", "ws-test")
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("Run ID:", "Workstream: ws-test", "Status: failed", "Started:",
                 "Completed:", "✓ good", "Blocked:", "⊘ dependent", "bad", "Failed:", "✗ bad",
                 "Error:", "exit code 5", "---", "Progress: 1/3 steps complete"):
        assert text in out, (text, out)
    assert out.index("Completed:") < out.index("Blocked:") < out.index("Failed:") < out.index("Progress:")


def test_status_watch_returns_at_once_for_a_finished_run(finished_run):
    result = invoke("status", "ws-test", "--watch", "0.1")
    assert result.exit_code == 0
    assert result.output.count("Run ID:") == 1


def test_status_json_parses(finished_run):
    result = invoke("status", "ws-test", "--json")
    assert result.exit_code == 0
    state = json.loads(result.stdout)
    assert state["status"] == "failed"
    assert state["workstream_id"] == "ws-test"
    assert {k: v["status"] for k, v in state["steps"].items()} == {
        "good": "succeeded", "bad": "failed", "dependent": "blocked"}


def test_status_without_an_id_lists_the_workstreams(finished_run):
    result = invoke("status")
    assert result.exit_code == 0
    assert "ws-test" in result.output and "failed" in result.output


def test_status_of_an_unknown_workstream_is_exit_2(project):
    result = invoke("status", "nothing-here")
    assert result.exit_code == 2
    assert "Traceback" not in result.output


@pytest.fixture
def graph_ws(make_workstream):
    return make_workstream([
        {"id": "fetch"}, {"id": "left", "depends_on": ["fetch"]}, {"id": "right", "depends_on": ["fetch"]},
        {"id": "join", "depends_on": ["left", "right"]},
    ])


def test_graph_prints_a_mermaid_flowchart(graph_ws):
    result = invoke("graph", str(graph_ws))
    assert result.exit_code == 0
    out = result.stdout
    assert out.lstrip().startswith("flowchart")
    for sid in ("fetch", "left", "right", "join"):
        assert sid in out
    assert out.count("-->") == 4


def test_graph_prints_dot(graph_ws):
    result = invoke("graph", "--ws-id", "ws-test", "--format", "dot")
    assert result.exit_code == 0
    out = result.stdout
    assert out.lstrip().startswith("digraph")
    for sid in ("fetch", "left", "right", "join"):
        assert f'"{sid}"' in out
    assert out.count("->") == 4


# --- real subprocesses ------------------------------------------------------------------------------

def run_module(project: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=project, env=module_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_python_m_orchestrator_validate(make_workstream, project):
    path = make_workstream([{"id": "a", "tasks": ["true"]}])
    proc = run_module(project, "validate", str(path))
    assert proc.returncode == 0, proc.stderr
    bad = write_bad(project, BAD_INPUTS["unknown-dependency"][0])
    proc = run_module(project, "validate", str(bad))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "nope" in proc.stderr


def test_a_process_that_skips_the_teardown_still_delivers_all_its_output(make_workstream, project):
    # the entry point ends the process with os._exit (entry.exit_now): through a pipe, a large output
    # must still arrive whole, byte for byte what the in-process command prints, and every exit code
    # must be the command's own
    steps = [{"id": f"s{i:03d}", "depends_on": [f"s{i - 1:03d}"] if i else []} for i in range(400)]
    path = make_workstream(steps)
    proc = run_module(project, "graph", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == invoke("graph", str(path)).stdout
    assert len(proc.stdout) > 8192                       # more than one pipe buffer's worth
    proc = run_module(project, "run", str(path), "--dry-run")
    assert proc.returncode == 0 and proc.stdout.count("s399") >= 1, proc.stderr
    proc = run_module(project, "validate", str(project / "nope.json"))
    assert proc.returncode == 2 and "nope.json" in proc.stderr


@pytest.mark.parametrize("case, code", [("good", 0), ("failing", 1), ("bad-input", 2), ("missing", 2)])
def test_run_workstream_script_exit_codes(make_workstream, project, case, code):
    if case == "good":
        make_workstream([{"id": "a", "tasks": ["echo ok"]}, {"id": "b", "tasks": ["true"], "depends_on": ["a"]}])
    elif case == "failing":
        make_workstream([{"id": "a", "tasks": ["exit 1"]}])
    elif case == "bad-input":
        write_bad(project, BAD_INPUTS["cycle"][0])
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "run_workstream.py"), "--ws-id", "ws-test"],
                          cwd=project, env=script_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    if code != 2:
        summary = latest_summary(project)
        assert summary["status"] == ("succeeded" if code == 0 else "failed")


def test_check_step_status_script(make_workstream, project):
    make_workstream([{"id": "a", "tasks": ["echo ok"]}])
    assert invoke("run", "--ws-id", "ws-test").exit_code == 0
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "check_step_status.py"), "ws-test"],
                          cwd=project, env=script_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "Run ID:" in proc.stdout and "✓ a" in proc.stdout and "Progress: 1/1" in proc.stdout
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "check_step_status.py"), "ws-test", "--json"],
                          cwd=project, env=script_env(), capture_output=True, text=True, timeout=30)
    assert json.loads(proc.stdout)["status"] == "succeeded"


def test_visualize_dependencies_script(make_workstream, project):
    make_workstream([{"id": "a"}, {"id": "b", "depends_on": ["a"]}])
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "visualize_dependencies.py"), "ws-test"],
                          cwd=project, env=script_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    png, mmd = project / "dependency_graph.png", project / "dependency_graph.mmd"
    assert png.exists() or mmd.exists()
    if png.exists():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        text = mmd.read_text()
        assert "flowchart" in text and '"a"' in text and '"b"' in text


@pytest.mark.parametrize("have_dot", [True, False])
def test_graph_png_uses_graphviz_or_says_why_not(have_dot, make_workstream, project, monkeypatch):
    import shutil

    if have_dot and shutil.which("dot") is None:
        pytest.skip("Graphviz is not installed here; the fallback case covers this machine")
    if not have_dot:  # the CLI imports shutil when it draws: no Graphviz for it
        monkeypatch.setattr(shutil, "which", lambda name: None)
    make_workstream([{"id": "a"}, {"id": "b", "depends_on": ["a"]}])
    result = invoke("graph", "--ws-id", "ws-test", "--format", "png", "-o", "g.png")
    assert result.exit_code == 0, result.output
    if have_dot:
        assert (project / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert not (project / "g.png").exists()
        assert "flowchart" in (project / "g.mmd").read_text()
        assert "Graphviz" in result.output and "g.mmd" in result.output


# --- lock and interrupt -------------------------------------------------------------------------------

def start_run(project: Path, ws_id: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "run", "--ws-id", ws_id, *extra],
                            cwd=project, env=module_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    proc.communicate(timeout=10)


def test_a_second_run_is_refused_while_the_lock_is_held(make_workstream, project, marker):
    make_workstream([{"id": "slow", "timeout": 40,
                      "tasks": [f"while [ ! -f release.flag ]; do sleep 0.02; done; : {marker}"]}],
                    ws_id="ws-lock")
    first = start_run(project, "ws-lock")
    try:
        assert wait_until(lambda: read_state(project, "ws-lock").get("steps", {}).get("slow", {})
                          .get("status") == "running", timeout=20), first.poll()
        assert read_state(project, "ws-lock")["status"] == "running"
        live = invoke("status", "ws-lock")
        assert live.exit_code == 0
        assert "Status: running" in live.output and "Running:" in live.output and "● slow" in live.output

        second = run_module(project, "run", "--ws-id", "ws-lock")
        assert second.returncode == 3, second.stderr
        assert f"pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr

        (project / "release.flag").touch()
        out, err = first.communicate(timeout=30)
        assert first.returncode == 0, err
    finally:
        (project / "release.flag").touch()
        stop(first)

    third = run_module(project, "run", "--ws-id", "ws-lock")
    assert third.returncode == 0, third.stderr


def test_sigint_interrupts_the_run(make_workstream, project, marker):
    make_workstream([
        {"id": "s1", "tasks": [sleeper(30, marker)]},
        {"id": "s2", "tasks": [sleeper(30, marker)]},
        {"id": "s3", "tasks": ["echo never"]},
    ], ws_id="ws-int", execution={"max_workers": 2})
    proc = start_run(project, "ws-int", "--grace", "2")
    try:
        def both_running() -> bool:
            steps = read_state(project, "ws-int").get("steps", {})
            return (all(steps.get(s, {}).get("status") == "running" for s in ("s1", "s2"))
                    and len(stray_processes(marker)) >= 2)
        assert wait_until(both_running, timeout=20), (proc.poll(), read_state(project, "ws-int"))

        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        stop(proc)

    assert proc.returncode == 130, err
    assert "Traceback" not in err
    state = read_state(project, "ws-int")
    summary = latest_summary(project, "ws-int")
    assert state["status"] == "interrupted"
    assert summary["status"] == "interrupted"
    by = steps_by_id(summary)
    assert by["s1"]["status"] == "cancelled" and by["s2"]["status"] == "cancelled"
    assert by["s3"]["status"] == "pending"
    assert state["steps"]["s3"]["status"] == "pending"
    assert wait_until(lambda: not stray_processes(marker), timeout=5), \
        [p.info["cmdline"] for p in stray_processes(marker)]


def test_a_killed_orchestrator_leaves_a_stale_run_and_no_processes(make_workstream, project, marker):
    import psutil
    make_workstream([{"id": "s1", "tasks": [sleeper(30, marker)]}], ws_id="ws-kill")
    proc = start_run(project, "ws-kill")
    try:
        def running() -> bool:
            return (read_state(project, "ws-kill").get("steps", {}).get("s1", {}).get("status") == "running"
                    and len(stray_processes(marker)) >= 1)
        assert wait_until(running, timeout=20), (proc.poll(), read_state(project, "ws-kill"))
        workers = psutil.Process(proc.pid).children()
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
    finally:
        stop(proc)

    assert wait_until(lambda: not stray_processes(marker), timeout=10), \
        [p.info["cmdline"] for p in stray_processes(marker)]

    def gone(p) -> bool:
        try:
            return p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    assert wait_until(lambda: all(gone(p) for p in workers), timeout=10)
    result = invoke("status", "ws-kill")
    assert result.exit_code == 0
    assert "Status: stale" in result.output
    assert json.loads(invoke("status", "ws-kill", "--json").stdout)["status"] == "stale"
