"""Reliability of the engine under hostile steps: children that escape with `setsid` and double forks,
retries, circuit breakers, a 1 GB output flood, 2000 steps under a 20 Hz state poller, secrets, and
the permissions of everything written under `.worktrees`.

Runs go through `run_workstream` (the real dispatcher and process pool, in this process) unless the
orchestrator must be a process of its own — to measure its memory, to poll its state from outside, or
to give it an environment — and then through a real `python -m orchestrator run`. Nothing is timed:
waits are bounded polls, and assertions are about statuses, counts, file contents and processes.
"""
from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import steps_by_id, stray_processes, wait_until

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]
PY = shlex.quote(sys.executable)
WS = "ws-test"
MiB = 1024 * 1024


# --- helpers ----------------------------------------------------------------------------------------

def run_cli(project: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60):
    """A real `python -m orchestrator` run to completion (text stdout/stderr)."""
    full = dict(os.environ)
    full["PYTHONPATH"] = str(REPO)
    full.pop("ORCHESTRATOR_WORKTREES_DIR", None)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=project, env=full,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)


@pytest.fixture
def start_cli(project, tmp_path, marker):
    """Start `python -m orchestrator ...` in its own session; SIGKILLed at teardown if still running.

    stderr goes to a file, so an orchestrator that prints a lot never blocks on a full pipe. Depends on
    `marker` so the stray-process check runs after these processes are gone.
    """
    started: list[tuple[subprocess.Popen, Path]] = []

    def start(*args: str) -> tuple[subprocess.Popen, Path]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO)
        env.pop("ORCHESTRATOR_WORKTREES_DIR", None)
        err = tmp_path / f"stderr-{len(started)}.txt"
        with open(err, "wb") as f:
            proc = subprocess.Popen([sys.executable, "-m", "orchestrator", *args], cwd=project, env=env,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=f,
                                    start_new_session=True)
        started.append((proc, err))
        return proc, err

    yield start
    for proc, _ in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def latest(project: Path) -> Path:
    return project / ".worktrees" / WS / "latest"


# --- 1. children that escape -------------------------------------------------------------------------

# The step's process double-forks a daemon (fork, setsid, fork), waits until the daemon has written
# its pid, and exits 0 at once. "detach": the daemon closes the step's output like a real daemon;
# "hold": it keeps the step's stdout open.
DOUBLE_FORK = """
import os, sys, time
pidfile, mode = sys.argv[1], sys.argv[2]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        if mode == "detach":
            fd = os.open(os.devnull, os.O_RDWR)
            for n in (0, 1, 2):
                os.dup2(fd, n)
        with open(pidfile + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(pidfile + ".tmp", pidfile)
        time.sleep(60)
    os._exit(0)
for _ in range(2000):
    if os.path.exists(pidfile):
        break
    time.sleep(0.01)
print("leader exits")
"""

# The step's process forks a child that calls setsid and sleeps; the step itself sleeps too.
ESCAPE_AND_HANG = """
import os, sys, time
pidfile = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    with open(pidfile + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(pidfile + ".tmp", pidfile)
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""


@pytest.mark.parametrize("mode", ["detach", "hold"])
def test_a_double_forked_daemon_does_not_outlive_its_step(mode, make_workstream, run_workstream, project,
                                                         marker):
    task = f"{PY} -c {shlex.quote(DOUBLE_FORK)} daemon.pid {mode} {marker}"
    path = make_workstream([{"id": "daemonizer", "tasks": [task], "timeout": 30}])
    outcome, summary = run_workstream(path, grace=1.0)

    step = steps_by_id(summary)["daemonizer"]
    assert step["status"] == "succeeded", step["error"]  # its own process exited 0
    assert outcome.exit_code == 0
    daemon = int((project / "daemon.pid").read_text())
    assert wait_until(lambda: pid_gone(daemon), timeout=5), psutil.Process(daemon).cmdline()
    assert wait_until(lambda: not stray_processes(marker), timeout=5), \
        [p.info["cmdline"] for p in stray_processes(marker)]


@pytest.mark.parametrize("ending", ["timeout", "fail_all"])
def test_a_setsid_grandchild_dies_with_its_timed_out_or_cancelled_step(ending, make_workstream,
                                                                       run_workstream, project, marker):
    escaper = {"id": "escaper", "tasks": [f"{PY} -c {shlex.quote(ESCAPE_AND_HANG)} escaped.pid {marker}"]}
    if ending == "timeout":
        steps, execution, expected = [dict(escaper, timeout=1.5)], None, "timed_out"
    else:  # a sibling fails once the grandchild is up; fail_all cancels the escaper
        steps = [escaper, {"id": "breaker", "timeout": 30,
                           "tasks": ["until [ -f escaped.pid ]; do sleep 0.02; done; exit 1"]}]
        execution, expected = {"max_workers": 2, "on_failure": "fail_all"}, "cancelled"
    path = make_workstream(steps, execution=execution)
    outcome, summary = run_workstream(path, grace=1.0)

    assert outcome.exit_code == 1
    assert steps_by_id(summary)["escaper"]["status"] == expected
    grandchild = int((project / "escaped.pid").read_text())
    assert wait_until(lambda: pid_gone(grandchild), timeout=5)
    assert wait_until(lambda: not stray_processes(marker), timeout=5), \
        [p.info["cmdline"] for p in stray_processes(marker)]


# --- 2. circuit breaker and retries -------------------------------------------------------------------

def test_an_open_circuit_skips_the_remaining_steps_of_the_tool(make_workstream, run_workstream, project):
    # the "api" is down: every call is recorded, then fails
    api = ["/bin/sh", "-c", 'echo "$1" >> api.calls; echo "503 from api" >&2; exit 1', "api", "{task}"]
    steps = [{"id": f"call-{i}", "tool": "api", "tasks": [f"request {i}"]} for i in range(5)]
    steps.append({"id": "local", "tasks": ["echo not an api step"]})
    path = make_workstream(steps, tools={"api": {"command": api}},
                           execution={"max_workers": 1, "circuit_breaker": {"failure_threshold": 2}})
    outcome, summary = run_workstream(path)

    assert outcome.exit_code == 1
    by = steps_by_id(summary)
    assert [by[f"call-{i}"]["status"] for i in range(5)] == ["failed"] * 2 + ["skipped"] * 3
    for i in range(2, 5):
        assert "circuit open for tool api" in by[f"call-{i}"]["error"]
        assert by[f"call-{i}"]["attempts"] == 0
    assert by["local"]["status"] == "succeeded"  # the breaker is per tool
    assert (project / "api.calls").read_text().splitlines() == ["request 0", "request 1"]
    counts = summary["summary"]
    assert (counts["failed"], counts["skipped"], counts["succeeded"]) == (2, 3, 1)


def test_retries_count_and_log_every_attempt(make_workstream, run_workstream, project, marker):
    path = make_workstream([
        {"id": "always", "retries": 2, "retry_delay": 0.05,
         "tasks": ['echo "try $ORCHESTRATOR_ATTEMPT"; exit 3']},
        {"id": "third-time", "retries": 2, "retry_delay": 0.05,
         "tasks": ['echo "try $ORCHESTRATOR_ATTEMPT"; [ "$ORCHESTRATOR_ATTEMPT" = 3 ]']},
        {"id": "hangs", "retries": 1, "retry_delay": 0.05, "timeout": 0.5,
         "tasks": [f"{PY} -c 'import time; time.sleep(60)' {marker}"]},
    ], execution={"max_workers": 3})
    outcome, summary = run_workstream(path, grace=0.5)

    assert outcome.exit_code == 1
    by = steps_by_id(summary)
    assert (by["always"]["status"], by["always"]["attempts"], by["always"]["exit_code"]) == ("failed", 3, 3)
    assert (by["third-time"]["status"], by["third-time"]["attempts"]) == ("succeeded", 3)
    assert (by["hangs"]["status"], by["hangs"]["attempts"]) == ("timed_out", 2)

    log = (Path(outcome.run_dir) / "steps" / "always.log").read_text()
    for n in (1, 2, 3):
        assert f"=== always attempt {n} started" in log
        assert f"try {n}" in log
    assert log.index("attempt 1 started") < log.index("attempt 2 started") < log.index("attempt 3 started")
    events = (project / ".worktrees" / WS / "orchestrator.log").read_text().splitlines()
    retries = [line for line in events if "STEP RETRY" in line]
    assert len([r for r in retries if "STEP RETRY always " in r]) == 2
    assert len([r for r in retries if "STEP RETRY third-time " in r]) == 2
    assert len([r for r in retries if "STEP RETRY hangs " in r]) == 1
    assert wait_until(lambda: not stray_processes(marker), timeout=5)


# --- 3. an output flood -------------------------------------------------------------------------------

def test_a_1gb_output_flood_keeps_every_process_small_and_the_log_capped(make_workstream, start_cli,
                                                                         project, marker):
    total = 1_000_000_000
    make_workstream([{"id": "flood", "tasks": [f"yes {marker} | head -c {total}"]}])
    proc, err = start_cli("run", "--ws-id", WS)

    peak: dict[int, tuple[int, str]] = {}
    saw_flood = False
    deadline = time.monotonic() + 75
    root = psutil.Process(proc.pid)
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            break
        for p in tree:
            try:
                rss, cmd = p.memory_info().rss, " ".join(p.cmdline())
            except psutil.Error:
                continue
            saw_flood = saw_flood or marker in cmd
            if rss > peak.get(p.pid, (0, ""))[0]:
                peak[p.pid] = (rss, cmd[:100])
        time.sleep(0.1)  # the sampling period, not a synchronisation
    code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))

    stderr = err.read_text()
    assert code == 0, stderr
    assert saw_flood, "no sample caught the flooding step running"
    too_big = {pid: (rss // MiB, cmd) for pid, (rss, cmd) in peak.items() if rss >= 150 * MiB}
    assert not too_big, too_big
    assert steps_by_id(json.loads((latest(project) / "results_summary.json").read_text())
                       )["flood"]["status"] == "succeeded"

    log = latest(project) / "steps" / "flood.log"
    cap = 50 * MiB
    size = log.stat().st_size
    assert cap <= size <= cap + 512, size
    with open(log, "rb") as f:
        head = f.read(4096)
        f.seek(cap // 2 - 1024)
        middle = f.read(2048)
        f.seek(-4096, os.SEEK_END)
        tail = f.read()
    assert b"=== flood attempt 1 started" in head
    assert f"{marker}\n{marker}\n".encode() in head
    assert f"{marker}\n{marker}\n".encode() in tail
    assert b"=== flood attempt 1 succeeded ===" in tail
    cut = re.search(rb"(\d+) bytes cut", middle)
    assert cut, middle
    assert total - cap <= int(cut.group(1)) <= total


# --- 4. load under polling ----------------------------------------------------------------------------

def test_2000_steps_under_a_20hz_poller_are_each_recorded_once_and_truly(make_workstream, start_cli,
                                                                        project):
    n = 2000
    rng = random.Random(20261125)
    steps, expected = [], {}
    for i in range(n):
        sid = f"s{i:04d}"
        ok = rng.random() >= 0.1
        deps = [f"s{d:04d}" for d in sorted(rng.sample(range(i), rng.randint(0, min(2, i))))]
        steps.append({"id": sid, "tasks": ["true" if ok else "false"], "depends_on": deps})
        if any(expected[d] != "succeeded" for d in deps):
            expected[sid] = "blocked"
        else:
            expected[sid] = "succeeded" if ok else "failed"
    make_workstream(steps, execution={"max_workers": 2})
    state_path = latest(project) / "state.json"

    polls: list[int] = []
    bad: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                raw = state_path.read_bytes()
            except OSError:  # not written yet
                raw = None
            if raw is not None:
                try:
                    state = json.loads(raw)
                    if len(state["steps"]) != n:
                        bad.append(f"{len(state['steps'])} steps")
                    polls.append(len(raw))
                except (ValueError, KeyError, TypeError) as e:
                    bad.append(f"{type(e).__name__}: {e} ({len(raw)} bytes)")
            stop.wait(0.05)  # 20 Hz

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    proc, err = start_cli("run", "--ws-id", WS, "-q")
    try:
        code = proc.wait(timeout=80)
    finally:
        stop.set()
        poller.join(timeout=5)

    assert code == 1, err.read_text()
    assert not bad, bad[:5]
    assert polls, "the poller never saw state.json"
    summary = json.loads((latest(project) / "results_summary.json").read_text())
    ids = [s["id"] for s in summary["steps"]]
    assert len(ids) == n and sorted(ids) == sorted(expected)
    got = {s["id"]: s["status"] for s in summary["steps"]}
    wrong = {sid: (got[sid], want) for sid, want in expected.items() if got[sid] != want}
    assert not wrong, dict(list(wrong.items())[:10])
    counts = summary["summary"]
    for status in ("succeeded", "failed", "blocked"):
        assert counts[status] == sum(1 for v in expected.values() if v == status), status
    assert counts["total"] == n
    assert counts["timed_out"] == counts["skipped"] == counts["cancelled"] == 0
    final = json.loads(state_path.read_text())
    assert {sid: s["status"] for sid, s in final["steps"].items()} == expected


# --- 5. secrets ------------------------------------------------------------------------------------------

TOKEN = "s3cr3t-value-123"
PASSWORD = "pw-hunter2-4567"

LEAKY_MODULE = '''
import os


def boom():
    print("connecting with", os.environ["DB_PASSWORD"], flush=True)
    raise RuntimeError("auth failed for token " + os.environ["MY_API_TOKEN"]
                       + " and password " + os.environ["DB_PASSWORD"])
'''


def test_secret_values_never_reach_a_file_under_worktrees(make_workstream, project):
    (project / "leaky.py").write_text(LEAKY_MODULE)
    db = {"DB_PASSWORD": PASSWORD}
    make_workstream([
        {"id": "show", "env": db,
         "tasks": ['echo "token=$MY_API_TOKEN password=$DB_PASSWORD"',
                   'echo "to stderr: $MY_API_TOKEN" >&2']},
        # the secret arrives in two writes, so it is split across reads of the step's output
        {"id": "split", "tasks": ["printf 's3cr3t-'; sleep 0.3; printf 'value-123\\n'"]},
        {"id": "exports", "env": db,
         "tasks": ['echo "token=$MY_API_TOKEN" >> "$ORCHESTRATOR_OUTPUT"',
                   'echo "password=$DB_PASSWORD" >> "$ORCHESTRATOR_OUTPUT"']},
        {"id": "fails", "env": db,
         "tasks": ['echo "login failed with $MY_API_TOKEN / $DB_PASSWORD" >&2; exit 1']},
        {"id": "raises", "tool": "python", "callable": "leaky:boom", "env": db},
        {"id": "bad-test", "tasks": ["true"],
         "acceptance_tests": ['echo "expected $MY_API_TOKEN"; exit 1']},
    ], execution={"max_workers": 2})
    result = run_cli(project, "run", "--ws-id", WS, env={"MY_API_TOKEN": TOKEN})

    assert result.returncode == 1, result.stderr
    run_dir = latest(project)
    by = steps_by_id(json.loads((run_dir / "results_summary.json").read_text()))
    assert by["show"]["status"] == "succeeded"
    assert by["fails"]["status"] == "failed"
    assert by["raises"]["status"] == "failed" and "***" in by["raises"]["error"]
    assert by["bad-test"]["status"] == "failed"
    leaks = []
    for dirpath, _, files in os.walk(project / ".worktrees"):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink():
                continue
            blob = path.read_bytes()
            for secret in (TOKEN, PASSWORD):
                if secret.encode() in blob:
                    leaks.append((str(path.relative_to(project)), secret))
    assert not leaks, "secrets written under .worktrees:\n" + "\n".join(f"{f}: {v}" for f, v in leaks)
    show_log = (run_dir / "steps" / "show.log").read_text()
    assert "token=*** password=***" in show_log and "to stderr: ***" in show_log
    assert "***" in (run_dir / "steps" / "split.log").read_text()


# --- 6. permissions ----------------------------------------------------------------------------------

def test_run_directories_are_0700_and_files_0600(make_workstream, run_workstream, project):
    path = make_workstream([
        {"id": "ok", "tasks": ["echo hello", 'echo "k=v" >> "$ORCHESTRATOR_OUTPUT"']},
        {"id": "bad", "tasks": ["echo oops"], "acceptance_tests": ["exit 1"]},
    ])
    old = os.umask(0o022)  # the usual umask: without explicit modes, files would be 0644
    try:
        outcome, _ = run_workstream(path)
    finally:
        os.umask(old)

    run_dir = Path(outcome.run_dir)
    for name in ("state.json", "results_summary.json", "execution_report.md", "junit.xml",
                 "steps/ok.log", "steps/bad.log"):
        assert (run_dir / name).is_file(), name
    assert (project / ".worktrees" / WS / "orchestrator.log").is_file()

    wrong = []
    root = project / ".worktrees"
    for dirpath, dirs, files in os.walk(root):
        d = Path(dirpath)
        if stat.S_IMODE(d.stat().st_mode) != 0o700:
            wrong.append((str(d.relative_to(project)), oct(stat.S_IMODE(d.stat().st_mode))))
        for name in files:
            p = d / name
            if p.is_symlink():
                continue
            mode = stat.S_IMODE(p.stat().st_mode)
            if mode != 0o600:
                wrong.append((str(p.relative_to(project)), oct(mode)))
    assert not wrong, "wrong modes:\n" + "\n".join(f"{f}: {m}" for f, m in wrong)


def test_a_worker_that_stops_answering_is_killed_by_the_backstop(make_workstream, run_workstream,
                                                                 project, marker, monkeypatch):
    """A SIGSTOPped pool worker cannot enforce its step's timeout; the dispatcher's backstop kills
    it (and the step's tree) once timeout + grace + margin have passed, and the run ends."""
    import orchestrator.dispatcher as dispatcher
    monkeypatch.setattr(dispatcher, "BACKSTOP_MARGIN", 0.5)
    monkeypatch.setenv("ORCHESTRATOR_POOL", "workers")   # inline steps have no worker to wedge
    path = make_workstream([
        {"id": "wedged", "timeout": 1, "tasks": [f"echo $PPID > worker.pid; {PY} -c 'import time; "
                                                 f"time.sleep(60)' {marker}"]},
        {"id": "fine", "tasks": ["true"]},
    ], execution={"max_workers": 2})
    pid_file = project / "worker.pid"

    def stop_the_worker():
        assert wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=30)
        os.kill(int(pid_file.read_text()), signal.SIGSTOP)

    stopper = threading.Thread(target=stop_the_worker, daemon=True)
    stopper.start()
    outcome, summary = run_workstream(path, grace=0.2)
    stopper.join(timeout=30)

    by = steps_by_id(summary)
    assert by["fine"]["status"] == "succeeded"
    assert by["wedged"]["status"] == "failed"
    assert by["wedged"]["error"] == "worker process died (signal 9)"
    log = (project / ".worktrees" / WS / "orchestrator.log").read_text()
    assert "STEP BACKSTOP wedged" in log
