"""The Dask worker's side of `dask_pool`: one step attempt, run in a forked host on a Dask worker.

`run_remote` is what each Dask task calls (through the bootstrap function `dask_pool` sends by value).
It never raises: it returns the `StepResult` and the bytes of the attempt's log. It forks a host per
attempt (`worker.init_worker`: child subreaper, SIGTERM when the Dask worker dies, which kills the
step's tree) that runs `worker.run_step` with its log, outputs and cancel flags in a temp dir; this
thread meanwhile reads the run's cancel Events every CANCEL_POLL seconds and raises the matching flag
files, which the host reads as it would on a local run. A task the scheduler runs a second time after
its worker died is failed at once: the step's `retries`, not Dask, decide about another attempt.
"""
from __future__ import annotations

import os
import pickle
import select
import shutil
import signal
import tempfile
import threading
import time

from . import procs
from .frozen import replace
from .model import StepResult, StepSpec, StepStatus

try:
    import distributed
except ImportError:  # pragma: no cover - the dask extra is not installed
    distributed = None

CANCEL_POLL = 0.25          # seconds between two looks at the cancel Events (< 2 s cancel latency)


def run_remote(blob: bytes, names: dict[str, str]) -> tuple[StepResult, bytes]:
    """Run one attempt on this Dask worker. Never raises: returns (result, the attempt's log bytes)."""
    started = time.time()
    address = _worker_address()
    spec: StepSpec | None = None
    try:
        spec = pickle.loads(blob)
        return _run_here(spec, names, address)
    except BaseException as e:  # noqa: BLE001 - a worker must never raise
        sid, attempt = (spec.step_id, spec.attempt) if spec is not None else ("?", 0)
        return (StepResult(sid, attempt, StepStatus.FAILED,
                           error=f"internal error on the Dask worker: {type(e).__name__}: {e}",
                           started_at=started, finished_at=time.time(), worker=address), b"")


def _worker_address() -> str:
    try:
        return distributed.get_worker().address
    except Exception:  # noqa: BLE001 - called outside a worker (tests)
        import socket
        return f"{socket.gethostname()}:{os.getpid()}"


def _run_here(spec: StepSpec, names: dict[str, str], address: str) -> tuple[StepResult, bytes]:
    watch = _CancelWatch(names, spec.step_id)
    if watch.seen_before():
        # a scheduler that allows failures runs a task again when its worker dies; the step's
        # `retries` decide about another attempt, not Dask
        t = time.time()
        why = "worker process died (its Dask worker was lost while running it)"
        note = f"[orchestrator] attempt {spec.attempt}: {why}; its output was lost with it\n"
        return StepResult(spec.step_id, spec.attempt, StepStatus.FAILED, error=why, started_at=t,
                          finished_at=t, worker=address), note.encode()
    if watch.poll():
        # cancelled while it waited for a free worker thread: nothing of it runs
        t = time.time()
        note = f"=== {spec.step_id} attempt {spec.attempt} cancelled before it started ===\n"
        return StepResult(spec.step_id, spec.attempt, StepStatus.CANCELLED,
                          error="cancelled before it started", started_at=t, finished_at=t,
                          worker=address), note.encode()
    tmp = tempfile.mkdtemp(prefix=f"orch-{spec.step_id}-")
    try:
        cancel_dir = os.path.join(tmp, "cancel")
        os.mkdir(cancel_dir, 0o700)
        here = replace(spec, log_path=os.path.join(tmp, "step.log"),
                                   output_path=os.path.join(tmp, "outputs"), cancel_dir=cancel_dir)
        result_path = os.path.join(tmp, "result.pickle")
        parent = os.getpid()
        started = time.time()
        from . import worker  # noqa: F401 - imported once here, not in every forked host
        pid = os.fork()
        if pid == 0:
            _host(here, result_path, parent)   # never returns
        code = _wait_host(pid, watch, cancel_dir)
        result = _load(result_path)
        if result is None:
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            result = StepResult(spec.step_id, spec.attempt, StepStatus.FAILED,
                                error=f"worker process died (the step's host on {address}: {how})",
                                started_at=started, finished_at=time.time())
        try:
            with open(here.log_path, "rb") as f:
                data = f.read()
        except OSError:
            data = b""
        return replace(result, worker=address), data
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _host(spec: StepSpec, result_path: str, parent: int) -> None:
    """The forked step host: a subreaper that dies with its Dask worker; runs the step; exits."""
    code = 70
    try:
        import gc
        gc.freeze()                  # what came from the Dask worker is not ours to finalize
        signal.set_wakeup_fd(-1)     # that fd belongs to the worker's event loop
        from . import worker
        worker.init_worker(None, None)
        if os.getppid() != parent:   # the worker died before the parent-death signal was armed
            os._exit(code)
        result = worker.run_step(spec)
        tmp = result_path + ".tmp"
        with open(tmp, "wb") as f:
            pickle.dump(result, f)
        os.rename(tmp, result_path)
        code = 0
    except BaseException:  # noqa: BLE001 - the parent reports a host without a result
        pass
    finally:
        os._exit(code)


def _wait_host(pid: int, watch: "_CancelWatch", cancel_dir: str) -> int:
    """Wait for the host to exit, raising its cancel flag files as the run's Events rise."""
    pidfd = procs.exit_fd(pid)
    raised: set[str] = set()
    try:
        while True:
            ready, _, _ = select.select([pidfd], [], [], CANCEL_POLL)
            if ready:
                break
            mode = watch.poll()
            flag = {"now": "now", "grace": "all"}.get(mode or "")
            if flag and flag not in raised:
                raised.add(flag)
                open(os.path.join(cancel_dir, flag), "w").close()
    finally:
        os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _load(path: str) -> StepResult | None:
    try:
        with open(path, "rb") as f:
            result = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError):
        return None
    return result if isinstance(result, StepResult) else None


class _CancelWatch:
    """The run's cancel Events as this worker sees them.

    "all" and "now" are shared by every step on the worker process and looked up at most once per
    CANCEL_POLL for all of them; once seen set they stay set. The step's own Event is read each poll.
    A scheduler that cannot be reached means "not cancelled": the step's own timeout still holds.
    """

    _shared: dict[str, tuple[float, bool]] = {}
    _shared_lock = threading.Lock()

    def __init__(self, names: dict[str, str], step_id: str):
        self.names = names
        self.step = distributed.Event(names["step"] + step_id)

    def seen_before(self) -> bool:
        """Mark this task as started; True when a run of it had already started (a lost worker)."""
        if not self.names["started"]:
            return False
        try:
            ev = distributed.Event(self.names["started"])
            if ev.is_set():
                return True
            ev.set()
        except Exception:  # noqa: BLE001 - no scheduler: nothing to compare with
            pass
        return False

    def _shared_flag(self, name: str) -> bool:
        now = time.monotonic()
        with self._shared_lock:
            at, value = self._shared.get(name, (-1e9, False))
            if value or now - at < CANCEL_POLL:
                return value
            self._shared[name] = (now, False)      # one caller looks; the others use this answer
        value = bool(distributed.Event(name).is_set())
        with self._shared_lock:
            self._shared[name] = (now, value)
        return value

    def poll(self) -> str | None:
        try:
            if self._shared_flag(self.names["now"]):
                return "now"
            if self._shared_flag(self.names["all"]) or self.step.is_set():
                return "grace"
        except Exception:  # noqa: BLE001
            return None
        return None
