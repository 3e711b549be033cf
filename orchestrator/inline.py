"""The default local pool: shell steps run straight from the dispatcher's own loop, as make runs jobs.

A pool worker between the dispatcher and a step's processes costs a pickled spec, two pipe hops and
a process that competes for the CPU: measured on the 2-core reference machine, 1000 `true` steps took
1.1-1.5 s through `workerpool.WorkerPool` against 0.35 s for `make -j2`. Here each attempt of a
shell step is a small state machine (`_Attempt`) whose descriptors the dispatcher selects on::

    submit(spec) -> for each task, then each acceptance test: posix_spawn, stdout+stderr -> a pipe
    pipe readable   -> LogSink (as produced; secrets masked; head+tail capped; created lazily)
    pidfd readable  -> wait4 (exit status, CPU time); the next child, or the StepResult
    deadline / cancel -> a killer thread ends the tree (SIGTERM, grace, SIGKILL) while the loop goes on

It decides exactly as `worker.run_step` does (the same `attempt` helpers judge each child and build the
result), so a step gets the same record either way. `python` steps, which need a fork of their own,
go to a `WorkerPool` made on first use.

Nothing is leaked: the orchestrator is a child subreaper, so what a step leaves behind re-parents to
it; within `ORPHAN_SWEEP` of a step's end such orphans are found by the `ORCHESTRATOR_STEP_ID` in
their environment and ended (what still holds the step's output is ended at once, see `kill`). A
guardian process forked at start (`procs.start_guardian`) gets a signal when the orchestrator dies,
even by SIGKILL, and ends every process that carries this run's id.
"""
from __future__ import annotations

import os
import time
from _functools import partial

from . import procs
from .lean import Thread, dumps
from .model import StepResult, StepSpec, StepStatus, Task, TestResult
from .attempt import (RSS_SAMPLE_EVERY, LogSink, Ran, Verdict, base_env, build_result, judge_task,
                      judge_test, keep_log, note_spawn_error, own_hwm)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

ORPHAN_SWEEP = 0.05  # how soon after a step's end what it left behind is found and ended


class Outcome:
    """The part of `concurrent.futures.Future` the dispatcher uses, without importing it (5 ms)
    or taking a lock: an inline attempt is completed in the loop's own thread.

    `set_lazy` completes it with the attempt's status at once and its StepResult made on the first
    `result()`: the dispatcher may start the steps a success makes ready before that (`early`)."""

    __slots__ = ("_result", "_make", "_done", "_callbacks", "early")

    def __init__(self) -> None:
        self._result: StepResult | None = None
        self._make: Callable[[], StepResult] | None = None
        self._done = False
        self._callbacks: list[Callable[["Outcome"], None]] = []
        self.early: StepStatus | None = None   # the status, known before the result is made

    def add_done_callback(self, fn: Callable[["Outcome"], None]) -> None:
        if self._done:
            fn(self)
        else:
            self._callbacks.append(fn)

    def set_result(self, result: StepResult) -> None:
        self._result = result
        self._completed()

    def set_lazy(self, status: StepStatus, make: Callable[[], StepResult]) -> None:
        self.early, self._make = status, make
        self._completed()

    def _completed(self) -> None:
        self._done = True
        for fn in self._callbacks:
            fn(self)
        self._callbacks.clear()

    def done(self) -> bool:
        return self._done

    def result(self) -> StepResult:
        if self._make is not None:
            make, self._make = self._make, None
            self._result = make()
        if not self._done or self._result is None:
            raise RuntimeError("the step has not ended")
        return self._result


class _Child:
    __slots__ = ("pid", "pidfd", "rfd", "exited", "eof", "t0", "mark", "killers")

    def __init__(self, pid: int, pidfd: int, rfd: int, mark: int):
        self.pid, self.pidfd, self.rfd = pid, pidfd, rfd
        self.exited = self.eof = False
        self.t0 = time.monotonic()
        self.mark = mark
        self.killers = 0


def _sink_and_env(spec: StepSpec) -> tuple[LogSink, dict[str, str]]:
    """What an attempt needs of its spec alone: its log (not created until written) and its
    environment."""
    env = base_env()
    env.update(spec.env)
    env["ORCHESTRATOR_OUTPUT"] = spec.output_path
    return LogSink(spec.log_path, spec.max_log_bytes, spec.secrets, append=spec.attempt > 1), env


# a log's own lines, made only when the log file is (LogSink.note): from values, not from the
# attempt (a function holding it would make a reference cycle of every attempt)
def _first_line(step_id: str, attempt: int, started: float, then: Callable[[], str] | None) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
    head = f"=== {step_id} attempt {attempt} started {stamp} ==="
    return head if then is None else f"{head}\n{then()}"


def _task_line(index: int, count: int, label: str) -> str:
    return f"--- task {index}/{count}: {label}"


def _end_line(step_id: str, attempt: int, status: str) -> str:
    return f"=== {step_id} attempt {attempt} {status} ==="


class _Attempt:
    """One attempt of one shell step, advanced by the pool's `poll`. Made when its spec is
    prepared (or submitted); `begin` starts its clock and its first child."""

    def __init__(self, pool: "InlinePool", spec: StepSpec):
        self.pool, self.spec = pool, spec
        self.fut: Outcome | None = None
        self.started = 0.0
        self.deadline = self.next_sample = float("inf")
        self.sink, self.env = _sink_and_env(spec)
        self.opened = False                   # the log's first line ("=== ... started") noted
        self.verdict = Verdict()
        self.stop: str | None = None          # None | "timeout" | "cancelled"
        self.stop_now = False
        self.child: _Child | None = None
        self.index = 0                        # children started so far (tasks, then tests)
        self.testing = False
        self.peak = 0
        self.spare: tuple[int, int] | None = None   # a pipe made ahead, for the first child

    def discard(self) -> None:
        """An attempt that will not begin (or its pipe must go): what it made ahead goes."""
        spare, self.spare = self.spare, None
        for fd in spare or ():
            os.close(fd)

    def begin(self, fut: Outcome) -> None:
        spec = self.spec
        self.fut = fut
        self.started = time.time()
        now = time.monotonic()
        self.deadline = now + spec.timeout
        self.next_sample = now + RSS_SAMPLE_EVERY / 10
        if spec.attempt > 1:  # a stale outputs file of an earlier attempt must go
            try:
                os.unlink(spec.output_path)
            except FileNotFoundError:
                pass
        self.advance()

    def _note(self, line: Callable[[], str] | None) -> None:
        """Note `line`, after the log's first line if that is still to come (None: only that)."""
        if not self.opened:
            self.opened = True
            self.sink.note(partial(_first_line, self.spec.step_id, self.spec.attempt, self.started, line))
        elif line is not None:
            self.sink.note(line)

    # --- children -----------------------------------------------------------------------------------
    def advance(self) -> None:
        """Start the next child, or finish. Called at submit and whenever a child has ended."""
        spec, v = self.spec, self.verdict
        n_tasks, n_tests = len(spec.tasks), len(spec.acceptance_tests)
        while True:
            i = self.index
            self.index += 1
            if i < n_tasks:
                if v.status is not StepStatus.SUCCEEDED:
                    continue
                if n_tasks > 1:
                    self.pool.progress(spec.step_id, i + 1, n_tasks)
                self._note(partial(_task_line, i + 1, n_tasks, spec.tasks[i].label))
                if self._spawn(spec.tasks[i]):
                    return
            elif i < n_tasks + n_tests:
                if i == n_tasks:
                    self._note(None)   # no tasks: the first line still opens the log
                    self.testing = v.status is StepStatus.SUCCEEDED
                if not self.testing:
                    continue          # the tasks did not succeed: no acceptance tests
                j = i - n_tasks
                test = spec.acceptance_tests[j]
                if v.status in (StepStatus.TIMED_OUT, StepStatus.CANCELLED):
                    v.tests.append(TestResult(test.label, "not_run", None, 0.0))
                    continue
                self.sink.note(f"--- acceptance test {j + 1}/{n_tests}: {test.label}")
                if self._spawn(test):
                    return
            else:
                self._note(None)
                self._finish()
                return

    def _spawn(self, task: Task) -> bool:
        """Start `task`; False when it could not start (already judged, go on to the next)."""
        rfd, wfd = self.spare or os.pipe()
        self.spare = None
        try:
            pid = self.pool.spawn(task.argv, self.env, wfd, self.spec.cwd)
        except OSError as e:
            os.close(rfd)
            note_spawn_error(self.sink, task, e)
            self._judge(task, Ran(127, "spawn_error"), 0.0, len(self.sink.recent))
            return False
        finally:
            os.close(wfd)
        self.child = _Child(pid, procs.exit_fd(pid), rfd, len(self.sink.recent))
        self.pool.watch(self.child.rfd, self)
        self.pool.watch(self.child.pidfd, self)
        if self.stop:  # stopped between two children: this one goes at once
            self._kill(self.stop_now)
        return True

    def on_ready(self, fd: int) -> None:
        c = self.child
        if c is None:
            return
        if fd == c.rfd:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            if data:
                self.sink.write(data)
                return
            c.eof = True
            self.pool.unwatch(fd)
        elif fd == c.pidfd:
            c.exited = True
            self.pool.unwatch(fd)
            if not c.eof and not self._drain():
                # the leader is gone but something it started still holds the pipe: the step is
                # over, so its leftovers go (nothing outlives its step); EOF follows their end
                self.pool.kill(self, c.pid, min(self.spec.grace, 1.0), leader=False)
        if c.exited and c.eof:
            self._reap()

    def _drain(self) -> bool:
        c = self.child
        assert c is not None
        os.set_blocking(c.rfd, False)
        try:
            while True:
                data = os.read(c.rfd, 65536)
                if not data:
                    c.eof = True
                    self.pool.unwatch(c.rfd)
                    return True
                self.sink.write(data)
        except (BlockingIOError, OSError):
            return False

    def _reap(self) -> None:
        c = self.child
        assert c is not None
        self.child = None
        _, status, ru = os.wait4(c.pid, 0)
        self.pool.closing += (c.pidfd, c.rfd)   # closed before the loop waits (fds), after what starts next
        self.pool.step_ended()
        maxrss = ru.ru_maxrss * 1024
        if maxrss > self.pool.hwm * 1.1:  # above what the vfork inherited: the step's own peak
            self.peak = max(self.peak, maxrss)
        ran = Ran(os.waitstatus_to_exitcode(status), self.stop or "exited", self.peak,
                   ru.ru_utime + ru.ru_stime)
        task = self._current_task()
        self._judge(task, ran, time.monotonic() - c.t0, c.mark)
        self.advance()

    def _current_task(self) -> Task:
        i = self.index - 1
        n = len(self.spec.tasks)
        return self.spec.tasks[i] if i < n else self.spec.acceptance_tests[i - n]

    def _judge(self, task: Task, ran: Ran, took: float, mark: int) -> None:
        i = self.index - 1
        n = len(self.spec.tasks)
        cancelled = self.stop == "cancelled"
        if i < n:
            judge_task(self.verdict, self.spec, i + 1, task, ran, cancelled)
        else:
            judge_test(self.verdict, self.spec, i - n + 1, task, ran, took, self.sink, mark, cancelled)

    def _finish(self) -> None:
        spec, v = self.spec, self.verdict
        self.sink.note(partial(_end_line, spec.step_id, spec.attempt, v.status.value))
        self.sink.close(keep=keep_log(spec, v.status))
        self.pool.done(self)
        # the result (the outputs file read, the StepResult) is made when the dispatcher asks: a
        # success's dependents may start first
        self.fut.set_lazy(v.status, partial(build_result, spec, self.started, v, self.sink, "local",
                                            time.time()))

    # --- timers and stopping -------------------------------------------------------------------------
    def wake_at(self) -> float:
        return min(self.deadline, self.next_sample) if self.stop is None else self.next_sample

    def on_timer(self, now: float) -> None:
        c = self.child
        if c is None:
            return
        if now >= self.next_sample:
            if not c.exited:
                self.peak = max(self.peak, procs.tree_rss(c.pid) + procs.rss(c.pid))
            self.next_sample = now + RSS_SAMPLE_EVERY
        if now >= self.deadline and self.stop is None:
            self.request_stop("timeout", now=False)

    def request_stop(self, why: str, now: bool) -> None:
        if self.stop is not None and (self.stop_now or not now):
            return
        self.stop = self.stop or why
        self.stop_now = self.stop_now or now
        if self.child is not None and not self.child.exited:
            self._kill(now)

    def _kill(self, now: bool) -> None:
        c = self.child
        assert c is not None
        self.pool.kill(self, c.pid, 0.0 if now else self.spec.grace, leader=True)


class InlinePool:
    """Runs shell steps in the calling process's loop (see the module doc); `python` steps on a
    `WorkerPool`. The same face as `pool.LocalPool`."""

    name = "process"
    spawns_here = True   # steps are spawned by this process's loop (see procs.settle_before_spawning)

    def __init__(self, workers: int, progress_fd: int | None, run_id: str = ""):
        self.workers = workers
        self.progress_fd = progress_fd
        self.run_id = run_id
        self._fds: dict[int, _Attempt] = {}
        self._running: dict[Any, _Attempt] = {}   # by Outcome
        self._py = None                     # a LocalPool, for `python` steps, made on first use
        self._killers: list[Thread] = []
        self._cwd = os.getcwd()
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)   # every step's stdin
        self.hwm = own_hwm()
        self.broken = False
        self.guardian = procs.start_guardian(run_id) if run_id else None
        self._stopped_guardian: int | None = None
        self._sweep_at: float | None = None     # when to look for what ended steps left behind
        self.prepared: dict[int, _Attempt] = {}   # by id(spec), see prepare
        self.closing: list[int] = []            # pidfds and pipes of reaped children (fds)

    # --- the pool face ------------------------------------------------------------------------------
    def submit(self, spec: StepSpec, callback: Callable[[Any], None]) -> Any:
        if any(t.callable for t in spec.tasks):
            if self._py is None:
                self._drop_spares()   # before its workers are forked
                from .pool import LocalPool
                self._py = LocalPool(self.workers, self.progress_fd)
            return self._py.submit(spec, callback)
        fut = Outcome()
        fut.add_done_callback(callback)
        try:
            att = self.prepared.pop(id(spec), None)
            if att is None or att.spec is not spec:
                if att is not None:
                    att.discard()
                att = _Attempt(self, spec)
            self._running[fut] = att
            att.begin(fut)
        except BaseException as e:  # noqa: BLE001 - as a worker: every outcome is a result
            self._running.pop(fut, None)
            if not fut.done():
                t = time.time()
                fut.set_result(StepResult(spec.step_id, spec.attempt, StepStatus.FAILED,
                                          error=f"internal error: {type(e).__name__}: {e}",
                                          started_at=t, finished_at=t, worker="local"))
        return fut

    def prepare(self, spec: StepSpec) -> None:
        """Make a spec's attempt (its log, environment and first pipe) before it is submitted: the
        dispatcher builds the specs of the steps about to become ready while others run."""
        if not any(t.callable for t in spec.tasks):
            self.forget(spec)   # made ahead before: that one goes
            att = self.prepared[id(spec)] = _Attempt(self, spec)
            spares = sum(a.spare is not None for a in self.prepared.values())
            if spares < self.workers and self._py is None:   # ~7 us off a chain's next spawn
                att.spare = os.pipe()

    def _drop_spares(self) -> None:
        """Close the pipes made ahead. A fork copies every descriptor: a forked process holding the
        write end of one would keep that step's output from ever ending."""
        for att in self.prepared.values():
            att.discard()

    def forget(self, spec: StepSpec) -> None:
        """A prepared spec that will not be submitted."""
        att = self.prepared.pop(id(spec), None)
        if att is not None:
            att.discard()

    def fds(self) -> list[int]:
        """What to wait on; first, the descriptors of the children reaped since the last wait go."""
        if self.closing:
            self._close_reaped()
        return [*self._fds, *(self._py.fds() if self._py is not None else ())]

    def _close_reaped(self) -> None:
        closing, self.closing = self.closing, []
        for fd in closing:
            os.close(fd)

    def wait_hint(self, now: float) -> float | None:
        """Seconds until the next deadline or memory sample of a running step, or orphan sweep."""
        due = min((a.wake_at() for a in self._running.values()), default=None)
        if self._sweep_at is not None and (due is None or self._sweep_at < due):
            due = self._sweep_at
        return None if due is None else max(0.0, due - now)

    def poll(self, ready) -> None:
        for fd in ready:
            att = self._fds.get(fd)
            if att is not None:
                att.on_ready(fd)
        if self._running or self._sweep_at is not None:
            now = time.monotonic()
            for att in list(self._running.values()):
                if now >= att.wake_at():
                    att.on_timer(now)
            self._sweep(now)
        if self._py is not None:
            self._py.poll(ready)

    def cancel(self, what: str) -> None:
        """"all" (with the grace), "now" (at once) or one step id (with the grace)."""
        for att in list(self._running.values()):
            if what in ("all", "now") or att.spec.step_id == what:
                att.request_stop("cancelled", now=what == "now")

    def worker_pids(self) -> list[int]:
        pids = [a.child.pid for a in self._running.values() if a.child is not None]
        if self.guardian is not None:
            pids.append(self.guardian)
        if self._py is not None:
            pids.extend(self._py.worker_pids())
        return pids

    def worker_running(self, fut: Any) -> int | None:
        att = self._running.get(fut)
        if att is not None:
            return att.child.pid if att.child is not None else None
        return self._py.worker_running(fut) if self._py is not None else None

    def exit_codes(self) -> dict[int, int | None]:
        return self._py.exit_codes() if self._py is not None else {}

    def replace(self) -> None:
        """Nothing here breaks as a whole."""

    def shutdown(self, *, kill: bool = False) -> None:
        for att in list(self._running.values()):
            c = att.child
            if c is not None:
                procs.kill_tree(c.pid, pgids=[c.pid], grace=0.0, include_root=True, reap=False)
                procs.reap(c.pid)
                for fd in (c.pidfd, c.rfd):
                    os.close(fd)
            att.sink.close()
        self._running.clear()
        self._fds.clear()
        self._close_reaped()
        self._drop_spares()
        self.prepared.clear()
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1
        for t in self._killers:
            t.join()
        if self._py is not None:
            self._py.shutdown(kill=kill)
        self.end_orphans(final=True)
        # the guardian exits while the run writes its results; `release` reaps it
        procs.stop_guardian(self.guardian)
        self._stopped_guardian, self.guardian = self.guardian, None

    def release(self) -> None:
        """After the run's last file is written: reap what `shutdown` stopped without waiting."""
        procs.reap(self._stopped_guardian)
        self._stopped_guardian = None

    # --- for the attempts ---------------------------------------------------------------------------
    def spawn(self, argv: tuple[str, ...], env: dict[str, str], wfd: int, cwd: str) -> int:
        """`procs.spawn` in `cwd` (posix_spawn has no cwd of its own: the loop steps there and back)."""
        if cwd == self._cwd:
            return procs.spawn(argv, env, wfd, self._devnull)
        os.chdir(cwd)
        try:
            return procs.spawn(argv, env, wfd, self._devnull)
        finally:
            os.chdir(self._cwd)

    def watch(self, fd: int, att: _Attempt) -> None:
        self._fds[fd] = att

    def unwatch(self, fd: int) -> None:
        self._fds.pop(fd, None)

    def done(self, att: _Attempt) -> None:
        self._running.pop(att.fut, None)
        if self._killers:
            self._killers = [t for t in self._killers if t.is_alive()]

    def progress(self, sid: str, index: int, count: int) -> None:
        if self.progress_fd is not None:
            try:
                os.write(self.progress_fd, (dumps(["task", sid, index, count]) + "\n").encode())
            except OSError:
                pass

    def kill(self, att: _Attempt, pid: int, grace: float, *, leader: bool) -> None:
        """End a child's tree from a thread (the loop goes on meanwhile): SIGTERM to its session's
        group and descendants, `grace`, SIGKILL; then what escaped the group (found by the step's
        environment). `leader`: the child itself too (a timeout or cancel, not leftovers)."""
        spec = att.spec

        def run() -> None:
            procs.kill_tree(pid, pgids=[pid], grace=grace, include_root=leader, reap=False)
            # what left the group (setsid, double forks), found by the step's environment; the
            # loop's own end-of-step check catches a process that dropped it
            for orphan in procs.marked(spec.run_id, spec.step_id):
                procs.kill_tree(orphan, include_root=True, grace=0.0, reap=False)

        self._killers.append(Thread(run))

    def _known(self) -> set[int]:
        return set(self.worker_pids())

    def _orphans(self, final: bool) -> list[int]:
        """Our children that are no step's leader, pool worker or the guardian: what steps left
        behind (re-parented to this subreaper) whose step has ended, found by the step id in their
        environment; one without it counts when no step is running. `final`: every one of them."""
        mine = procs.own_children()
        leaders = sum(1 for a in self._running.values() if a.child is not None)
        if self._py is None and len(mine) <= leaders + (self.guardian is not None):
            return []   # no more children than leaders (and the guardian): nothing left behind
        known = self._known()
        running = {a.spec.step_id for a in self._running.values()}
        found = []
        for pid in mine:
            if pid in known:
                continue
            if not final:
                owner = procs.run_marker(pid)
                if owner is None and running:
                    continue
                if owner is not None and owner[0] == self.run_id and owner[1] in running:
                    continue
            found.append(pid)
        return found

    def step_ended(self) -> None:
        """A step ended: its leftovers are looked for within ORPHAN_SWEEP (a read of /proc for every
        step would cost 15 us each on a run of a thousand quick steps)."""
        if self._sweep_at is None:
            self._sweep_at = time.monotonic() + ORPHAN_SWEEP

    def _sweep(self, now: float) -> None:
        if self._sweep_at is not None and now >= self._sweep_at:
            self._sweep_at = None
            self.end_orphans(final=False)

    def end_orphans(self, final: bool) -> None:
        """End what ended steps left behind, and reap it (`final`: everything left)."""
        orphans = self._orphans(final)
        if not orphans:
            return
        for pid in orphans:
            if procs.pid_alive(pid):
                procs.kill_tree(pid, include_root=True, grace=0.0, reap=False)
        for pid in orphans:
            procs.reap(pid)
