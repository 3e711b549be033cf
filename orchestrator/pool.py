"""Where steps run locally: the pools the dispatcher drives (Dask's lives in dask_pool.py).

Every pool has one face: `submit(spec, callback)`, `cancel(what)`, `fds()`/`poll(ready)` (descriptors
the dispatcher's select should watch, and what to do when they are readable), `worker_pids()`,
`broken`/`exit_codes()`/`replace()` for executors that break as a whole, and `shutdown(kill)`. Pool
workers run `worker.init_worker` (child subreaper, die with the orchestrator, ignore the terminal's
Ctrl-C).

`LocalPool` (the default) runs on `workerpool.WorkerPool`, an Executor with direct pipes: a dead worker
fails only its own step. `StdlibPool` (`ORCHESTRATOR_POOL=stdlib`) runs on
`concurrent.futures.ProcessPoolExecutor`, which one dead worker breaks as a whole: `replace()` starts a
fresh one, and `exit_codes()` says which worker died of what, so the dispatcher can blame only the step
that was on it.
"""
from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor

from .model import StepSpec
from .worker import init_worker, run_step

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable


class LocalPool:
    """The default local pool: a `WorkerPool` polled from the dispatcher's own loop."""

    name = "process"

    def __init__(self, workers: int, progress_fd: int | None):
        from .workerpool import WorkerPool
        # WorkerDied names the worker's pid, so steps need not announce where they started
        self.executor = WorkerPool(workers, initializer=init_worker,
                                   initargs=(progress_fd, None, False))
        self.broken = False

    def submit(self, spec: StepSpec, callback: Callable[[Future], None]) -> Future:
        fut = self.executor.submit(run_step, spec)
        fut.add_done_callback(callback)
        return fut

    def fds(self) -> list[int]:
        return self.executor.fds()

    def poll(self, ready) -> None:
        self.executor.poll(ready)

    def cancel(self, what: str) -> None:
        """Local workers read the run's .cancel/ files, which the store writes: nothing to do."""

    def worker_pids(self) -> list[int]:
        return self.executor.worker_pids()

    def worker_running(self, fut: Future) -> int | None:
        return self.executor.worker_running(fut)

    def exit_codes(self) -> dict[int, int | None]:
        return dict(self.executor.exit_codes)

    def replace(self) -> None:
        """A WorkerPool replaces dead workers itself."""

    def shutdown(self, *, kill: bool = False) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True, kill=kill)


class StdlibPool:
    """`concurrent.futures.ProcessPoolExecutor`, for comparison and as a fallback."""

    name = "process-stdlib"

    def __init__(self, workers: int, progress_fd: int | None):
        self.workers = workers
        self.progress_fd = progress_fd
        self.executor: ProcessPoolExecutor | None = None
        self._procs: dict = {}
        self._make()

    def _make(self) -> None:
        # fork: workers inherit the progress pipe and start in milliseconds
        ctx = multiprocessing.get_context("fork")
        self.executor = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=init_worker,
                                            initargs=(self.progress_fd, None))
        # the executor's own pid -> Process table: kept to learn a dead worker's exit code
        self._procs = self.executor._processes  # type: ignore[attr-defined]

    def submit(self, spec: StepSpec, callback: Callable[[Future], None]) -> Future:
        assert self.executor is not None
        fut = self.executor.submit(run_step, spec)
        fut.add_done_callback(callback)
        return fut

    def cancel(self, what: str) -> None:
        """Local workers read the run's .cancel/ files, which the store writes: nothing to do."""

    def fds(self) -> list[int]:
        return []  # results arrive through done-callbacks and the dispatcher's wake pipe

    def poll(self, ready) -> None:
        return None

    @property
    def broken(self) -> bool:
        return bool(self.executor is not None and getattr(self.executor, "_broken", False))

    def worker_running(self, fut: Future) -> int | None:
        return None  # known from the workers' "start" events instead

    def worker_pids(self) -> list[int]:
        return list(self._procs or {})

    def exit_codes(self) -> dict[int, int | None]:
        # A broken pool's manager thread fails the futures first, then terminates and joins the
        # workers. Two threads waiting on one child race: the loser sees ECHILD and multiprocessing
        # reports its exit code as None, so a killed worker looked alive (a flaky restart of the
        # step it ran). Let the manager finish its reaping before reading the codes.
        manager = getattr(self.executor, "_executor_manager_thread", None)
        if manager is not None and manager is not threading.current_thread():
            manager.join(timeout=10.0)
        out = {}
        for pid, proc in list((self._procs or {}).items()):
            try:
                proc.join(timeout=1.0)
                out[pid] = proc.exitcode
            except Exception:  # noqa: BLE001 - a half-torn-down pool: unknown is an answer
                out[pid] = None
        return out

    def replace(self) -> None:
        old = self.executor
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)
        self._make()

    def shutdown(self, *, kill: bool = False) -> None:
        if self.executor is None:
            return
        if kill:
            for proc in list((self._procs or {}).values()):
                try:
                    proc.kill()
                except Exception:  # noqa: BLE001
                    pass
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor = None
