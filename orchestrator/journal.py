"""The run's own record while it goes: a record per step, the live state, and the files left at the end.

`RunJournal` is the dispatcher's bookkeeping, kept in the dispatcher's thread and written through the
store (the one module that owns the run directory):

    open()               lock, run id, run directory; on `--resume`, steps that succeeded with an
                         unchanged definition are kept (their records come back from the old state)
    log(line)            a line of orchestrator.log
    dirty, flush()       state.json, coalesced: at most every STATE_FLUSH_INTERVAL and only after a
                         change; only the steps that changed are encoded again (`StateJson`); a
                         state bigger than STATE_FLUSH_RATE bytes waits longer: its size in seconds
                         at that rate (at most STATE_FLUSH_MAX)
    ended, encode_ended() the steps that just ended, encoded (state entry, summary entry and line)
                         while the loop would wait, so that flushes and the finish mostly join
    finish(status)       the final state.json, results_summary.json, the markdown report, junit.xml,
                         the duration history and the RUN END line
    close_after_crash()  what is known so far, when the loop itself failed

`execution` is the run's effective settings (the file's, with the command line's overrides), fixed for
the run: it goes into RUN START, state.json and the summary.
"""
from __future__ import annotations

import os

from . import history
from .errors import UsageError
from .model import StepStatus, Workstream
from .records import StateJson, StepRecord, summary_dict
from .junit import render_junit
from .report import render_report
from .store import RunStore, new_run_id, readable_item

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

    from .scheduler import Scheduler

STATE_FLUSH_INTERVAL = 0.2
# state.json is the whole run each time: 100 000 steps make ~40 MB, ~90 ms of the loop's thread to
# join and ~190 ms of the writer's; a big state is written at most at this rate (2 MB every 0.2 s)
STATE_FLUSH_RATE = 10e6    # bytes a second
STATE_FLUSH_MAX = 5.0


def flush_interval(size: int) -> float:
    """The least time between two writes of a live state of `size` characters (ASCII: bytes)."""
    return min(max(STATE_FLUSH_INTERVAL, size / STATE_FLUSH_RATE), STATE_FLUSH_MAX)


def _log_file(sid: str) -> str:
    """A step's log, as the summary names it (relative to the run directory)."""
    return f"steps/{sid}.log"


class RunJournal:
    def __init__(self, ws: Workstream, store: RunStore, secrets: tuple[str, ...],
                 execution: dict[str, Any], wall: Callable[[], float]):
        self.ws, self.store, self.secrets, self.execution, self.wall = ws, store, secrets, execution, wall
        store.secrets = secrets
        self.records: dict[str, StepRecord] = {}
        self.holds: list[dict[str, Any]] = []   # adaptive scaling: when new starts were held, and why
        self.run_id: str | None = None
        self.run_dir: str | None = None
        self.started_at = wall()
        self.dirty = True
        self._last_flush = 0.0
        self._flush_every = STATE_FLUSH_INTERVAL    # longer for a big state (flush_interval)
        self._state_text: StateJson | None = None   # made once the records are complete
        self.ended: list[str] = []     # steps that ended since encode_ended last ran

    def open(self, resume: str | None, force: bool, warn: Callable[[str], None]) -> list[str]:
        """Take the lock, open the run directory, restore a resumed run. Returns the steps kept."""
        ws, store = self.ws, self.store
        resume_id = None
        if resume is not None and not force:
            resume_id = resume or store.latest_run_id()
            if not resume_id:
                raise UsageError(f"nothing to resume: workstream {ws.id} has no earlier run")
        run_id = resume_id or new_run_id(self.wall())
        warning = store.acquire_lock(run_id)
        self.run_id = run_id
        self.run_dir = store.open_run(run_id, new=resume_id is None)
        if warning:
            warn(f"warning: {warning}")
            store.log(f"WARNING {warning}")
        timeout_of = {s.id: s.timeout or ws.execution.timeout_per_step for s in ws.steps}
        for s in ws.steps:
            self.records[s.id] = StepRecord(s.id, s.depends_on, timeout_of[s.id], s.description,
                                            definition_hash=s.definition_hash())
        kept: list[str] = []
        self.started_at = self.wall()
        if resume_id:
            prev = store.read_state(resume_id) or {}
            self.started_at = prev.get("started_epoch") or self.started_at
            for sid, d in (prev.get("steps") or {}).items():
                if sid not in self.records:
                    continue
                old = StepRecord.from_state(sid, d, timeout_of[sid])
                rec = self.records[sid]
                rec.attempts = old.attempts
                if old.status is StepStatus.SUCCEEDED and old.definition_hash == rec.definition_hash:
                    old.kept = True
                    old.description = rec.description
                    self.records[sid] = old
                    kept.append(sid)
            store.log(f"RESUME run={run_id} kept={len(kept)} rerun={len(ws.steps) - len(kept)}")
        return kept

    def log(self, line: str) -> None:
        self.store.log(line)

    # --- the live state ----------------------------------------------------------------------------
    def next_flush(self) -> float | None:
        """When a flush is due (clock time), or None while nothing changed."""
        return self._last_flush + self._flush_every if self.dirty else None

    def flush(self, now: float, sched: Scheduler, force: bool = False) -> None:
        if not force and (not self.dirty or now - self._last_flush < self._flush_every):
            return
        self.refresh_blocked(sched)
        text = self.state_json("running")
        # from the store's writer thread, started by the first write: the loop's first pass,
        # after the pool has forked what it forks at its start (`force`: now, from this thread)
        self.store.write_json_text("state.json", text, background=not force)
        self._flush_every = flush_interval(len(text))
        self.dirty = False
        self._last_flush = now

    def encode_ended(self) -> None:
        """Encode the state entries of the steps that just ended, while the loop would wait: they
        seldom change again, so the next state.json (the final one above all) is mostly a join."""
        if self.ended:
            st = self._state_text
            if st is not None and self.secrets:
                st.encode(self.ended)
            elif st is not None:   # and their summary entries and lines (see write_results)
                st.make(self.ended, self.started_at, _log_file, readable_item)
            self.ended.clear()

    def state_json(self, status: str, finished: float | None = None) -> str:
        """The state as compact JSON, secrets masked, from each step's cached encoding."""
        if self._state_text is None:
            self._state_text = StateJson(self.records, self.secrets)
        return self._state_text.text(ws=self.ws, run_id=self.run_id, status=status,
                                     pid=os.getpid(), started_at=self.started_at,
                                     updated_at=self.wall(), finished_at=finished,
                                     execution=self.execution)

    def refresh_blocked(self, sched: Scheduler) -> None:
        """A blocked step's `blocked_by` grows when more of its dependencies fail: the steps the
        scheduler says it grew for get it again (a set field has its state encoded again). Not a
        look at every record: that cost ~0.25 ms a flush for each 1000 steps."""
        for sid in sched.take_grown():
            rec = self.records[sid]
            now = list(sched.state[sid].blocked_by)
            if now != rec.blocked_by:
                rec.blocked_by = now

    # --- the end -----------------------------------------------------------------------------------
    def final_status(self, interrupted: bool) -> str:
        if interrupted:
            return "interrupted"
        ok = all(r.status is StepStatus.SUCCEEDED for r in self.records.values())
        return "succeeded" if ok else "failed"

    def finish(self, status: str, sched: Scheduler) -> dict[str, Any]:
        """Write every file a finished run leaves, the RUN END line, and release the lock."""
        finished = self.wall()
        self.refresh_blocked(sched)
        summary = self.write_results(status, finished)
        observed = {sid: rec.duration_s for sid, rec in self.records.items()
                    if rec.status is StepStatus.SUCCEEDED and not rec.kept and rec.attempts == 1
                    and rec.duration_s is not None}
        try:
            self.store.write_history(history.updated(self.store.read_history(), self.ws, observed))
        except OSError as e:  # history is a hint: a run never fails for it
            self.log(f"WARNING could not write history.json: {e}")
        c = summary["summary"]
        self.log(f"RUN END ws={self.ws.id} run={self.run_id} status={status} "
                 f"succeeded={c['succeeded']} failed={c['failed']} timed_out={c['timed_out']} "
                 f"blocked={c['blocked']} skipped={c['skipped']} cancelled={c['cancelled']} "
                 f"pending={c['pending']} wall={c['wall_time_s']}s")
        self.store.close()
        return summary

    def write_results(self, status: str, finished: float) -> dict[str, Any]:
        self.store.write_json_text("state.json", self.state_json(status, finished))
        log_files = {sid: _log_file(sid) for sid in self.records}
        st = self._state_text   # the entries of the steps that ended unchanged, made as they ended
        summary = summary_dict(ws=self.ws, run_id=self.run_id, status=status,
                               started_at=self.started_at, finished_at=finished,
                               execution=self.execution, records=self.records, log_file=log_files,
                               made=st.made if st is not None and not self.secrets else None)
        if self.holds:
            summary["adaptive_holds"] = self.holds
        self.store.write_json("results_summary.json", summary,
                              known=st.lines if st is not None else None)
        tails = {s["id"]: self.store.log_tail(s["id"]) for s in summary["steps"]
                 if s["status"] not in ("succeeded", "pending", "blocked", "skipped")}
        # both are views of the summary just synced to disk: no fsync of their own (~1 ms each)
        self.store.write_text("execution_report.md", render_report(summary, log_tails=tails),
                              fsync=False)
        self.store.write_text("junit.xml", render_junit(summary), fsync=False)
        return summary

    def close_after_crash(self, started: bool) -> None:
        """An unexpected error in the loop itself: still leave a readable state and a summary
        (`started`: the run got as far as its scheduler)."""
        try:
            for rec in self.records.values():
                if rec.status is StepStatus.RUNNING:
                    rec.status = StepStatus.CANCELLED
                    rec.error = rec.error or "cancelled: the orchestrator stopped unexpectedly"
            if self.run_dir is not None and started:
                self.write_results("interrupted", self.wall())
        finally:
            self.store.close()
