"""The run's record as data: the live state dict and the final summary dict.

Both are pure functions of the scheduler's states and the per-step records the dispatcher keeps, so
`state.json`, `results_summary.json`, the report and `status` all tell one story. A `StepRecord` is the
dispatcher's mutable bookkeeping for one step across its attempts.
"""
from __future__ import annotations

from _operator import itemgetter

from .frozen import defaults, factory, record
from .masking import mask, mask_obj
from .model import StepResult, StepStatus, Workstream
from .analysis import max_concurrency
from .fmt import iso, json_encoder
from .lean import dumps, quote_ascii

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Mapping


@record(frozen=False)
class StepRecord:
    step_id: str
    depends_on: tuple[str, ...]
    timeout_s: float
    description: str = ""
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    started_at: float | None = None      # first attempt's start (epoch)
    finished_at: float | None = None     # last attempt's end
    task_index: int | None = None
    task_count: int | None = None
    worker: str | None = None
    error: str | None = None
    exit_code: int | None = None
    blocked_by: list[str] = factory(list)
    outputs: dict[str, Any] = factory(dict)
    return_value: Any = None
    result: StepResult | None = None
    acceptance_tests: list[dict] = factory(list)
    peak_rss_bytes: int | None = None
    cpu_time_s: float | None = None
    definition_hash: str = ""
    kept: bool = False                   # succeeded in an earlier session of a resumed run
    start_is_estimate: bool = False      # started_at is the submit time, until the worker tells

    def __init__(self, step_id: str, depends_on: tuple[str, ...], timeout_s: float,
                 description: str = "", definition_hash: str = ""):
        # straight into __dict__ (a run makes one per step at its start; the field setter below,
        # which reports the change, is for changes)
        self.__dict__.update(_FRESH, step_id=step_id, depends_on=depends_on, timeout_s=timeout_s,
                             description=description, definition_hash=definition_hash,
                             blocked_by=[], outputs={}, acceptance_tests=[])

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)

    def absorb(self, result: StepResult) -> None:
        """Take in one attempt's result (straight into __dict__, the change reported once)."""
        d = self.__dict__
        if d["started_at"] is None or d["start_is_estimate"]:
            d["started_at"] = result.started_at
            d["start_is_estimate"] = False
        d.update(result=result, finished_at=result.finished_at, exit_code=result.exit_code,
                 error=result.error, worker=result.worker or d["worker"], outputs=dict(result.outputs),
                 return_value=result.return_value,
                 acceptance_tests=[dict(t.to_dict(), output_tail=t.output_tail)
                                   for t in result.acceptance_tests])
        if result.peak_rss_bytes:
            d["peak_rss_bytes"] = max(d["peak_rss_bytes"] or 0, result.peak_rss_bytes)
        if result.cpu_time_s is not None:
            d["cpu_time_s"] = round((d["cpu_time_s"] or 0.0) + result.cpu_time_s, 4)
        _report_change(d)

    def begin_attempt(self, attempt: int) -> None:
        """Attempt `attempt` is about to start (its fields at once, the change reported once)."""
        d = self.__dict__
        d.update(attempts=attempt, status=StepStatus.RUNNING, task_index=None, task_count=None)
        _report_change(d)

    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        d[name] = value
        if name[0] != "_":
            _report_change(d)

    def state_entry(self, secrets: tuple[str, ...]) -> str:
        """`"<id>":{...}`, this step's part of the compact state.json (secrets masked).

        The usual entry (no secrets to mask, no outputs, return value or tests) is written field by
        field, the same bytes as encoding `state_dict()` in half the time (a run encodes an entry
        each time a step changes: 1000 steps at its start, again as they run)."""
        d = self.__dict__
        if secrets or d["outputs"] or d["acceptance_tests"] or d["return_value"] is not None:
            return (dumps(mask(self.step_id, secrets)) + ":"
                    + _compact(mask_obj(self.state_dict(), secrets)))
        status, started, finished = d["status"], d["started_at"], d["finished_at"]
        terminal = status.terminal
        deps = d.get("_deps_json")
        if deps is None:   # fixed for the run: encoded once
            deps = d["_deps_json"] = "[" + ",".join(map(_str, d["depends_on"])) + "]"
        j = _j
        if status is _PENDING and _UNTOUCHED_FIELDS(d) == _UNTOUCHED:   # the first state.json's
            return (f'{_str(d["step_id"])}:{{"status":"pending","depends_on":{deps},'
                    f'{_UNTOUCHED_MID}{j(d["definition_hash"])}{_UNTOUCHED_END}')
        return (f'{_str(d["step_id"])}:{{"status":"{status.value}","depends_on":{deps},'
                f'"attempt":{j(d["attempts"])},'
                f'"started_at":{_str(iso(started)) if started else "null"},'
                f'"finished_at":{_str(iso(finished)) if finished and terminal else "null"},'
                f'"started_epoch":{j(started)},"finished_epoch":{j(finished)},'
                f'"duration_s":{j(_r(self.duration_s)) if terminal else "null"},'
                f'"task_index":{j(d["task_index"])},"task_count":{j(d["task_count"])},'
                f'"error":{j(d["error"])},"exit_code":{j(d["exit_code"])},'
                f'"blocked_by":{j(d["blocked_by"])},"worker":{j(d["worker"])},'
                f'"definition_hash":{j(d["definition_hash"])},"outputs":{{}},'
                f'"return_value":null,"acceptance_tests":[],'
                f'"peak_rss_bytes":{j(d["peak_rss_bytes"])},"cpu_time_s":{j(d["cpu_time_s"])}}}')

    def state_dict(self) -> dict[str, Any]:
        """The step as state.json shows it."""
        return {
            "status": self.status.value, "depends_on": list(self.depends_on), "attempt": self.attempts,
            "started_at": iso(self.started_at) if self.started_at else None,
            "finished_at": iso(self.finished_at) if self.finished_at and self.status.terminal else None,
            "started_epoch": self.started_at, "finished_epoch": self.finished_at,
            "duration_s": _r(self.duration_s) if self.status.terminal else None,
            "task_index": self.task_index, "task_count": self.task_count,
            "error": self.error, "exit_code": self.exit_code, "blocked_by": list(self.blocked_by),
            "worker": self.worker, "definition_hash": self.definition_hash,
            "outputs": self.outputs, "return_value": self.return_value,
            "acceptance_tests": self.acceptance_tests, "peak_rss_bytes": self.peak_rss_bytes,
            "cpu_time_s": self.cpu_time_s,
        }

    @classmethod
    def from_state(cls, step_id: str, d: Mapping[str, Any], timeout_s: float) -> "StepRecord":
        rec = cls(step_id, tuple(d.get("depends_on") or ()), timeout_s)
        rec.status = StepStatus(d.get("status", "pending"))
        rec.attempts = int(d.get("attempt") or 0)
        rec.started_at = d.get("started_epoch")
        rec.finished_at = d.get("finished_epoch")
        rec.worker, rec.error, rec.exit_code = d.get("worker"), d.get("error"), d.get("exit_code")
        rec.outputs = dict(d.get("outputs") or {})
        rec.return_value = d.get("return_value")
        rec.acceptance_tests = list(d.get("acceptance_tests") or [])
        rec.peak_rss_bytes, rec.cpu_time_s = d.get("peak_rss_bytes"), d.get("cpu_time_s")
        rec.definition_hash = d.get("definition_hash") or ""
        return rec


# a record as made (not started, no error, nothing blocking it): its entry is this template's
_UNTOUCHED_FIELDS = itemgetter("attempts", "started_at", "finished_at", "task_index", "task_count",
                               "error", "exit_code", "worker", "peak_rss_bytes", "cpu_time_s",
                               "blocked_by")
_UNTOUCHED = (0, None, None, None, None, None, None, None, None, None, [])
_UNTOUCHED_MID = ('"attempt":0,"started_at":null,"finished_at":null,"started_epoch":null,'
                  '"finished_epoch":null,"duration_s":null,"task_index":null,"task_count":null,'
                  '"error":null,"exit_code":null,"blocked_by":[],"worker":null,"definition_hash":')
_UNTOUCHED_END = (',"outputs":{},"return_value":null,"acceptance_tests":[],"peak_rss_bytes":null,'
                  '"cpu_time_s":null}')
_PENDING = StepStatus.PENDING


def _report_change(d: dict[str, Any]) -> None:
    """Tell the StateJson that writes this step (its `_changed` set) that a field changed: fields
    are replaced, never changed in place, so assignments are all there is to see."""
    changed = d.get("_changed")
    if changed is not None:
        changed.add(d["step_id"])


_FRESH = defaults(StepRecord)
_compact = json_encoder(separators=(",", ":"), default=str)   # the state's (fmt.json_encoder)
_str = quote_ascii   # what _compact writes for a str (ensure_ascii)


def _j(value: Any) -> str:
    """One value as `_compact` writes it: the usual scalars directly, empty containers as
    themselves, anything else through the encoder."""
    if value is None:
        return "null"
    kind = type(value)
    if kind is str:
        return _str(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float and value - value == 0.0:   # finite (the encoder spells NaN and Infinity)
        return float.__repr__(value)
    if not value and (kind is list or kind is dict):
        return "[]" if kind is list else "{}"
    return _compact(value)


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


class StateJson:
    """state.json as compact JSON with secrets masked. Each step's part is kept encoded and encoded
    again only when one of its fields changed (the records tell this object), so writing the live
    state of a 1000-step run is a join, not a thousand calls."""

    def __init__(self, records: Mapping[str, StepRecord], secrets: tuple[str, ...]):
        self.records, self.secrets = records, secrets
        self.entries = dict.fromkeys(records, "")
        self.changed: set[str] = set(records)
        self.made: dict[str, dict[str, Any]] = {}    # summary entries of unchanged ended steps
        self.lines: dict[int, tuple[dict[str, Any], str]] = {}   # by id(entry): (entry, its line)
        for rec in records.values():
            rec.__dict__["_changed"] = self.changed

    def encode(self, sids: Iterable[str]) -> None:
        """Encode these steps' entries now, if they changed since they were last encoded."""
        changed, entries, records = self.changed, self.entries, self.records
        for sid in sids:
            if sid in changed:
                changed.discard(sid)
                entries[sid] = records[sid].state_entry(self.secrets)
                self._unmake(sid)

    def _unmake(self, sid: str) -> None:
        step = self.made.pop(sid, None)
        if step is not None:
            del self.lines[id(step)]

    def make(self, sids: Iterable[str], started_at: float, log_file: Callable[[str], str],
             encode: Callable[[Any], str]) -> None:
        """Make the summary entries of these ended steps now (and `encode` them: the line each has
        in results_summary.json); a step that changes again has its entry dropped (`made`)."""
        self.encode(sids)
        for sid in sids:
            rec = self.records[sid]
            if rec.status.terminal and sid not in self.made:
                step = summary_step(rec, rec.status, started_at, log_file(sid))
                self.made[sid] = step
                self.lines[id(step)] = (step, encode(step))

    def text(self, **head: Any) -> str:
        for sid in self.changed:
            self.entries[sid] = self.records[sid].state_entry(self.secrets)
            self._unmake(sid)
        self.changed.clear()
        text = _compact(mask_obj(_state_head(**head), self.secrets))
        return text[:-1] + ',"steps":{' + ",".join(self.entries.values()) + "}}"


def summary_step(rec: StepRecord, status: StepStatus, started_at: float, log_file: str) -> dict[str, Any]:
    """One step's entry in results_summary.json (`status`: what the summary says it ended as)."""
    dur = rec.duration_s
    start_off = rec.started_at - started_at if rec.started_at is not None else None
    end_off = rec.finished_at - started_at if rec.finished_at is not None else None
    return {
        "id": rec.step_id, "status": status.value, "description": rec.description,
        "depends_on": list(rec.depends_on), "attempts": rec.attempts, "exit_code": rec.exit_code,
        "error": rec.error,
        "started_at": iso(rec.started_at) if rec.started_at is not None else None,
        "finished_at": iso(rec.finished_at) if rec.finished_at is not None else None,
        "start_offset_s": _r(start_off), "end_offset_s": _r(end_off), "duration_s": _r(dur),
        "timeout_s": rec.timeout_s, "log_file": log_file, "blocked_by": list(rec.blocked_by),
        "outputs": rec.outputs, "acceptance_tests": rec.acceptance_tests,
        "peak_rss_bytes": rec.peak_rss_bytes, "cpu_time_s": rec.cpu_time_s, "worker": rec.worker,
        "kept_from_earlier_session": rec.kept,
    }


def _state_head(*, ws: Workstream, run_id: str, status: str, pid: int, started_at: float,
                updated_at: float, finished_at: float | None,
                execution: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": 1, "workstream_id": ws.id, "run_id": run_id, "title": ws.title,
        "status": status, "pid": pid, "started_at": iso(started_at), "started_epoch": started_at,
        "updated_at": iso(updated_at), "finished_at": iso(finished_at) if finished_at else None,
        "execution": dict(execution),
    }


def summary_dict(*, ws: Workstream, run_id: str, status: str, started_at: float, finished_at: float,
                 execution: Mapping[str, Any], records: Mapping[str, StepRecord],
                 log_file: Mapping[str, str],
                 made: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """results_summary.json as a dict. `made`: step entries made earlier (`StateJson.made`) of
    steps that have not changed since."""
    steps = []
    counts = {k: 0 for k in ("succeeded", "failed", "timed_out", "blocked", "skipped", "cancelled",
                             "pending")}
    seq = 0.0
    for sid, rec in records.items():
        st = rec.status if rec.status is not StepStatus.RUNNING else StepStatus.CANCELLED
        counts[st.value] = counts.get(st.value, 0) + 1
        dur = rec.duration_s
        if dur is not None and not rec.kept:
            seq += dur
        step = made.get(sid) if made else None
        steps.append(step if step is not None else summary_step(rec, st, started_at, log_file[sid]))
    wall = max(0.0, finished_at - started_at)
    total = len(steps)
    summary = dict(counts)
    summary.update({
        "total": total, "wall_time_s": _r(wall), "sequential_time_s": _r(seq),
        "speedup": _r(seq / wall if wall > 0 else 0.0, 3),
        "success_rate": _r(counts["succeeded"] / total if total else 0.0),
        "max_concurrency": max_concurrency(steps),
    })
    return {
        "schema_version": 1, "workstream_id": ws.id, "run_id": run_id, "title": ws.title,
        "status": status, "started_at": iso(started_at), "finished_at": iso(finished_at),
        "execution": dict(execution), "steps": steps, "summary": summary,
    }
