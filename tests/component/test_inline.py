"""The default local pool runs shell steps from the dispatcher's own loop (`orchestrator.inline`);
`ORCHESTRATOR_POOL=workers` runs them on pool workers (`worker.run_step`). Both must record a step
the same way: these tests run the same workstreams through both."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import ignored_signals, steps_by_id

POOLS = ["inline", "workers"]


@pytest.fixture(params=POOLS)
def pool(request, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_POOL", request.param)
    return request.param


def test_every_outcome_is_recorded_alike_on_both_pools(pool, make_workstream, run_workstream, project):
    path = make_workstream([
        {"id": "ok", "tasks": ["echo hello", "printf 'answer=42\\n' >> \"$ORCHESTRATOR_OUTPUT\""],
         "acceptance_tests": ["test -d /", "echo checked"]},
        {"id": "bad-exit", "tasks": ["echo before; exit 3", "echo never"]},
        {"id": "bad-test", "tasks": ["true"], "acceptance_tests": ["false", "echo second test runs"]},
        {"id": "slow", "tasks": ["sleep 5"], "timeout": 0.3, "acceptance_tests": ["true"]},
        {"id": "missing", "tasks": ["no-such-command-xyz"]},
        {"id": "uses", "tasks": ["test \"${steps.ok.outputs.answer}\" = 42"], "depends_on": ["ok"]},
    ], execution={"max_workers": 3})
    outcome, summary = run_workstream(path, grace=0.2)
    by = steps_by_id(summary)

    assert by["ok"]["status"] == "succeeded" and by["ok"]["outputs"] == {"answer": "42"}
    assert [t["status"] for t in by["ok"]["acceptance_tests"]] == ["passed", "passed"]
    assert by["bad-exit"]["status"] == "failed" and by["bad-exit"]["exit_code"] == 3
    assert by["bad-exit"]["error"] == "exit code 3 in task 1: `echo before; exit 3`"
    assert by["bad-test"]["status"] == "failed"
    assert by["bad-test"]["error"] == "acceptance test 1 failed (exit code 1): `false`"
    assert [t["status"] for t in by["bad-test"]["acceptance_tests"]] == ["failed", "passed"]
    assert by["slow"]["status"] == "timed_out"
    assert by["slow"]["error"] == "timed out (timeout of 0.3s) in task 1: `sleep 5`"
    assert by["missing"]["status"] == "failed" and by["missing"]["exit_code"] == 127
    assert by["uses"]["status"] == "succeeded"

    steps = Path(outcome.run_dir) / "steps"
    ok_log = (steps / "ok.log").read_text()
    assert "=== ok attempt 1 started" in ok_log and "--- task 1/2: echo hello\nhello\n" in ok_log
    assert "--- acceptance test 2/2: echo checked\nchecked\n" in ok_log
    assert ok_log.endswith("=== ok attempt 1 succeeded ===\n")
    assert "before" in (steps / "bad-exit.log").read_text()
    assert "not found" in (steps / "missing.log").read_text()


def test_a_step_that_succeeds_silently_leaves_no_log_file(pool, make_workstream, run_workstream, project):
    """Creating a file costs up to 0.7 ms on ext4; a silent success needs none. A step that fails,
    prints, or runs a second attempt keeps its log."""
    path = make_workstream([
        {"id": "silent", "tasks": ["true", "sleep 0"]},
        {"id": "talks", "tasks": ["echo something"]},
        {"id": "fails-silently", "tasks": ["false"]},
        {"id": "retried", "tasks": ["test -f flag || { touch flag; exit 1; }"], "retries": 1,
         "retry_delay": 0},
    ], execution={"max_workers": 2})
    outcome, summary = run_workstream(path)
    by = steps_by_id(summary)
    steps = Path(outcome.run_dir) / "steps"

    assert by["silent"]["status"] == "succeeded" and not (steps / "silent.log").exists()
    assert (steps / "talks.log").read_text().count("something") == 2   # the task line and its output
    failed = (steps / "fails-silently.log").read_text()
    assert "--- task 1/1: false" in failed and failed.endswith("=== fails-silently attempt 1 failed ===\n")
    retried = (steps / "retried.log").read_text()
    assert "attempt 1 failed" in retried and retried.endswith("=== retried attempt 2 succeeded ===\n")


def test_plain_commands_and_shell_syntax_both_run(pool, make_workstream, run_workstream, project):
    """`printenv X` is exec'd directly (see `specs.shell_argv`); the others need the shell."""
    path = make_workstream([
        {"id": "direct", "tasks": ["printenv ORCHESTRATOR_STEP_ID"]},
        {"id": "shell", "tasks": ["echo $ORCHESTRATOR_STEP_ID > shell.out; cd / && pwd >> $OLDPWD/shell.out"]},
    ], execution={"max_workers": 2})
    outcome, summary = run_workstream(path)
    assert {s["status"] for s in summary["steps"]} == {"succeeded"}
    assert "--- task 1/1: printenv ORCHESTRATOR_STEP_ID\ndirect\n" in (
        Path(outcome.run_dir) / "steps" / "direct.log").read_text()
    assert (project / "shell.out").read_text() == "shell\n/\n"


def test_a_step_starts_with_the_signals_a_shell_gives_it(pool, make_workstream, run_workstream, project):
    """Python ignores SIGPIPE and SIGXFSZ, and a pool worker ignores SIGINT; a step inherits none of
    that: `yes | head -1` ends quietly, as it does from a shell, instead of "yes: ... Broken pipe".
    Its stdin is /dev/null."""
    import signal

    path = make_workstream([
        {"id": "status", "tasks": ["cat /proc/self/status > status.out",
                                   "readlink /proc/self/fd/0 > stdin.out", "cat > read.out"]},
        {"id": "pipe", "tasks": ["yes | head -1"]},
    ], execution={"max_workers": 2})
    outcome, summary = run_workstream(path)
    assert {s["status"] for s in summary["steps"]} == {"succeeded"}
    ignored = ignored_signals((project / "status.out").read_text())
    assert not ignored & {signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    assert (project / "stdin.out").read_text() == "/dev/null\n" and (project / "read.out").read_text() == ""
    log = (Path(outcome.run_dir) / "steps" / "pipe.log").read_text()
    assert "--- task 1/1: yes | head -1\ny\n" in log and "Broken pipe" not in log


def test_a_step_killed_by_a_signal_says_which(pool, make_workstream, run_workstream, project):
    """Killed directly, the step says by which signal; through a shell, which reports 128 + the
    signal as its exit code, the error says what that code means."""
    (project / "segv.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    py = "python3"   # found on PATH: a plain command, exec'd without a shell
    path = make_workstream([
        {"id": "direct", "tasks": [f"{py} segv.py"]},
        {"id": "shell", "tasks": [f"{py} segv.py; exit $?"]},
        {"id": "plain", "tasks": ["exit 200"]},
    ], execution={"max_workers": 2})
    outcome, summary = run_workstream(path)
    by = steps_by_id(summary)
    assert by["direct"]["exit_code"] == -11
    assert by["direct"]["error"] == f"killed by signal 11 (SIGSEGV) in task 1: `{py} segv.py`"
    assert by["shell"]["exit_code"] == 139
    assert by["shell"]["error"].startswith(
        "exit code 139 (128 + 11: how a shell reports a command killed by SIGSEGV) in task 1")
    assert by["plain"]["error"] == "exit code 200 in task 1: `exit 200`"


def test_a_step_sees_its_own_directory_in_pwd(pool, make_workstream, run_workstream, project):
    """`printenv PWD` is exec'd without a shell (which would set PWD): the step's environment says
    where it runs, not where the orchestrator was started. A PWD the step sets itself is kept."""
    (project / "sub").mkdir()
    path = make_workstream([
        {"id": "root", "tasks": ["printenv PWD"]},
        {"id": "sub", "cwd": "sub", "tasks": ["printenv PWD"]},
        {"id": "own", "env": {"PWD": "/somewhere"}, "tasks": ["printenv PWD"]},
    ], execution={"max_workers": 2})
    outcome, summary = run_workstream(path)
    assert {s["status"] for s in summary["steps"]} == {"succeeded"}
    steps = Path(outcome.run_dir) / "steps"

    def seen(sid: str) -> str:
        return (steps / f"{sid}.log").read_text().split("--- task 1/1: printenv PWD\n")[1].splitlines()[0]

    assert os.path.samefile(seen("root"), project) and os.path.samefile(seen("sub"), project / "sub")
    assert seen("own") == "/somewhere"


def test_a_signal_ignored_when_the_run_started_stays_ignored_in_its_steps(make_workstream, project):
    """As `nohup make` leaves its jobs immune to SIGHUP: what the orchestrator was started with
    ignored, its steps are too (a real process, started with SIGHUP ignored)."""
    import signal
    import subprocess
    import sys

    path = make_workstream([{"id": "status", "tasks": ["cat /proc/self/status > status.out"]}])
    start = ("import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
             "os.execv(sys.executable, [sys.executable, '-m', 'orchestrator', 'run', sys.argv[1], '-q'])")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", start, str(path)], cwd=project, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ignored = ignored_signals((project / "status.out").read_text())
    assert signal.SIGHUP in ignored and not ignored & {signal.SIGPIPE, signal.SIGINT}


@pytest.mark.parametrize("kind", POOLS)
def test_without_pidfds_steps_still_run_and_are_recorded(kind, monkeypatch, make_workstream,
                                                          run_workstream, project):
    """Linux before 5.3, gVisor or valgrind have no pidfd_open: each child's exit is then waited for
    by a thread, and a run's steps end, report their outputs, exit codes and timeouts as usual."""
    import errno
    import os

    from orchestrator import procs

    def no_pidfd(pid, flags=0):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setenv("ORCHESTRATOR_POOL", kind)
    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    monkeypatch.setattr(procs, "_NO_PIDFD", [])
    path = make_workstream([
        {"id": "a", "tasks": ["echo one"]},
        {"id": "b", "tasks": ["printf 'k=v\\n' >> \"$ORCHESTRATOR_OUTPUT\""], "depends_on": ["a"]},
        {"id": "c", "tasks": ["exit 4"], "depends_on": ["b"]},
        {"id": "slow", "tasks": ["sleep 5"], "timeout": 0.3},
    ])
    outcome, summary = run_workstream(path, grace=0.2)
    by = steps_by_id(summary)
    assert by["a"]["status"] == by["b"]["status"] == "succeeded" and by["b"]["outputs"] == {"k": "v"}
    assert by["c"]["status"] == "failed" and by["c"]["error"] == "exit code 4 in task 1: `exit 4`"
    assert by["slow"]["status"] == "timed_out"
    assert "one" in (Path(outcome.run_dir) / "steps" / "a.log").read_text()
    if kind == "inline":
        assert procs._NO_PIDFD == [True]   # the fallback is what ran


@pytest.mark.parametrize("through", ["_ctypes", "ctypes"])
def test_the_orchestrator_becomes_a_subreaper_with_or_without_ctypes_internals(through, monkeypatch):
    """prctl goes through `_ctypes` (no `ctypes` import at start-up) or, where that lacks dlsym or
    call_function, through `ctypes`; either way the flag is set, as a child process reads it back."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import ctypes, sys
        if {through == "ctypes"!r}:
            import _ctypes
            del _ctypes.call_function
        from orchestrator import procs
        assert procs.become_subreaper()
        flag = ctypes.c_int(0)
        ctypes.CDLL(None).prctl(37, ctypes.byref(flag), 0, 0, 0)   # PR_GET_CHILD_SUBREAPER
        print(flag.value)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_specs_built_ahead_run_as_specs_built_at_the_start(monkeypatch, make_workstream, run_workstream,
                                                           project):
    """The dispatcher builds the specs of the steps a started step would make ready while it runs.
    Every step still sees its own attempt number, its dependencies' outputs and its group's clock,
    and a spec built ahead is the one built at the start."""
    from orchestrator import dispatcher as D

    built_ahead, used = [], []
    original_submit = D.Dispatcher._submit

    def submit(self, sid, now, *, restart=False):
        prepared = self._prepared.get(sid)
        if prepared and prepared[0] == self.sched.attempt(sid):
            assert prepared[1] == self._spec(sid, prepared[0], now)
            used.append(sid)
        return original_submit(self, sid, now, restart=restart)

    original_prepare = D.Dispatcher._prepare_next

    def prepare(self):
        original_prepare(self)
        built_ahead.extend(sid for sid in self._prepared if sid not in built_ahead)

    monkeypatch.setattr(D.Dispatcher, "_submit", submit)
    monkeypatch.setattr(D.Dispatcher, "_prepare_next", prepare)
    log = project / "attempts.txt"
    path = make_workstream([
        {"id": "a", "tasks": ["printf 'k=v1\\n' >> \"$ORCHESTRATOR_OUTPUT\""]},
        {"id": "b", "tasks": [f"echo b $ORCHESTRATOR_ATTEMPT >> {log}"], "depends_on": ["a"]},
        {"id": "flaky", "depends_on": ["b"], "retries": 2, "retry_delay": 0,
         "tasks": [f"echo flaky $ORCHESTRATOR_ATTEMPT >> {log}; test $ORCHESTRATOR_ATTEMPT = 3"]},
        {"id": "uses", "tasks": ["test \"${steps.a.outputs.k}\" = v1"], "depends_on": ["flaky"]},
        {"id": "grouped", "tasks": ["true"], "depends_on": ["uses"]},
        {"id": "last", "tasks": [f"echo last $ORCHESTRATOR_ATTEMPT >> {log}"], "depends_on": ["grouped"]},
    ], step_groups=[{"id": "g", "steps": ["grouped"], "timeout": 30}])
    outcome, summary = run_workstream(path)
    by = steps_by_id(summary)
    assert all(s["status"] == "succeeded" for s in summary["steps"]), summary["steps"]
    assert by["flaky"]["attempts"] == 3
    assert log.read_text().split("\n")[:-1] == ["b 1", "flaky 1", "flaky 2", "flaky 3", "last 1"]
    # built ahead: the plain steps; not `uses` (fills in an output), nor `grouped` (its group's clock)
    assert {"b", "flaky", "last"} <= set(built_ahead) and not {"uses", "grouped"} & set(built_ahead)
    assert {"b", "flaky", "last"} <= set(used)


def test_what_was_built_ahead_for_steps_that_never_start_is_let_go(make_workstream, run_workstream,
                                                                  project, monkeypatch):
    """A failed step's dependents were got ready while it ran; once they are blocked, neither the
    dispatcher nor the pool keeps their specs, logs or environments."""
    from orchestrator import dispatcher as D

    kept = {}
    original_finish = D.Dispatcher._finish

    def finish(self):
        kept["dispatcher"], kept["pool"] = dict(self._prepared), dict(self.pool.prepared)
        return original_finish(self)

    monkeypatch.setattr(D.Dispatcher, "_finish", finish)
    path = make_workstream([{"id": "root", "tasks": ["exit 1"]},
                            *[{"id": f"d{i}", "tasks": ["true"], "depends_on": ["root"]} for i in range(6)]],
                           execution={"max_workers": 3})
    outcome, summary = run_workstream(path)
    assert {s["status"] for s in summary["steps"] if s["id"] != "root"} == {"blocked"}
    assert kept == {"dispatcher": {}, "pool": {}}


def test_a_step_started_before_its_dependency_is_recorded_ends_after_it(make_workstream, run_workstream):
    """A success's dependents start before its result is made (the scheduler learns of it first);
    its end is the time it ended, not the time its result was made: on a chain, each step starts
    after the one before it ended, and one step ran at a time."""
    path = make_workstream([{"id": f"s{i}", "tasks": ["true"], **({"depends_on": [f"s{i - 1}"]} if i else {})}
                            for i in range(12)], execution={"max_workers": 2})
    outcome, summary = run_workstream(path)
    steps = summary["steps"]
    assert all(s["status"] == "succeeded" for s in steps)
    for before, after in zip(steps, steps[1:]):
        assert after["started_at"] >= before["finished_at"], (before, after)
    assert summary["summary"]["max_concurrency"] == 1


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("shape", ["chain", "blocked", "cancelled"])
def test_a_run_leaves_no_descriptor_open(shape, make_workstream, run_workstream):
    """Pipes made ahead for the next steps are used by their first child, closed when the step will
    not start (blocked, cancelled) and by the pool's shutdown: a run leaves no descriptor behind."""
    if shape == "chain":
        steps = [{"id": f"s{i}", "tasks": ["true"], **({"depends_on": [f"s{i - 1}"]} if i else {})}
                 for i in range(8)]
        execution = {"max_workers": 2}
    else:
        steps = [{"id": "root", "tasks": ["exit 1" if shape == "blocked" else "sleep 30"],
                  **({"timeout": 0.3} if shape == "cancelled" else {})},
                 *[{"id": f"d{i}", "tasks": ["true"], "depends_on": ["root"]} for i in range(4)],
                 {"id": "other", "tasks": ["sleep 30"]}]
        execution = {"max_workers": 3, "on_failure": "fail_all"}
    path = make_workstream(steps, execution=execution)
    before = _open_fds()
    outcome, summary = run_workstream(path, grace=0.2)
    statuses = {s["id"]: s["status"] for s in summary["steps"]}
    if shape == "chain":
        assert set(statuses.values()) == {"succeeded"}
    else:
        assert {statuses[f"d{i}"] for i in range(4)} <= {"blocked", "skipped"}
    assert _open_fds() - before == set()


@pytest.mark.timeout(60)
def test_a_pipe_made_ahead_is_not_kept_open_by_a_python_worker(make_workstream, run_workstream, project):
    """Python steps run on forked pool workers, and a fork copies every descriptor: a worker forked
    while a pipe made ahead for a shell step existed would hold its write end, and that step's
    output would never end. The pipes made ahead go before the first fork."""
    (project / "pymod.py").write_text("def answer():\n    return 42\n")
    path = make_workstream([
        {"id": "slow", "tasks": ["sleep 0.5"]},
        {"id": "after-slow", "tasks": ["echo done"], "depends_on": ["slow"], "timeout": 20},
        {"id": "quick", "tasks": ["true"]},
        {"id": "py", "tool": "python", "callable": "pymod:answer", "depends_on": ["quick"]},
    ], execution={"max_workers": 3})
    outcome, summary = run_workstream(path)
    statuses = {s["id"]: s["status"] for s in summary["steps"]}
    assert statuses == dict.fromkeys(["slow", "after-slow", "quick", "py"], "succeeded"), summary["steps"]


@pytest.mark.parametrize("ending", ["finished", "crashed"])
def test_the_guardian_is_gone_when_the_run_returns(ending, monkeypatch, make_workstream, run_workstream):
    """The pool's shutdown lets its guardian exit while the results are written; by the time the run
    returns (or raises), it is reaped: no child of ours, not even a zombie, is left."""
    from orchestrator import dispatcher, procs
    started: list[int] = []
    real_start = procs.start_guardian

    def start(run_id):
        pid = real_start(run_id)
        started.append(pid)
        return pid
    monkeypatch.setattr(procs, "start_guardian", start)
    if ending == "crashed":
        def broken(self):
            raise RuntimeError("the finish broke")
        monkeypatch.setattr(dispatcher.Dispatcher, "_finish", broken)
    before = set(procs.own_children())
    path = make_workstream([{"id": "a", "tasks": ["true"]}, {"id": "b", "tasks": ["true"],
                                                             "depends_on": ["a"]}])
    if ending == "crashed":
        with pytest.raises(RuntimeError):
            run_workstream(path)
    else:
        outcome, summary = run_workstream(path)
        assert [s["status"] for s in summary["steps"]] == ["succeeded", "succeeded"]
    assert len(started) == 1 and started[0] is not None
    assert set(procs.own_children()) - before == set()
    with pytest.raises(ChildProcessError):   # reaped: not even a zombie waits for us
        os.waitpid(started[0], os.WNOHANG)


_SCHED = ("se.exec_start                                :      12.345\n"
          "se.avg.util_avg                              :      {util}\n"
          "se.avg.util_est                              :       0\n")   # as /proc/thread-self/sched


@pytest.mark.parametrize("util, rest", [(1023, 0.032 * 1.3547), (700, 0.032 * 0.8074), (699, 0.0), (0, 0.0)])
def test_the_loop_rests_before_spawning_only_when_its_cpu_reads_busy(util, rest, tmp_path):
    from orchestrator import procs
    sched = tmp_path / "sched"
    sched.write_text(_SCHED.format(util=util))
    assert procs.settle_time(str(sched)) == pytest.approx(rest, abs=1e-4)


@pytest.mark.parametrize("text", [None, "", "se.avg.util_avg : many\n"])
def test_no_rest_where_the_kernel_does_not_show_its_load_tracking(text, tmp_path):
    from orchestrator import procs
    sched = tmp_path / "sched"
    if text is not None:
        sched.write_text(text)
    assert procs.settle_time(str(sched)) == 0.0


@pytest.mark.parametrize("pool_kind, steps, rests", [("inline", 3, True), ("inline", 2, False),
                                                     ("workers", 3, False)])
def test_a_long_run_on_the_inline_pool_rests_once_before_its_first_spawn(pool_kind, steps, rests, monkeypatch,
                                                                       make_workstream, run_workstream):
    """procs.settle_before_spawning: the rest comes after the pool is made and before any step starts."""
    from orchestrator import dispatcher, procs
    monkeypatch.setenv("ORCHESTRATOR_POOL", pool_kind)
    monkeypatch.setattr(procs, "SETTLE_MIN_STEPS", 3)
    monkeypatch.setattr(procs, "settle_time", lambda: 0.001)
    events = []
    real_sleep, real_submit = procs.time.sleep, dispatcher.Dispatcher._submit
    monkeypatch.setattr(procs.time, "sleep", lambda s: (events.append(("rest", s)), real_sleep(s)))
    def submit(self, sid, *a, **k):
        events.append(("start", sid))
        return real_submit(self, sid, *a, **k)
    monkeypatch.setattr(dispatcher.Dispatcher, "_submit", submit)
    path = make_workstream([{"id": f"s{i}", "tasks": ["true"]} for i in range(steps)])
    outcome, summary = run_workstream(path)
    assert [s["status"] for s in summary["steps"]] == ["succeeded"] * steps
    # time.sleep is patched for the whole process: only the loop's rest has this length
    rest = [i for i, e in enumerate(events) if e == ("rest", 0.001)]
    starts = [i for i, e in enumerate(events) if e[0] == "start"]
    assert len(starts) == steps
    assert rest == ([0] if rests else [])
