"""The run loop: drives the scheduler, feeds the pool, handles signals; `journal` keeps the records.

One thread (the caller's) owns all bookkeeping. It sleeps in a single `select` on the pool's result
descriptors (`pool.fds()`), a wake pipe (done-callbacks from executors with threads of their own, and
the signal wakeup fd) and the workers' progress pipe ("task i of n"), with a timeout for the next timer
(rate limit, retry delay, run timeout, state flush, load probe, cancel backstop). Each wakeup: read
progress and results, record them in the scheduler, start what may start, write state if due. Nothing
polls.

Cancelling (fail_all, run timeout, Ctrl-C) raises flags in the run's `.cancel/` directory (and the
pool's own channel for remote pools); workers see them within `worker.CANCEL_CHECK` and kill their
steps' trees (SIGTERM, `--grace`, SIGKILL). A second Ctrl-C raises "now", which skips the grace. If
workers do not answer within the grace and a margin, the dispatcher kills their trees itself. A pool
worker killed from outside fails the step it ran ("worker process died (signal 9)", retried per
`retries`) and the dispatcher ends that step's orphans; with `ProcessPoolExecutor`
(`ORCHESTRATOR_POOL=stdlib`), which breaks as a whole, the pool is replaced and the other running steps
start again on it (their interrupted attempt is not counted).
"""
from __future__ import annotations

import gc
import os
import select
import _signal as signal  # the C module: `signal` wraps it in enums, and `enum` costs start-up
import time
from _collections import deque
from _collections_abc import Mapping   # what collections.abc is, without importing collections
from _thread import get_ident

from . import history, procs, scopes
from .errors import WorkerDied
from .frozen import factory, record
from .interp import InterpolationError
from .model import PYTHON, OnFailure, StepResult, StepSpec, StepStatus, Workstream
from .masking import mask, secret_values
from .journal import RunJournal
from .lean import loads
from .records import StepRecord
from .scheduler import Scheduler
from .specs import RunContext, build_spec
from .store import RunStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from os import PathLike
    from typing import Any, Callable
    from concurrent.futures import Future

BACKSTOP_MARGIN = 30.0   # beyond timeout + grace, a worker that has not answered is killed
IDLE_WAIT = 50e-6        # a wait for events at least this long: the loop has time to spare
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


@record(frozen=False)
class RunOptions:
    project_root: str | PathLike[str]     # paths as strings: pathlib costs ~8 ms of every start-up
    worktrees: str | PathLike[str]
    max_workers: int | None = None
    on_failure: OnFailure | None = None
    on_conflict: str = "error"
    grace: float = 5.0
    resume: str | None = None            # a run id, or "" for the latest run
    force: bool = False
    priorities: dict[str, float] | None = None
    extra_env: dict[str, str] = factory(dict)
    executor: str | None = None          # overrides execution.executor (for the records)
    scheduler_address: str | None = None


@record(frozen=False)
class RunOutcome:
    exit_code: int
    run_id: str
    run_dir: str
    summary: dict[str, Any]


class Reporter:
    """Event sink for people (the CLI's console view); the default says nothing.

    A reporter that redraws, tails step logs or holds lines back sets `tick_interval`: the loop then
    calls `tick` at least that often while the run goes on (and never more often than every event).
    `flush` writes what it holds back, when a run ends early.
    """

    tick_interval: float | None = None

    def run_started(self, ws: Workstream, run_id: str, run_dir: str, workers: int) -> None: ...
    def step_started(self, step_id: str, attempt: int, log_path: str | None = None) -> None: ...
    def tick(self, records: Mapping[str, StepRecord], now: float) -> None: ...
    def step_progress(self, step_id: str, index: int, count: int) -> None: ...
    def step_finished(self, rec: StepRecord, done: int, total: int) -> None: ...
    def step_changed(self, step_id: str, status: StepStatus, reason: str | None) -> None: ...
    def message(self, text: str) -> None: ...
    def run_finished(self, summary: dict[str, Any], run_dir: str) -> None: ...
    def flush(self) -> Any: ...


class Dispatcher:
    def __init__(self, ws: Workstream, options: RunOptions, *,
                 pool_factory: Callable[[int, int | None, "Dispatcher"], Any] | None = None,
                 reporter: Reporter | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 load_probe: Any = None):
        self.ws = ws
        self.opt = options
        self.reporter = reporter or Reporter()
        self.clock = clock
        self.wall = wall
        self.pool_factory = pool_factory or _local_pool
        ex = ws.execution
        self.workers = max(1, options.max_workers or ex.effective_workers)
        if not ex.parallel and options.max_workers is None:
            self.workers = 1
        self.on_failure = options.on_failure or ex.on_failure
        self.secrets = secret_values([os.environ, options.extra_env, *[s.env for s in ws.steps],
                                      *[t.env for t in ws.tools.values()]])
        self.store = RunStore(options.worktrees, ws.id)
        self.journal = RunJournal(ws, self.store, self.secrets, self._execution_dict(), wall)
        self.records = self.journal.records
        self.inflight: dict[str, tuple[int, Future]] = {}
        self.worker_pid: dict[str, int] = {}
        self.group_start: dict[str, float] = {}
        self.group_of = {sid: g for g in ws.step_groups for sid in g.steps}
        self._done: deque = deque()
        self._signals: list[int] = []
        self._cancel_at: float | None = None
        self._next_tick = 0.0
        self._exit_codes: dict[int, int | None] = {}
        self._submitted: dict[str, float] = {}   # clock time of the running attempt's submit
        self._backstop_due = float("inf")        # the earliest backstop of a running step
        # adaptive scaling: hold new starts while the machine is overloaded
        self.probe = load_probe
        if self.probe is None and ws.execution.adaptive_scaling:
            from .load import SystemLoadProbe
            self.probe = SystemLoadProbe()
        self._next_probe = 0.0
        self._holding: str | None = None
        self.status = "running"
        self.interrupted = False
        self._outputs, self._return_values = _Outputs(self.records), _ReturnValues(self.records)
        self._prepared: dict[str, tuple[int, StepSpec]] = {}   # specs built ahead (_prepare_next)
        self._untold_starts: list[tuple[str, int]] = []        # started, not yet logged (_tell)
        self._started_since_prepare: list[str] = []
        self._early: list[tuple[Any, Any]] = []            # successes whose result is not made yet
        self._early_told: list[tuple[StepResult, Any]] = []   # ... made, not yet told (_tell)

    # --- set-up ------------------------------------------------------------------------------------
    def _execution_dict(self) -> dict[str, Any]:
        """The run's effective settings (for RUN START, the state and the summary)."""
        d = self.ws.execution.to_dict()
        d.update(max_workers=self.workers, on_failure=self.on_failure.value,
                 parallel=self.ws.execution.parallel and self.workers > 1,
                 on_conflict=self.opt.on_conflict, grace=self.opt.grace)
        if self.opt.executor:
            d["executor"] = self.opt.executor
        if self.opt.scheduler_address:
            d["scheduler_address"] = self.opt.scheduler_address
        return d

    # --- the run -----------------------------------------------------------------------------------
    def run(self) -> RunOutcome:
        kept = self.journal.open(self.opt.resume, self.opt.force, self.reporter.message)
        self.run_id, self.run_dir = self.journal.run_id, self.journal.run_dir
        ws = self.ws
        try:
            prio = self.opt.priorities or history.priorities(ws, self.store.read_history(),
                                                              self.workers)
            serialize = []
            if self.opt.on_conflict == "serialize":
                serialize = [(c.step_a, c.step_b) for c in scopes.scope_conflicts(ws)]
            self.sched = Scheduler(ws, max_workers=self.workers, on_failure=self.on_failure,
                                   priorities=prio, serialize=serialize, keep=kept,
                                   earlier_attempts={sid: r.attempts for sid, r in self.records.items()
                                                     if sid not in kept})
            for sid in kept:
                self.records[sid].status = StepStatus.SUCCEEDED
            self._context = RunContext(
                ws=ws, run_id=self.run_id, run_dir=self.run_dir,
                project_root=os.fspath(self.opt.project_root), cancel_dir=self.store.cancel_dir,
                log_path=self.store.step_log, output_path=self.store.step_output,
                extra_env=self.opt.extra_env, grace=self.opt.grace, secrets=self.secrets)
            self.t0 = self.clock()
            self.store.log(f"RUN START ws={ws.id} run={self.run_id} pid={os.getpid()} steps={len(ws.steps)} "
                           f"settings={self.journal.execution}")
            self.reporter.run_started(ws, self.run_id, self.run_dir, self.workers)
            # the first state.json is written by the loop's first pass, once the first steps are
            # started (it shows them running), from the store's writer thread
            gc.freeze()   # the records and the scheduler's state live as long as the run: the
            self._loop()  # collections while it runs then scan only what its steps leave
        except BaseException:
            self.status = "interrupted"
            self.journal.close_after_crash(started=hasattr(self, "sched"))
            self._release()
            self.reporter.flush()
            raise
        try:
            return self._finish()
        finally:
            self._release()

    def _release(self) -> None:
        """What the pool's shutdown let go of without waiting (the inline pool's guardian)."""
        release = getattr(getattr(self, "pool", None), "release", None)  # no pool before the loop
        if release is not None:
            release()

    def _loop(self) -> None:
        wake_r, wake_w = os.pipe()
        prog_r, prog_w = os.pipe()
        for fd in (wake_r, wake_w, prog_r):
            os.set_blocking(fd, False)
        self._wake_w = wake_w
        self._loop_thread = get_ident()
        old_handlers = self._install_signals(wake_w)
        # what a step leaves behind (inline pool), or a pool worker killed from outside, re-parents
        # to us, not to init, so that we can end it
        procs.become_subreaper()
        self.pool = self.pool_factory(self.workers, prog_w, self)
        if getattr(self.pool, "spawns_here", False):
            procs.settle_before_spawning(len(self.ws.steps))
        run_deadline = self.t0 + self.ws.execution.run_timeout if self.ws.execution.run_timeout else None
        partial = b""
        idle = True
        try:
            while True:
                now = self.clock()
                self._handle_signals()
                settled = self._collect(now)
                if run_deadline is not None and now >= run_deadline and not self.sched.stopping:
                    reason = f"run timeout of {self.ws.execution.run_timeout:g}s reached"
                    self._log_line(f"RUN TIMEOUT {reason}")
                    self._apply(self.sched.stop(reason))
                self._start_ready(self.clock())
                # the steps that ended are told (log, console, records) once the steps they made
                # ready have started: on a chain, off the critical path; then those starts, in order
                self._tell(settled, now)
                if self.sched.done and not self.inflight:
                    break
                self._backstop(now)
                self._prepare_next()
                self._flush()
                if self.reporter.tick_interval and now >= self._next_tick:
                    self.reporter.tick(self.records, self.wall())
                    # a tick may end the ticks (lines held back are all written): the next one
                    # they need, if any, then comes at once
                    self._next_tick = now + (self.reporter.tick_interval or 0.0)
                timeout = self._next_timeout(run_deadline)
                if timeout is None and not self.inflight and not self.sched.done:
                    # nothing runs and no timer is due: no event could ever wake us. Never hang;
                    # say so and end the run (a bug, or a constraint the loader did not catch)
                    self._log_line("STALL no step is running and none can start; stopping the run")
                    self._apply(self.sched.stop("no step could start (the run stalled)"))
                    continue
                if self._done:  # a step ended while it was being submitted
                    timeout = 0.0
                elif idle and (timeout is None or timeout > 0):
                    # while the steps just started run, if the loop has had to wait for events:
                    # when it never waits, the loop is what the steps wait for, and the finish
                    # does them all at once, faster (caches warm) than one at each pass
                    self.journal.encode_ended()
                pool_fds = self.pool.fds()
                waited = time.monotonic()
                try:
                    ready, _, _ = select.select([wake_r, prog_r, *pool_fds], [], [], timeout)
                except InterruptedError:
                    ready = []
                idle = time.monotonic() - waited >= IDLE_WAIT
                if prog_r in ready:  # progress first: a step's "started" before its result
                    partial = self._read_progress(prog_r, partial)
                self.pool.poll(ready)  # readable descriptors, and the pool's own timers
                if wake_r in ready:
                    try:
                        while os.read(wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
        finally:
            self._restore_signals(old_handlers)
            self.pool.shutdown(kill=bool(self.inflight))
            partial = self._read_progress(prog_r, partial)
            for fd in (wake_r, wake_w, prog_r, prog_w):
                os.close(fd)

    def _next_timeout(self, run_deadline: float | None) -> float | None:
        now = self.clock()
        times = []
        wake = self.sched.next_wakeup(now)
        if wake is not None:
            times.append(wake)
        if run_deadline is not None and not self.sched.stopping:
            times.append(run_deadline)
        flush_at = self.journal.next_flush()
        if flush_at is not None:
            times.append(flush_at)
        if self._cancel_at is not None:
            times.append(now + 0.25)
        if self.reporter.tick_interval:
            times.append(self._next_tick)
        if self.probe is not None and not self.sched.stopping:
            times.append(self._next_probe)
        hint = getattr(self.pool, "wait_hint", None)
        if hint is not None:  # a pool that enforces deadlines in this loop
            due = hint(time.monotonic())
            if due is not None:
                times.append(now + due)
        if self.inflight and self._backstop_due != float("inf"):  # workers that stop answering
            times.append(self._backstop_due)
        if not times:
            return None
        return max(0.0, min(times) - now)

    # --- signals -----------------------------------------------------------------------------------
    def _install_signals(self, wake_w: int):
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for s in old:
                signal.signal(s, lambda signum, frame: self._signals.append(signum))
        except ValueError:   # not the main thread (the first call refuses): no handlers
            return None
        old_fd = signal.set_wakeup_fd(wake_w)
        return old, old_fd

    def _restore_signals(self, saved) -> None:
        if not saved:
            return
        old, old_fd = saved
        signal.set_wakeup_fd(old_fd)
        for s, h in old.items():
            signal.signal(s, h)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            name = procs.signal_name(signum)
            if not self.interrupted:
                self.interrupted = True
                self.status = "interrupted"
                self._log_line(f"INTERRUPT {name}: stopping; running steps get SIGTERM, "
                               f"then SIGKILL after {self.opt.grace:g}s")
                self.reporter.message(f"{name}: stopping running steps (grace {self.opt.grace:g}s; "
                                      f"press Ctrl-C again to kill them now)")
                self._apply(self.sched.stop(f"interrupted by {name}", interrupted=True))
                self._cancel("all")
                self._cancel_at = self.clock()
            else:
                self._log_line(f"INTERRUPT {name} again: killing running steps now")
                self._cancel("now")
                self._kill_workers_trees(grace=0.0)

    # --- starting ----------------------------------------------------------------------------------
    def _start_ready(self, now: float) -> None:
        if self.probe is not None and now >= self._next_probe:
            self._check_load(now)
        # while holding, one step may still run: a busy machine slows the run, never stalls it
        limit = 1 if self._holding else None
        for sid in self.sched.take_ready(now, limit=limit):
            self._submit(sid, now)

    def _check_load(self, now: float) -> None:
        from .load import PROBE_EVERY
        self._next_probe = now + PROBE_EVERY
        try:
            reason = self.probe.overloaded()
        except Exception as e:  # noqa: BLE001 - a broken probe must not stop the run
            reason = None
            self._log_line(f"WARNING load probe failed: {e}")
        offset = round(self.wall() - self.journal.started_at, 4)
        if reason and not self._holding:
            self._holding = reason
            self.journal.holds.append({"start_offset_s": offset, "end_offset_s": None, "reason": reason})
            self._log_line(f"HOLD new starts: machine overloaded ({reason})")
            self.reporter.message(f"holding new starts: machine overloaded ({reason})")
        elif not reason and self._holding:
            self._holding = None
            self.journal.holds[-1]["end_offset_s"] = offset
            self._log_line("RESUME starts: machine load is back to normal")
            self.reporter.message("resuming starts: machine load is back to normal")

    def _submit(self, sid: str, now: float, *, restart: bool = False) -> None:
        rec = self.records[sid]
        attempt = self.sched.attempt(sid)
        rec.begin_attempt(attempt)
        try:
            prepared = self._prepared.pop(sid, None)
            if prepared and prepared[0] == attempt:
                spec = prepared[1]
            else:
                if prepared:   # built for another attempt
                    self._forget(prepared[1])
                spec = self._spec(sid, attempt, now)
        except InterpolationError as e:
            t = self.wall()
            self._record(StepResult(sid, attempt, StepStatus.FAILED, error=mask(str(e), self.secrets),
                                    started_at=t, finished_at=t), now)
            return
        if spec.timeout <= 0:  # its step group's time ran out before it could start
            t = self.wall()
            self._record(StepResult(sid, attempt, StepStatus.TIMED_OUT, started_at=t, finished_at=t,
                                    error=f"{spec.timeout_reason} was reached before it started"), now)
            return
        # started first, told after: on a chain, the bookkeeping is off the critical path (the step
        # cannot end before the next loop iteration collects it)
        try:
            fut = self.pool.submit(spec, lambda f, s=sid, a=attempt: self._on_done(s, a, f))
        except (_futures().BrokenExecutor, RuntimeError):
            self.pool.replace()
            fut = self.pool.submit(spec, lambda f, s=sid, a=attempt: self._on_done(s, a, f))
        if not restart:
            self._untold_starts.append((sid, attempt))   # told after the steps that ended (_tell)
        self.inflight[sid] = (attempt, fut)
        self._submitted[sid] = now
        self._started_since_prepare.append(sid)
        self._backstop_due = min(self._backstop_due,
                                 now + rec.timeout_s + self.opt.grace + BACKSTOP_MARGIN)
        if rec.started_at is None:  # until the worker says (or the result shows) when it started
            rec.started_at, rec.start_is_estimate = self.wall(), True
        if spec.tasks:
            rec.task_index, rec.task_count = 1, len(spec.tasks)
        self.journal.dirty = True

    def _prepare_next(self) -> None:
        """Build the specs of the steps that the steps just started would make ready, while those
        run: on a chain, the next step then starts without waiting for its spec. Only a spec that
        is a function of the step and attempt alone is built early: no `${...}` to fill in from
        outputs, no python inputs, no step group whose clock sets the timeout. As many as could
        start at once: a step with thousands of dependents does not hold the loop for them."""
        started, self._started_since_prepare = self._started_since_prepare, []
        for running in started:
            if running not in self.inflight:
                continue
            for sid in self.sched.unlocked_by(running, limit=self.workers):
                step = self.ws.step(sid)
                if sid in self._prepared or step.tool == PYTHON or sid in self.group_of \
                        or any("${" in t for t in (*step.tasks, *step.acceptance_tests)):
                    continue
                attempt = self.sched.attempt(sid) + 1
                try:
                    spec = self._spec(sid, attempt, self.clock())
                except Exception:  # noqa: BLE001 - built again at its start, which reports it
                    continue
                self._prepared[sid] = (attempt, spec)
                prepare = getattr(self.pool, "prepare", None)
                if prepare is not None:   # a pool that can get the spec's attempt ready too
                    prepare(spec)

    def _drop_prepared(self, sid: str) -> None:
        """A step that will not start (blocked, skipped): its spec built ahead goes."""
        prepared = self._prepared.pop(sid, None)
        if prepared is not None:
            self._forget(prepared[1])

    def _forget(self, spec: StepSpec) -> None:
        forget = getattr(self.pool, "forget", None)
        if forget is not None:
            forget(spec)

    def _on_done(self, sid: str, attempt: int, fut: Future) -> None:
        """Hand the result to the loop. In an executor's thread it must also wake the loop; a pool
        polled by the loop itself calls this in the loop's thread, which needs no wakeup."""
        self._done.append((sid, attempt, fut))
        if get_ident() == self._loop_thread:
            return
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass

    def _spec(self, sid: str, attempt: int, now: float) -> StepSpec:
        if self._early:   # the outputs and return values of the steps that just succeeded
            self._absorb_early()
        step = self.ws.step(sid)
        timeout = step.timeout or self.ws.execution.timeout_per_step
        reason = f"timeout of {timeout:g}s"
        g = self.group_of.get(sid)
        if g is not None and g.timeout:  # the group's clock starts with its first step
            start = self.group_start.setdefault(g.id, now)
            left = start + g.timeout - now
            if left < timeout:
                timeout, reason = max(0.0, left), f"step group {g.id} timeout of {g.timeout:g}s"
        return build_spec(self._context, sid, attempt, outputs=self._outputs,
                          return_values=self._return_values, timeout=timeout, timeout_reason=reason)

    # --- results -----------------------------------------------------------------------------------
    def _read_progress(self, fd: int, partial: bytes) -> bytes:
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                partial += chunk
        except BlockingIOError:
            pass
        except OSError:
            return b""
        *lines, partial = partial.split(b"\n")
        for line in lines:
            try:
                ev = loads(line.decode())
            except ValueError:
                continue
            kind, sid = ev[0], ev[1]
            if sid not in self.records or sid not in self.inflight:
                continue
            if kind == "start":
                self.worker_pid[sid] = ev[3]
                rec = self.records[sid]
                rec.worker = f"local:{ev[3]}"
                if (rec.started_at is None or rec.start_is_estimate) and len(ev) > 4:
                    rec.started_at, rec.start_is_estimate = ev[4], False
                self.journal.dirty = True
            elif kind == "task":
                self.records[sid].task_index, self.records[sid].task_count = ev[2], ev[3]
                self.reporter.step_progress(sid, ev[2], ev[3])
                self.journal.dirty = True
        return partial

    def _collect(self, now: float) -> list[tuple[StepResult, Any]]:
        """Take in the results that came (the scheduler learns of each at once); returns them with
        what the scheduler decided, for `_tell`."""
        settled: list[tuple[StepResult, Any]] = []
        broken: list[tuple[str, int]] = []
        while self._done:
            sid, attempt, fut = self._done.popleft()
            cur = self.inflight.get(sid)
            if cur is None or cur[1] is not fut:
                continue  # a superseded future (its step was restarted on a new pool)
            if getattr(fut, "early", None) is StepStatus.SUCCEEDED:
                # the inline pool's success: the scheduler learns of it first, so that the steps
                # it makes ready start before its result is made and recorded (`_absorb_early`)
                del self.inflight[sid]
                outcome = self.sched.finish(sid, StepStatus.SUCCEEDED, now)
                self._early.append((fut, outcome))
                if not outcome.plain:
                    self._absorb_early()   # it changed others: told now, as below
                    self._told(*self._early_told.pop(), now)
                continue
            try:
                result: StepResult = fut.result()
            except _futures().BrokenExecutor:
                broken.append((sid, attempt))
                continue
            except WorkerDied as e:
                self._log_line(f"WORKER DIED pid={e.pid} while running {sid}: {e}")
                self._end_orphans()
                result = self._lost(sid, attempt, StepStatus.FAILED, str(e))
            except _futures().CancelledError:
                result = self._lost(sid, attempt, StepStatus.CANCELLED, "cancelled before it started")
            except Exception as e:  # noqa: BLE001 - e.g. the spec could not be sent to the worker
                result = self._lost(sid, attempt, StepStatus.FAILED,
                                    f"could not run on the worker: {type(e).__name__}: {e}")
            del self.inflight[sid]
            result, outcome = self._settle(result, now)
            if outcome.plain:
                settled.append((result, outcome))    # the usual end: told after the next starts
            else:   # a retry (it may start again at once) or a failure that changed others: now
                self._told(result, outcome, now)
        if broken:
            self._tell(settled, now)   # before the restarts and deaths that _recover logs
            settled = []
            self._recover(broken, now)
        return settled

    def _absorb_early(self) -> None:
        """Make and record the results of the successes the scheduler learned of first (`_collect`);
        `_tell` tells them. Before anything reads their records: the specs that fill in outputs."""
        early, self._early = self._early, []
        for fut, outcome in early:
            result = fut.result()
            self.records[result.step_id].absorb(result)   # a success: no error to mask
            self._early_told.append((result, outcome))

    def _tell(self, settled: list[tuple[StepResult, Any]], now: float) -> None:
        if self._early:
            self._absorb_early()
        if self._early_told:
            settled, self._early_told = [*self._early_told, *settled], []
        starts, self._untold_starts = self._untold_starts, []
        if not settled and not starts:
            return
        self.store.hold_log()   # this pass's lines in one write
        try:
            for result, outcome in settled:
                self._told(result, outcome, now)
            for sid, attempt in starts:
                self._log_line(f"STEP START {sid} attempt={attempt}")
                self.reporter.step_started(sid, attempt, self.store.step_log(sid))
        finally:
            self.store.release_log()

    def _lost(self, sid: str, attempt: int, status: StepStatus, error: str) -> StepResult:
        t = self.wall()
        rec = self.records[sid]
        start = rec.started_at if rec.started_at is not None else t
        return StepResult(sid, attempt, status, error=error, started_at=start, finished_at=t,
                          worker=rec.worker or "")

    def _recover(self, broken: list[tuple[str, int]], now: float) -> None:
        """A pool worker died: blame the step it ran, replace the pool, restart the others.

        The futures of one broken pool may reach us over several wakeups; exit codes of the old
        pool's workers are kept so that each one is judged against the pool it ran on.
        """
        if self.pool.broken:
            codes = self.pool.exit_codes()
            self._exit_codes.update(codes)
            self._end_orphans(set(codes))
            self.pool.replace()
        dead = {pid: code for pid, code in self._exit_codes.items()
                if code is not None and code not in (0, -signal.SIGTERM, 128 + signal.SIGTERM)}
        for sid, attempt in broken:
            del self.inflight[sid]
            pid = self.worker_pid.get(sid)
            if pid in dead or (not dead and pid is None):
                code = dead.get(pid)
                why = (f"worker process died (signal {-code})" if code is not None and code < 0
                       else f"worker process died (exit code {code})" if code is not None
                       else "worker process died")
                self._log_line(f"WORKER DIED pid={pid} while running {sid}: {why}")
                self._record(self._lost(sid, attempt, StepStatus.FAILED, why), now)
            elif self.sched.stopping:
                self._record(self._lost(sid, attempt, StepStatus.CANCELLED, "cancelled"), now)
            else:
                self._log_line(f"STEP RESTART {sid} attempt={attempt}: its worker was stopped when "
                               f"another worker died; starting it again on a new pool")
                self._submit(sid, now, restart=True)

    def _end_orphans(self, workers: set[int] | None = None) -> None:
        """A dead worker's step processes were adopted by us (we are a subreaper): end them, and
        reap them and whatever re-parented to us meanwhile — never a pool worker."""
        workers = set(self.pool.worker_pids()) if workers is None else workers
        for pid in procs.children(os.getpid()):
            if pid not in workers:
                procs.kill_tree(pid, include_root=True, grace=0.0, reap=False)
        for pid in procs.children(os.getpid()):
            if pid not in workers and not procs.pid_alive(pid):
                procs.reap(pid)

    def _record(self, result: StepResult, now: float) -> None:
        self._told(*self._settle(result, now), now)

    def _settle(self, result: StepResult, now: float) -> tuple[StepResult, Any]:
        """An attempt's result into its record and the scheduler (what decides the next starts)."""
        sid = result.step_id
        result_error = mask(result.error, self.secrets)
        if result_error != result.error:
            result = StepResult(**{**result.__dict__, "error": result_error})
        self.records[sid].absorb(result)   # outputs first: the specs of its dependents read them
        self.inflight.pop(sid, None)
        return result, self.sched.finish(sid, result.status, now, error=result.error)

    def _told(self, result: StepResult, outcome: Any, now: float) -> None:
        """A settled result's status, log line and console line, and what it changed for others."""
        sid = result.step_id
        rec = self.records[sid]
        if outcome.retry_at is not None:
            rec.status = StepStatus.PENDING
            self._log_line(f"STEP RETRY {sid} attempt={result.attempt} {result.status.value}: "
                           f"{result.error}; next attempt in {outcome.retry_at - now:.1f}s")
            self.reporter.step_changed(sid, StepStatus.PENDING, f"retrying: {result.error}")
        else:
            rec.status = result.status
            self.journal.ended.append(sid)
            detail = f" error={result.error}" if result.error else ""
            self._log_line(f"STEP END {sid} status={result.status.value} attempt={result.attempt} "
                           f"duration={result.duration_s:.3f}s{detail}")
            self.reporter.step_finished(rec, self._terminal_count(), len(self.records))
        self._apply(outcome)
        self.journal.dirty = True

    def _terminal_count(self) -> int:
        """Steps in a final state: from the scheduler's counts, kept current as steps end."""
        return len(self.records) - self.sched.pending_or_running

    def _apply(self, outcome) -> None:
        for ch in outcome.changes:
            self._drop_prepared(ch.step_id)   # blocked or skipped: it will not start
            rec = self.records[ch.step_id]
            rec.status = ch.status
            rec.error = ch.reason
            rec.blocked_by = list(self.sched.state[ch.step_id].blocked_by)
            self._log_line(f"STEP {ch.status.value.upper()} {ch.step_id}: {ch.reason}")
            self.reporter.step_changed(ch.step_id, ch.status, ch.reason)
        for sid in outcome.cancel:
            self._cancel(sid)
            if self._cancel_at is None:
                self._cancel_at = self.clock()
        self.journal.dirty = True

    def _backstop(self, now: float) -> None:
        """Workers enforce timeouts; this catches a worker that stopped answering."""
        if self._cancel_at is not None and self.inflight and now - self._cancel_at > self.opt.grace + 3.0:
            self._log_line("CANCEL BACKSTOP workers did not stop their steps in time: killing them")
            self._kill_workers_trees(grace=0.0)
            self._cancel_at = now
        if now < self._backstop_due:
            return   # no running step's backstop is due (kept current by _submit and below)
        self._backstop_due = min((self._submitted.get(sid, now) + self.records[sid].timeout_s
                                  + self.opt.grace + BACKSTOP_MARGIN for sid in self.inflight),
                                 default=float("inf"))
        for sid, (attempt, fut) in list(self.inflight.items()):
            limit = self.records[sid].timeout_s + self.opt.grace + BACKSTOP_MARGIN
            if now - self._submitted.get(sid, now) > limit and not fut.done():
                pid = self.worker_pid.get(sid) or self.pool.worker_running(fut)
                if pid:
                    self._log_line(f"STEP BACKSTOP {sid}: worker {pid} stopped answering; killing it")
                    procs.kill_tree(pid, include_root=True, grace=0.0, reap=False)
                    self._submitted[sid] = now  # once: its death is reported as any other

    def _cancel(self, what: str) -> None:
        """Raise a cancel flag: "all", "now" or a step id. Local workers read the run's .cancel/
        files; a remote pool forwards the flag its own way."""
        self.store.cancel(what)
        self.pool.cancel(what)

    def _kill_workers_trees(self, grace: float) -> None:
        for pid in self.pool.worker_pids():
            procs.kill_tree(pid, grace=grace, reap=False)

    # --- records -----------------------------------------------------------------------------------
    def _log_line(self, line: str) -> None:
        self.store.log(line)

    def _flush(self, force: bool = False) -> None:
        self.journal.flush(self.clock(), self.sched, force)

    def _finish(self) -> RunOutcome:
        status = self.journal.final_status(self.interrupted)
        summary = self.journal.finish(status, self.sched)
        self.reporter.run_finished(summary, self.run_dir)
        code = {"succeeded": EXIT_OK, "interrupted": EXIT_INTERRUPTED}.get(status, EXIT_FAILED)
        return RunOutcome(code, self.run_id, self.run_dir, summary)


def _futures():
    """concurrent.futures, imported when an except clause needs its exception types (they are
    evaluated only when something was raised): 5 ms of start-up that an inline run never needs."""
    import concurrent.futures
    return concurrent.futures


def _local_pool(workers: int, progress_fd: int | None, dispatcher: "Dispatcher"):
    """The local pool: shell steps inline (the default), or every step on pool workers
    (`ORCHESTRATOR_POOL=workers`), or on `ProcessPoolExecutor` (`ORCHESTRATOR_POOL=stdlib`)."""
    kind = os.environ.get("ORCHESTRATOR_POOL", "inline")
    if kind == "stdlib":
        from .pool import StdlibPool
        return StdlibPool(workers, progress_fd)
    if kind == "workers":
        from .pool import LocalPool
        return LocalPool(workers, progress_fd)
    from .inline import InlinePool
    return InlinePool(workers, progress_fd, dispatcher.run_id)


class _Outputs(Mapping):
    """Step outputs by step id, read from the records when a task refers to them."""

    def __init__(self, records: dict[str, StepRecord]):
        self._records = records

    def __getitem__(self, sid: str) -> Any:
        return self._records[sid].outputs

    def __iter__(self):
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)


class _ReturnValues(_Outputs):
    """What `python` steps returned, by step id (their dependents' `inputs`)."""

    def __getitem__(self, sid: str) -> Any:
        return self._records[sid].return_value
