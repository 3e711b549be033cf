"""Signals against the real command line: Ctrl-C and SIGTERM, a second Ctrl-C, a pool worker killed
mid-step, the orchestrator itself SIGKILLed and then resumed, and the per-workstream lock.

Every orchestrator here is a real `python -m orchestrator run` process in its own session, so signals
reach it exactly as they would from a terminal or a supervisor. Step processes carry the test's
`marker` in their argv and touch a ready file once they are up (after installing any signal handler),
so a test signals only what is really running and proves with psutil that nothing survived. Waits are
bounded polls on files, state.json and processes; a wait's deadline is a limit, never a measurement.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from conftest import steps_by_id, stray_processes, wait_until

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]
PY = shlex.quote(sys.executable)
WS = "ws-test"


# --- helpers ----------------------------------------------------------------------------------------

def sleeper(marker: str, *, ready: str | None = None, seconds: float = 60,
            trap_term: str | None = None) -> str:
    """A shell task: a Python process carrying the marker that touches `ready`, then sleeps.

    With `trap_term` it traps SIGTERM and carries on (touching that file each time it gets one), so
    only SIGKILL ends it; the trap is in place before `ready` appears.
    """
    code = ["import pathlib, signal, time"]
    if trap_term:
        code.append(f"signal.signal(signal.SIGTERM, lambda *_: pathlib.Path({trap_term!r}).touch())")
    if ready:
        code.append(f"pathlib.Path({ready!r}).touch()")
    code.append(f"time.sleep({seconds})")
    return f"{PY} -c {shlex.quote('; '.join(code))} {marker}"


class Cli:
    """Real `python -m orchestrator` processes of one test, each in its own session.

    stderr goes to a file (never a pipe that could fill up and block the orchestrator). Whatever is
    still running at teardown is SIGKILLed (the orchestrator alone, so that its pool workers get to take
    their steps along as they would after any SIGKILL; then whatever of its group is left).
    """

    def __init__(self, project: Path, tmp_path: Path):
        self.project = project
        self.tmp = tmp_path
        self.procs: list[subprocess.Popen] = []
        self._stderr: dict[int, Path] = {}

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO)
        env.pop("ORCHESTRATOR_WORKTREES_DIR", None)
        env.update(extra or {})
        return env

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        err = self.tmp / f"stderr-{len(self.procs)}.txt"
        with open(err, "wb") as f:
            proc = subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=self.project,
                                    env=self.env(env), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=f, start_new_session=True)
        self.procs.append(proc)
        self._stderr[proc.pid] = err
        return proc

    def stderr(self, proc: subprocess.Popen) -> str:
        return self._stderr[proc.pid].read_text(errors="replace")

    def run(self, *args: str, timeout: float = 60, env: dict[str, str] | None = None):
        """Run to completion; returns CompletedProcess with text stdout/stderr."""
        return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=self.project,
                              env=self.env(env), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, start_new_session=True)

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            if not wait_until(lambda: not group_members(proc.pid), timeout=10):
                for p in group_members(proc.pid):
                    try:
                        p.kill()
                    except psutil.Error:
                        pass


@pytest.fixture
def cli(project, tmp_path, marker):
    # depends on `marker` so that the stray-process check runs after these processes are gone
    c = Cli(project, tmp_path)
    yield c
    c.cleanup()


def ws_dir(project: Path) -> Path:
    return project / ".worktrees" / WS


def latest(project: Path) -> Path:
    return ws_dir(project) / "latest"


def read_state(project: Path) -> dict:
    """The live state, or {} while it does not exist yet (a torn file would also read as {})."""
    try:
        return json.loads((latest(project) / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def statuses(project: Path) -> dict[str, str]:
    return {sid: s["status"] for sid, s in (read_state(project).get("steps") or {}).items()}


def read_summary(project: Path) -> dict:
    return json.loads((latest(project) / "results_summary.json").read_text())


def orchestrator_log(project: Path) -> str:
    try:
        return (ws_dir(project) / "orchestrator.log").read_text()
    except OSError:
        return ""


def group_members(pgid: int) -> list[psutil.Process]:
    """Live processes in a process group: an orchestrator started in its own session and its pool."""
    found = []
    for p in psutil.process_iter(["status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (OSError, psutil.Error):
            continue
    return found


def wait_exit(proc: subprocess.Popen, timeout: float, why: str) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the orchestrator did not exit within {timeout:g}s: {why}")


def assert_nothing_left(marker: str, orchestrator: subprocess.Popen) -> None:
    assert wait_until(lambda: not stray_processes(marker), timeout=10), \
        [p.info["cmdline"] for p in stray_processes(marker)]
    assert wait_until(lambda: not group_members(orchestrator.pid), timeout=10), \
        [p.cmdline() for p in group_members(orchestrator.pid)]


# --- 1. the first Ctrl-C / SIGTERM -------------------------------------------------------------------

@pytest.mark.parametrize("how", ["sigint", "ctrl-c-to-the-process-group", "sigterm"])
def test_an_interrupt_cancels_running_steps_keeps_the_rest_pending_and_exits_130(
        how, cli, make_workstream, project, marker):
    make_workstream([
        {"id": "a", "tasks": [sleeper(marker, ready="a.ready")]},
        {"id": "b", "tasks": [sleeper(marker, ready="b.ready")]},
        {"id": "c", "tasks": ["touch c.ran"], "depends_on": ["a"]},
    ], execution={"max_workers": 2})
    proc = cli.start("run", "--ws-id", WS)
    assert wait_until(lambda: (project / "a.ready").exists() and (project / "b.ready").exists()
                      and statuses(project) == {"a": "running", "b": "running", "c": "pending"},
                      timeout=30), (statuses(project), cli.stderr(proc))

    if how == "sigint":
        os.kill(proc.pid, signal.SIGINT)
    elif how == "sigterm":
        os.kill(proc.pid, signal.SIGTERM)
    else:  # what a terminal does: SIGINT to the whole foreground group (orchestrator and pool)
        os.killpg(proc.pid, signal.SIGINT)
    code = wait_exit(proc, 30, "after one interrupt with steps that die on SIGTERM")

    stderr = cli.stderr(proc)
    assert code == 130, stderr
    assert "Traceback" not in stderr
    expected = {"a": "cancelled", "b": "cancelled", "c": "pending"}
    state = json.loads((latest(project) / "state.json").read_text())
    assert state["status"] == "interrupted"
    assert {sid: s["status"] for sid, s in state["steps"].items()} == expected
    summary = read_summary(project)
    assert summary["status"] == "interrupted"
    assert {s["id"]: s["status"] for s in summary["steps"]} == expected
    assert summary["summary"]["cancelled"] == 2
    assert (latest(project) / "execution_report.md").is_file()
    assert (latest(project) / "junit.xml").is_file()
    assert not (project / "c.ran").exists()
    assert_nothing_left(marker, proc)


# --- 2. a second Ctrl-C skips the grace ----------------------------------------------------------------

def start_stubborn_steps(cli: Cli, make_workstream, project: Path, marker: str) -> subprocess.Popen:
    """Two running steps that trap SIGTERM and carry on, under a 60 s grace."""
    make_workstream([
        {"id": sid, "tasks": [sleeper(marker, ready=f"{sid}.ready", seconds=120, trap_term=f"{sid}.term")]}
        for sid in ("a", "b")
    ], execution={"max_workers": 2})
    proc = cli.start("run", "--ws-id", WS, "--grace", "60")
    assert wait_until(lambda: (project / "a.ready").exists() and (project / "b.ready").exists()
                      and statuses(project) == {"a": "running", "b": "running"}, timeout=30), \
        cli.stderr(proc)
    return proc


def assert_killed_by_the_second_sigint(cli: Cli, proc: subprocess.Popen, project: Path, marker: str):
    # 20 s is far below the 60 s grace: exiting within it shows the grace was skipped
    code = wait_exit(proc, 20, "the second SIGINT did not skip the 60 s grace")
    stderr = cli.stderr(proc)
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert_nothing_left(marker, proc)
    summary = read_summary(project)
    assert summary["status"] == "interrupted"
    assert json.loads((latest(project) / "state.json").read_text())["status"] == "interrupted"
    # what stopped them was the interrupt: the records must not say they failed
    assert {s["id"]: (s["status"], s["error"]) for s in summary["steps"]
            if s["status"] != "cancelled"} == {}


def test_a_second_sigint_kills_steps_that_ignore_sigterm_without_waiting_for_the_grace(
        cli, make_workstream, project, marker):
    proc = start_stubborn_steps(cli, make_workstream, project, marker)

    os.kill(proc.pid, signal.SIGINT)
    # both steps got their SIGTERM (the graceful stop is under way) and shrugged it off
    assert wait_until(lambda: (project / "a.term").exists() and (project / "b.term").exists(),
                      timeout=15), orchestrator_log(project)
    sleepers = [p for p in stray_processes(marker) if p.info["cmdline"][:2] == [sys.executable, "-c"]]
    assert len(sleepers) == 2
    assert proc.poll() is None

    os.kill(proc.pid, signal.SIGINT)
    assert_killed_by_the_second_sigint(cli, proc, project, marker)


def test_a_quick_double_ctrl_c_still_records_the_running_steps_as_cancelled(
        cli, make_workstream, project, marker):
    """The second SIGINT follows the first as soon as the orchestrator has logged it (a user hitting
    Ctrl-C twice), before the workers have necessarily seen the first cancel flag."""
    proc = start_stubborn_steps(cli, make_workstream, project, marker)
    log = ws_dir(project) / "orchestrator.log"

    os.kill(proc.pid, signal.SIGINT)
    # the first one was handled (not merged with the second by the kernel or by Python)
    assert wait_until(lambda: "INTERRUPT SIGINT" in log.read_text(), timeout=15, interval=0.001), \
        cli.stderr(proc)
    os.kill(proc.pid, signal.SIGINT)
    assert_killed_by_the_second_sigint(cli, proc, project, marker)


# --- 3. a pool worker killed mid-step -----------------------------------------------------------------

@pytest.mark.parametrize("pool", ["workers", "stdlib"])   # shell steps on pool workers
@pytest.mark.parametrize("retries", [0, 1])
def test_a_pool_worker_killed_mid_step_fails_only_that_step(retries, pool, cli, make_workstream, project,
                                                            marker):
    # the step's shell is a child of the pool worker: $PPID is the worker's pid
    victim = (f'if [ "$ORCHESTRATOR_ATTEMPT" = 1 ]; then echo $PPID > victim.worker; '
              f'{sleeper(marker)}; fi; echo attempt $ORCHESTRATOR_ATTEMPT done')
    sibling = f"touch sib.ready; until [ -f go ]; do sleep 0.05; done; : {marker}"
    make_workstream([
        {"id": "victim", "tasks": [victim], "retries": retries, "retry_delay": 0.05},
        {"id": "sib", "tasks": [sibling]},
        {"id": "dep", "tasks": ["touch dep.ran"], "depends_on": ["sib"]},
    ], execution={"max_workers": 2})
    # our WorkerPool fails only the dead worker's future; ProcessPoolExecutor breaks as a whole
    # and the sibling is started again on a new pool: both must end the same way
    proc = cli.start("run", "--ws-id", WS, env={"ORCHESTRATOR_POOL": pool})
    pidfile = project / "victim.worker"
    assert wait_until(lambda: pidfile.exists() and pidfile.read_text().strip()
                      and (project / "sib.ready").exists(), timeout=30), cli.stderr(proc)
    worker = int(pidfile.read_text())
    assert psutil.Process(worker).ppid() == proc.pid  # it really is one of this run's pool workers

    os.kill(worker, signal.SIGKILL)
    final = "succeeded" if retries else "failed"
    assert wait_until(lambda: statuses(project).get("victim") == final, timeout=15), \
        (statuses(project), orchestrator_log(project))
    (project / "go").touch()  # the sibling was running across the crash; now let it finish
    code = wait_exit(proc, 40, "after a pool worker was SIGKILLed")

    stderr = cli.stderr(proc)
    assert "Traceback" not in stderr
    assert code == (0 if retries else 1), stderr
    by = steps_by_id(read_summary(project))
    assert by["sib"]["status"] == "succeeded"
    assert by["dep"]["status"] == "succeeded"
    assert (project / "dep.ran").exists()
    if retries:
        assert by["victim"]["status"] == "succeeded"
        assert by["victim"]["attempts"] == 2
    else:
        assert by["victim"]["status"] == "failed"
        assert by["victim"]["attempts"] == 1
        assert "worker process died (signal 9)" in (by["victim"]["error"] or "")
    assert_nothing_left(marker, proc)


# --- 4. the orchestrator SIGKILLed, then resumed -------------------------------------------------------

def test_a_sigkilled_orchestrator_takes_its_steps_along_and_the_run_resumes(cli, make_workstream, project,
                                                                         marker):
    # `long` hangs until the test creates `fast`; its definition never changes, so resume may rerun it
    long_task = f"if [ -f fast ]; then echo fast now; else {sleeper(marker, ready='long.ready')}; fi"
    steps = [
        {"id": "quick", "tasks": ["echo ran >> quick.count"]},
        {"id": "long", "tasks": [long_task]},
        {"id": "after", "tasks": ["echo ran >> after.count"], "depends_on": ["long"]},
    ]
    make_workstream(steps, execution={"max_workers": 2})
    proc = cli.start("run", "--ws-id", WS)
    assert wait_until(lambda: (project / "long.ready").exists()
                      and statuses(project) == {"quick": "succeeded", "long": "running", "after": "pending"},
                      timeout=30), (statuses(project), cli.stderr(proc))
    run_id = read_state(project)["run_id"]

    os.kill(proc.pid, signal.SIGKILL)
    wait_exit(proc, 10, "SIGKILL")
    # its pool workers and their steps die with it (PDEATHSIG), with nobody left to clean up
    assert_nothing_left(marker, proc)

    state = json.loads((latest(project) / "state.json").read_text())  # complete, valid JSON
    assert state["run_id"] == run_id
    assert state["steps"]["quick"]["status"] == "succeeded"
    shown = cli.run("status", WS)
    assert shown.returncode == 0, shown.stderr
    assert "stale" in shown.stdout.lower()
    shown = cli.run("status", WS, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["status"] == "stale"

    (project / "fast").touch()
    resumed = cli.run("run", "--ws-id", WS, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    summary = read_summary(project)
    assert summary["run_id"] == run_id
    assert summary["status"] == "succeeded"
    by = steps_by_id(summary)
    assert [s["id"] for s in summary["steps"]] == ["quick", "long", "after"]
    assert (by["quick"]["status"], by["quick"]["attempts"]) == ("succeeded", 1)
    assert (by["long"]["status"], by["long"]["attempts"]) == ("succeeded", 2)
    assert (by["after"]["status"], by["after"]["attempts"]) == ("succeeded", 1)
    assert (project / "quick.count").read_text().splitlines() == ["ran"]  # kept, not rerun
    assert (project / "after.count").read_text().splitlines() == ["ran"]

    # a succeeded step whose definition changed since is run again; the unchanged ones are kept
    steps[0]["tasks"] = ["echo ran-v2 >> quick.count"]
    make_workstream(steps, execution={"max_workers": 2})
    again = cli.run("run", "--ws-id", WS, "--resume")
    assert again.returncode == 0, again.stderr
    summary = read_summary(project)
    assert summary["run_id"] == run_id
    by = steps_by_id(summary)
    assert (project / "quick.count").read_text().splitlines() == ["ran", "ran-v2"]
    assert (project / "after.count").read_text().splitlines() == ["ran"]
    assert by["quick"]["status"] == "succeeded" and by["quick"]["attempts"] == 2
    assert by["long"]["attempts"] == 2 and by["after"]["attempts"] == 1

    # --force starts from scratch: a new run id, every step run once more
    forced = cli.run("run", "--ws-id", WS, "--resume", "--force")
    assert forced.returncode == 0, forced.stderr
    summary = read_summary(project)
    assert summary["run_id"] != run_id
    assert all(s["status"] == "succeeded" and s["attempts"] == 1 for s in summary["steps"])
    assert (project / "quick.count").read_text().splitlines() == ["ran", "ran-v2", "ran-v2"]
    assert (project / "after.count").read_text().splitlines() == ["ran", "ran"]


# --- 5. one run at a time -------------------------------------------------------------------------------

def test_a_second_run_is_refused_and_a_dead_holders_lock_is_taken_over(cli, make_workstream, project,
                                                                      marker):
    make_workstream([{"id": "long", "tasks": [
        f"if [ -f fast ]; then true; else {sleeper(marker, ready='long.ready')}; fi"]}])
    holder = cli.start("run", "--ws-id", WS)
    assert wait_until(lambda: (project / "long.ready").exists()
                      and statuses(project) == {"long": "running"}, timeout=30), cli.stderr(holder)
    held_run = read_state(project)["run_id"]

    second = cli.run("run", "--ws-id", WS, timeout=30)
    assert second.returncode == 3, second.stderr
    assert str(holder.pid) in second.stderr
    assert held_run in second.stderr
    assert "Traceback" not in second.stderr
    # the refused run changed nothing: the holder runs on and `latest` is still its run
    assert holder.poll() is None
    assert read_state(project)["run_id"] == held_run
    assert statuses(project) == {"long": "running"}

    os.kill(holder.pid, signal.SIGKILL)
    wait_exit(holder, 10, "SIGKILL")
    assert_nothing_left(marker, holder)

    (project / "fast").touch()
    third = cli.run("run", "--ws-id", WS)
    assert third.returncode == 0, third.stderr
    assert "took over" in third.stderr
    assert held_run in third.stderr
    summary = read_summary(project)
    assert summary["run_id"] != held_run
    assert summary["status"] == "succeeded"
