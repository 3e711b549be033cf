"""Where steps run on a Dask cluster: `DaskPool`, the same face as `pool.LocalPool`.

The dispatcher is unchanged: it hands a `StepSpec` to `submit` and gets back a plain
`concurrent.futures.Future` that this pool completes with a `StepResult`, always (a lost worker is a
failed result, never an exception). Data flow::

    DaskPool.submit(spec)            orchestrator machine
      client.submit(bootstrap, paths, pickle(spec), names, key=<step>-<attempt>-<uuid>,
                    resources=spec.resources, pure=False, retries=0)
    dask_worker.run_remote(spec)     a thread of a Dask worker
      Event <run>-started-<key> set already?  -> the scheduler re-ran us after a worker died: fail
      fork a step host (worker.init_worker: subreaper, SIGTERM when the Dask worker dies, which kills
      the step's tree); it runs worker.run_step(spec') with log, outputs and cancel flags in a temp dir
      meanwhile read the run's cancel Events (all, now, <step-id>) every CANCEL_POLL s -> flag files
      -> (StepResult with worker=<Dask worker address>, the log's bytes)
    DaskPool._finished               Dask's callback thread, orchestrator machine
      log bytes -> steps/<id>.log (0600; appended from attempt 2), then complete the Future

Why a forked host per step rather than `run_step` on the Dask worker thread itself: `worker.py` ends a
step by sweeping every descendant of its own process, which on a Dask worker with several threads
would take the other steps along; a host of its own keeps each step's tree apart, and, through the
parent-death signal, dies with its Dask worker and takes the tree with it (a killed worker leaves no
orphans). The host reads the usual local cancel files, which this thread keeps in step with the
Events (a forked child cannot use the worker's Dask client).

Nothing assumes a shared filesystem: the spec and result travel through Dask; the step's `cwd` (the
project root) must exist on the worker. The function sent to the workers is pickled by value and the
spec as bytes, so the scheduler needs no `orchestrator` import and a worker gets the package's path.
"""
from __future__ import annotations

import logging
import os
import pickle
import threading
import time
import uuid
from concurrent.futures import CancelledError, Future, InvalidStateError, ThreadPoolExecutor
from pathlib import Path

from .errors import UsageError
from .frozen import replace
from .model import StepResult, StepSpec, StepStatus

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

try:
    import dask
    import distributed
except ImportError:  # pragma: no cover - the dask extra is not installed
    dask = distributed = None

CONNECT_TIMEOUT = 15        # seconds to reach a remote scheduler
CLOSE_TIMEOUT = 10          # seconds to close the client (and a cluster of our own)
# Worker processes of a cluster we start ignore the terminal's Ctrl-C, as local pool workers do: the
# dispatcher alone decides what an interrupt means (a preload runs again in a restarted worker). What
# the worker's steps start with is read first (procs.step_signals): their SIGINT is not ignored.
_IGNORE_SIGINT = ("import signal\ntry:\n    from orchestrator import procs\n    procs.step_signals()\n"
                  "except ImportError:\n    pass\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n")

log = logging.getLogger(__name__)


def dask_pool_factory(address: str | None) -> Callable[[int, int | None, Any], "DaskPool"]:
    """A pool factory for the dispatcher: `(workers, progress_fd, dispatcher) -> DaskPool`.

    With an address the pool connects to that scheduler; without one it starts a cluster of
    `workers` single-threaded worker processes on loopback and closes it at shutdown.
    """
    if distributed is None:
        raise UsageError("the dask executor needs the 'distributed' package",
                         hint="pip install 'orchestrator[dask]'")

    def factory(workers: int, progress_fd: int | None, dispatcher: Any) -> DaskPool:
        return DaskPool.connect(address, workers, run_id=dispatcher.run_id)
    return factory


class DaskPool:
    """Runs step attempts as Dask tasks; cancels them through `distributed.Event`s."""

    name = "dask"

    def __init__(self, client: Any, run_id: str, cluster: Any = None, *, reruns: bool = True):
        self.client = client
        self.cluster = cluster
        self.run_id = run_id
        # a resumed run reuses its run id, and workers remember flags they saw set: a token of this
        # pool's own keeps an earlier session's flags from reaching this one
        prefix = f"orch-{run_id}-{uuid.uuid4().hex[:8]}"
        # `started`: only where the scheduler runs a task again after its worker died, each task
        # marks its start (two scheduler calls a step) so that a second run can refuse
        self.names = {"all": f"{prefix}-all", "now": f"{prefix}-now", "step": f"{prefix}-step-",
                      "started": f"{prefix}-started-" if reruns else ""}
        self._lock = threading.Lock()
        self._running: dict[str, tuple[Any, Future, StepSpec]] = {}   # key -> (dask, ours, spec)
        self._set: set[str] = set()                                    # Events we set, cleared at the end
        self._control = ThreadPoolExecutor(1, thread_name_prefix="orch-dask-control")
        self._closing = False
        self._bootstrap = _make_bootstrap()
        pkg_parent = str(Path(__file__).resolve().parent.parent)
        self._paths = [pkg_parent]

    @classmethod
    def connect(cls, address: str | None, workers: int, *, run_id: str) -> "DaskPool":
        if not address:
            # our own cluster: a task whose worker dies is failed at once, never silently re-run
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                cluster = distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                    # no dashboard; the scheduler's HTTP endpoint on any free loopback port
                    dashboard_address=None, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                    silence_logs=logging.CRITICAL, preload=[_IGNORE_SIGINT])
            try:
                client = distributed.Client(cluster)
            except BaseException:
                cluster.close()
                raise
            return cls(client, run_id, cluster, reruns=False)
        try:
            client = distributed.Client(address, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as e:
            raise UsageError(f"cannot reach the Dask scheduler at {address}: {e}",
                             hint="start one with `dask scheduler`, or check --scheduler") from None
        return cls(client, run_id, reruns=_scheduler_reruns(client))

    # --- the pool interface ------------------------------------------------------------------------
    def submit(self, spec: StepSpec, callback: Callable[[Future], None]) -> Future:
        ours: Future = Future()
        ours.add_done_callback(callback)
        ours.set_running_or_notify_cancel()
        error = None
        if self.client.status in ("closing", "closed"):
            error = "lost the connection to the Dask scheduler"
        elif spec.resources:
            missing = self._unmet_resources(spec.resources)
            if missing:
                error = f"no Dask worker offers the resources {missing} (start one with --resources)"
        if error:
            _write_log(spec, f"[orchestrator] {error}\n".encode())
            _complete(ours, _lost(spec, StepStatus.FAILED, error))
            return ours
        key = f"{spec.step_id}-{spec.attempt}-{uuid.uuid4().hex[:12]}"
        names = dict(self.names, started=self.names["started"] and self.names["started"] + key)
        fut = self.client.submit(self._bootstrap, self._paths, pickle.dumps(spec), names, key=key,
                                 pure=False, resources=dict(spec.resources) or None, retries=0)
        with self._lock:
            self._running[key] = (fut, ours, spec)
        fut.add_done_callback(lambda f, k=key: self._finished(k, f))
        return ours

    def cancel(self, what: str) -> None:
        """Raise the run's flag "all", "now" or a step's own; workers see it within CANCEL_POLL
        (`dask_worker`)."""
        name = self.names.get(what) if what in ("all", "now") else self.names["step"] + what
        with self._lock:
            self._set.add(name)
        raise_flag = distributed.Event(name, client=self.client).set
        try:
            self._control.submit(self._call, raise_flag)   # never block the dispatcher's loop
        except RuntimeError:  # the control thread is gone: we are shutting down
            self._call(raise_flag)

    def fds(self) -> list[int]:
        return []               # results come through Dask's callback thread and the wake pipe

    def poll(self, ready: Any) -> None:
        return None

    @property
    def broken(self) -> bool:
        return False            # a lost Dask worker fails its step's future; the pool goes on

    def worker_pids(self) -> list[int]:
        return []               # nothing local to kill: remote hosts kill their own trees

    def worker_running(self, fut) -> int | None:
        return None

    def exit_codes(self) -> dict[int, int | None]:
        return {}

    def replace(self) -> None:
        """Nothing to replace: Dask replaces lost workers itself."""

    def shutdown(self, *, kill: bool = False) -> None:
        if self.client is None:
            return
        self._closing = True
        with self._lock:
            keys, running = list(self._running), list(self._running.values())
        if kill and running:
            self.cancel("now")  # steps still running remotely are killed without grace
        self._control.shutdown(wait=True)
        markers = [self.names["started"] + key for key in keys] if self.names["started"] else []
        for name in sorted(self._set) + [self.names["all"], self.names["now"]] + markers:
            self._call(distributed.Event(name, client=self.client).clear)
        if running:
            try:
                self.client.cancel([fut for fut, _, _ in running], force=True)
            except Exception:  # noqa: BLE001 - best effort while closing
                pass
            for _, ours, spec in running:
                _complete(ours, _lost(spec, StepStatus.CANCELLED, "cancelled"))
        # a client still trying to reach a lost scheduler logs a traceback as it is closed; the
        # steps already say what was lost
        quiet = self.client.status != "running"
        client_log = logging.getLogger("distributed.client")
        level = client_log.level
        if quiet:
            client_log.setLevel(logging.CRITICAL)
        try:
            self.client.close(timeout=CLOSE_TIMEOUT)
        except Exception:  # noqa: BLE001
            pass
        finally:
            client_log.setLevel(level)
        if self.cluster is not None:
            try:
                self.cluster.close(timeout=CLOSE_TIMEOUT)
            except Exception:  # noqa: BLE001
                pass
        self.client = None

    # --- helpers -----------------------------------------------------------------------------------
    def _call(self, fn: Callable[[], Any]) -> None:
        """One scheduler call from the orchestrator side; its failure is logged, never raised."""
        if self.client is None or self.client.status != "running":
            return  # no scheduler to tell (it went away; a reconnecting client would wait for it)
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a flag we could not raise is reported, not raised
            log.warning("dask scheduler call failed: %s", e)

    def _unmet_resources(self, wanted: Any) -> str | None:
        if not wanted:
            return None
        try:
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        except Exception:  # noqa: BLE001 - let the scheduler decide
            return None
        for info in workers.values():
            have = info.get("resources") or {}
            if all(have.get(k, 0) >= v for k, v in wanted.items()):
                return None
        return ", ".join(f"{k}={v:g}" for k, v in wanted.items())

    def _finished(self, key: str, fut: Any) -> None:
        """Dask's callback thread: turn the task's outcome into a StepResult and the step's log."""
        with self._lock:
            entry = self._running.pop(key, None)
        if entry is None:
            return
        _, ours, spec = entry
        data = b""
        try:
            result, data = fut.result()
        except CancelledError as e:  # we cancel only at shutdown: else the scheduler dropped it
            why = " ".join(str(e).split("\n")[0].split()[1:]) or "cancelled"
            result = (_lost(spec, StepStatus.CANCELLED, "cancelled") if self._closing else
                      _lost(spec, StepStatus.FAILED, f"lost on the Dask scheduler: task {why}"))
            data = f"[orchestrator] attempt {spec.attempt}: {result.error}\n".encode()
        except BaseException as e:  # noqa: BLE001 - e.g. KilledWorker, a lost connection
            why = _describe_failure(e)
            result = _lost(spec, StepStatus.FAILED, why, worker=_last_worker(e))
            data = (f"[orchestrator] attempt {spec.attempt}: {why}; the output of this attempt "
                    f"was lost with its worker\n").encode()
        try:
            _write_log(spec, data)
        except OSError as e:
            result = replace(result, error=(result.error or "") + f" (log not written: {e})")
        fut.release()
        if self.client is not None and self.names["started"]:
            started = distributed.Event(self.names["started"] + key, client=self.client)
            try:
                self._control.submit(self._call, started.clear)
            except RuntimeError:  # shutting down: the Event goes with the scheduler's cleanup
                pass
        _complete(ours, result)


def _complete(fut: Future, result: StepResult) -> None:
    """Complete our future once: Dask's callback and shutdown may race for it."""
    try:
        fut.set_result(result)
    except InvalidStateError:
        pass


def _lost(spec: StepSpec, status: StepStatus, error: str, worker: str = "") -> StepResult:
    t = time.time()
    return StepResult(spec.step_id, spec.attempt, status, error=error, started_at=t, finished_at=t,
                      worker=worker)


def _describe_failure(e: BaseException) -> str:
    if distributed is not None and isinstance(e, distributed.KilledWorker):
        return f"worker process died (Dask worker {_last_worker(e) or '?'} died while running it)"
    return f"worker process died ({type(e).__name__}: {e})"


def _last_worker(e: BaseException) -> str:
    last = getattr(e, "last_worker", None)
    return getattr(last, "address", None) or (last if isinstance(last, str) else "")


def _write_log(spec: StepSpec, data: bytes) -> None:
    """The attempt's log on the orchestrator's side, as `attempt.LogSink` writes it locally (no
    file for an attempt that left none)."""
    if not data:
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if spec.attempt > 1 else os.O_TRUNC)
    fd = os.open(spec.log_path, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _scheduler_reruns(client: Any) -> bool:
    """Whether this scheduler runs a task again when its worker dies (allowed-failures > 0)."""
    def allowed_failures(dask_scheduler):   # local, so pickled by value: no import on the scheduler
        return dask_scheduler.allowed_failures
    try:
        return client.run_on_scheduler(allowed_failures) != 0
    except Exception:  # noqa: BLE001 - unknown: assume the default (3), and guard
        return True


def _make_bootstrap() -> Callable:
    """The function Dask sends to the workers, pickled by value (it is local to this function).

    It makes `orchestrator` importable (the path it has on the orchestrator's machine, as a last
    resort after an installed copy) before anything of ours is unpickled, so neither the scheduler nor
    a worker needs more than `distributed` installed when they share the orchestrator's filesystem.
    """
    def orchestrator_step(paths: list, blob: bytes, names: dict):
        import sys
        for p in paths:
            if p not in sys.path:
                sys.path.append(p)
        from orchestrator.dask_worker import run_remote
        return run_remote(blob, names)
    return orchestrator_step
