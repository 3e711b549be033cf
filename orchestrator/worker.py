"""Runs one attempt of one step inside a pool process; owns the step's process tree; never raises.

Data flow::

    dispatcher --StepSpec--> run_step() in a pool worker
        for each task / acceptance test: a child in its own session, stdout+stderr -> one pipe
        select() on [pipe, pidfd] until the child exits, the deadline passes or the run is cancelled
        pipe bytes -> LogSink -> steps/<id>.log   (as produced; secrets masked; head+tail capped)
    run_step() --StepResult--> dispatcher

Waiting uses a pidfd and the pipe in one `select`, so a step that ends is noticed at once (no polling
sleeps); the deadline is the select timeout, so a timeout fires on time. The select also wakes every
`CANCEL_CHECK` seconds to look for the run's cancel flag (a file for local runs; an injected probe on
Dask). Ending a child for any reason ends its whole tree (`procs.kill_tree`), and since the pool worker
is a child subreaper, descendants that escaped with `setsid` or a double fork are found too.
`python` tasks run in a forked child as well, so a callable that never returns is killed like any
command and cannot wedge the pool worker.
"""
from __future__ import annotations

import json
import os
import select
import signal
import sys
import time

from . import procs
from .attempt import (RSS_SAMPLE_EVERY, LogSink, Ran, Verdict, base_env, build_result, judge_task,
                      judge_test, keep_log, note_spawn_error, own_hwm)
from .model import StepResult, StepSpec, StepStatus, Task, TestResult

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

CANCEL_CHECK = 0.1
_progress_fd: int | None = None
_announce_start = True    # a pool that knows which worker runs which step needs no "start" event
_cancel_probe: Callable[[StepSpec], str | None] | None = None   # returns None | "grace" | "now"
_initial_ppid: int | None = None


# --- pool worker set-up ---------------------------------------------------------------------------

def init_worker(progress_fd: int | None = None, probe: Callable | None = None,
                announce_start: bool = True) -> None:
    """Pool initializer: become a subreaper, die with the orchestrator, ignore the terminal's Ctrl-C.

    Ctrl-C goes to the whole foreground process group; the dispatcher alone decides what it means,
    and tells workers through the cancel flag.
    """
    global _progress_fd, _cancel_probe, _initial_ppid, _announce_start
    _progress_fd = progress_fd
    _announce_start = announce_start
    _cancel_probe = probe
    _initial_ppid = os.getppid()
    procs.step_signals()   # what its steps start with: before SIGINT is ignored here
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    procs.become_subreaper()
    procs.die_with_parent(signal.SIGTERM)
    if os.getppid() != _initial_ppid:  # the parent died before prctl took effect
        _on_sigterm(signal.SIGTERM, None)


def _on_sigterm(signum, frame) -> None:  # pragma: no cover - exercised through real signals
    """The orchestrator died or the pool is being torn down: take the running step's tree along."""
    try:
        procs.kill_tree(os.getpid(), grace=0.5)
    finally:
        os._exit(128 + signum)


def _emit(*event: Any) -> None:
    if _progress_fd is None:
        return
    try:
        os.write(_progress_fd, (json.dumps(event) + "\n").encode())  # < PIPE_BUF: atomic
    except OSError:
        pass


def file_probe(spec: StepSpec) -> str | None:
    """The local cancel flag: `<cancel_dir>/now`, `<cancel_dir>/all` or `<cancel_dir>/<step-id>`.

    One stat of the directory per check; it is listed only when its mtime says a flag was raised.
    """
    d = spec.cancel_dir
    if not d:
        return None
    try:
        if os.stat(d).st_mtime_ns == _probe_seen.get(d):
            return None
        names = set(os.listdir(d))
    except OSError:
        return None
    if "now" in names:
        return "now"
    if "all" in names or spec.step_id in names:
        return "grace"
    if not names:
        _probe_seen[d] = os.stat(d).st_mtime_ns
    return None


_probe_seen: dict[str, int] = {}   # cancel dir -> mtime at which it was seen empty


def _spawn_python(task: Task, spec: StepSpec, env: dict[str, str], wfd: int, result_path: str) -> int:
    pid = os.fork()
    if pid:
        return pid
    # the child: never returns
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.dup2(wfd, 1)
        os.dup2(wfd, 2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.chdir(spec.cwd)
        os.environ.update(env)
        from . import USER_DONT_WRITE_BYTECODE
        sys.dont_write_bytecode = USER_DONT_WRITE_BYTECODE
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        if spec.project_root not in sys.path:
            sys.path.insert(0, spec.project_root)
        mod_name, _, fn_name = (task.callable or "").partition(":")
        import importlib
        import inspect
        fn = getattr(importlib.import_module(mod_name), fn_name)
        kwargs = dict(task.kwargs)
        try:
            params = inspect.signature(fn).parameters
            takes_inputs = "inputs" in params or any(
                p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        except (TypeError, ValueError):
            takes_inputs = False
        if takes_inputs:
            kwargs["inputs"] = dict(task.inputs)
        value = fn(*task.args, **kwargs)
        try:
            blob = json.dumps({"ok": True, "value": value})
        except (TypeError, ValueError) as e:
            blob = json.dumps({"ok": False, "error": f"return value is not JSON-serialisable: {e}"})
        with os.fdopen(os.open(result_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(blob)
        code = 0
    except BaseException as e:  # the step's own failure: report it, never let it escape the fork
        try:
            import traceback
            traceback.print_exc()
            with open(result_path, "w") as f:
                json.dump({"ok": False, "error": f"{type(e).__name__}: {e}"}, f)
        except BaseException:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _run_child(task: Task, spec: StepSpec, env: dict[str, str], deadline: float, sink: LogSink,
               cancel_state: list, result_path: str | None = None) -> Ran:
    rfd, wfd = os.pipe()
    try:
        if task.callable:
            pid = _spawn_python(task, spec, env, wfd, result_path or os.devnull)
        else:
            try:
                pid = _spawn(task.argv, env, wfd)
            except OSError as e:
                note_spawn_error(sink, task, e)
                return Ran(127, "spawn_error")
    finally:
        os.close(wfd)
    return _supervise(pid, rfd, spec, deadline, sink, cancel_state)


def _spawn(argv: tuple[str, ...], env: dict[str, str], wfd: int) -> int:
    """`procs.spawn` with the step's environment over ours; the worker has already chdir'ed to the
    step's cwd."""
    full_env = base_env()
    full_env.update(env)
    stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return procs.spawn(argv, full_env, wfd, stdin)
    finally:
        os.close(stdin)


def _supervise(pid: int, rfd: int, spec: StepSpec, deadline: float, sink: LogSink,
               cancel_state: list) -> Ran:
    pidfd = procs.exit_fd(pid)
    poller = select.poll()   # one syscall a wait (a selector would add epoll set-up per child)
    poller.register(rfd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    exited = eof = False
    outcome = "exited"
    peak = 0
    next_sample = time.monotonic() + RSS_SAMPLE_EVERY / 10
    try:
        while not (exited and eof):
            now = time.monotonic()
            if now >= next_sample and not exited:
                # fork/vfork children inherit the worker's RSS high-water mark in ru_maxrss, so the
                # step's own memory is sampled from /proc on the wakeups we have anyway
                peak = max(peak, procs.tree_rss(os.getpid()))
                next_sample = now + RSS_SAMPLE_EVERY
            if now >= deadline:
                outcome = "timeout"
                break
            mode = (_cancel_probe or file_probe)(spec)
            if mode:
                cancel_state[0] = mode
                outcome = "cancelled"
                break
            wait_ms = max(0, min(deadline - now, CANCEL_CHECK)) * 1000
            for fd, _ in poller.poll(wait_ms):
                if fd == rfd:
                    data = os.read(rfd, 65536)
                    if data:
                        sink.write(data)
                    else:
                        eof = True
                        poller.unregister(rfd)
                else:
                    exited = True
                    poller.unregister(pidfd)
            if exited and not eof:
                if not _drain(rfd, sink):
                    # the leader is gone but something it started still holds the pipe: the step
                    # is over, so its leftovers go (nothing outlives its step); then read the rest
                    procs.kill_tree(os.getpid(), pgids=[pid], grace=min(spec.grace, 1.0), reap=False)
                    _drain(rfd, sink)
                eof = True
        if outcome != "exited":
            grace = 0.0 if cancel_state[0] == "now" else spec.grace
            procs.kill_tree(os.getpid(), pgids=[pid], grace=grace, reap=False)
            _drain(rfd, sink)
        _, status, ru = os.wait4(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        if procs.has_children():  # leftovers that left the process group: end them too
            procs.kill_tree(os.getpid(), grace=min(spec.grace, 1.0))
        maxrss = ru.ru_maxrss * 1024
        if maxrss > own_hwm() * 1.1:  # above what the fork inherited: the step's own peak
            peak = max(peak, maxrss)
        return Ran(rc, outcome, peak, ru.ru_utime + ru.ru_stime)
    finally:
        os.close(pidfd)
        os.close(rfd)


def _drain(rfd: int, sink: LogSink) -> bool:
    """Read what is there without waiting; True when the pipe reached EOF."""
    os.set_blocking(rfd, False)
    try:
        while True:
            data = os.read(rfd, 65536)
            if not data:
                return True
            sink.write(data)
    except (BlockingIOError, OSError):
        return False


# --- one attempt ----------------------------------------------------------------------------------

def run_step(spec: StepSpec) -> StepResult:
    """Run one attempt of a step. Never raises: every outcome, even our own bug, is a StepResult."""
    started = time.time()
    try:
        return _run_step(spec, started)
    except BaseException as e:  # noqa: BLE001 - a worker must never raise
        return StepResult(spec.step_id, spec.attempt, StepStatus.FAILED,
                          error=f"internal error in the worker: {type(e).__name__}: {e}",
                          started_at=started, finished_at=time.time(), worker=f"local:{os.getpid()}")


def _run_step(spec: StepSpec, started: float) -> StepResult:
    if _announce_start:
        _emit("start", spec.step_id, spec.attempt, os.getpid(), started)
    os.chdir(spec.cwd)  # children start here (posix_spawn has no cwd of its own)
    deadline = time.monotonic() + spec.timeout
    sink = LogSink(spec.log_path, spec.max_log_bytes, spec.secrets, append=spec.attempt > 1)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
    header = f"=== {spec.step_id} attempt {spec.attempt} started {stamp} ===\n"
    env = dict(spec.env)
    env["ORCHESTRATOR_OUTPUT"] = spec.output_path
    try:  # the step creates it when it has outputs (a stale one from an earlier attempt must go)
        os.unlink(spec.output_path)
    except FileNotFoundError:
        pass
    result_path = spec.output_path + ".return.json"
    v = Verdict()
    cancel_state: list = [None]
    n = len(spec.tasks)
    try:
        for i, task in enumerate(spec.tasks, 1):
            if n > 1:
                _emit("task", spec.step_id, i, n)
            sink.note(f"{header}--- task {i}/{n}: {task.label}")
            header = ""
            ran = _run_child(task, spec, env, deadline, sink, cancel_state, result_path)
            judge_task(v, spec, i, task, ran, ran.rc != 0 and _cancelled(spec, cancel_state),
                       result_path)
            if v.status is not StepStatus.SUCCEEDED:
                break
        if header:  # no tasks: the header still opens the log
            sink.note(header.rstrip("\n"))
        if v.status is StepStatus.SUCCEEDED:
            _acceptance(spec, env, deadline, sink, cancel_state, v)
    finally:
        sink.note(f"=== {spec.step_id} attempt {spec.attempt} {v.status.value} ===")
        sink.close(keep=keep_log(spec, v.status))
        try:
            os.unlink(result_path)
        except OSError:
            pass
    return build_result(spec, started, v, sink, f"local:{os.getpid()}")


def _acceptance(spec: StepSpec, env: dict[str, str], deadline: float, sink: LogSink,
                cancel_state: list, v: Verdict) -> None:
    n = len(spec.acceptance_tests)
    for i, test in enumerate(spec.acceptance_tests, 1):
        if v.status in (StepStatus.TIMED_OUT, StepStatus.CANCELLED):
            v.tests.append(TestResult(test.label, "not_run", None, 0.0))
            continue
        sink.note(f"--- acceptance test {i}/{n}: {test.label}")
        mark = len(sink.recent)
        t0 = time.monotonic()
        ran = _run_child(test, spec, env, deadline, sink, cancel_state)
        judge_test(v, spec, i, test, ran, time.monotonic() - t0, sink, mark,
                   ran.rc != 0 and _cancelled(spec, cancel_state))


def _cancelled(spec: StepSpec, cancel_state: list) -> bool:
    """Whether the run cancelled this step (a child killed by the dispatcher's second Ctrl-C dies
    before the worker sees the flag: its death is the cancellation, not a failure)."""
    if cancel_state[0] is None:
        cancel_state[0] = (_cancel_probe or file_probe)(spec)
    return cancel_state[0] is not None
