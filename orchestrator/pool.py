"""Where steps run: the local process pool (and, later, other executors with the same face).

`LocalPool` wraps a `concurrent.futures.ProcessPoolExecutor` whose workers run `worker.init_worker`
(child subreaper, die with the orchestrator, ignore the terminal's Ctrl-C). A worker killed from outside
breaks a `ProcessPoolExecutor` as a whole; `replace()` starts a fresh one, and `exit_codes()` says which
worker died of what, so the dispatcher can blame only the step that was on it.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Callable

from .model import StepSpec
from .worker import init_worker, run_step


class LocalPool:
    name = "process"

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

    @property
    def broken(self) -> bool:
        return bool(self.executor is not None and getattr(self.executor, "_broken", False))

    def worker_pids(self) -> list[int]:
        return list(self._procs or {})

    def exit_codes(self) -> dict[int, int | None]:
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
