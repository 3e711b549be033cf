"""The console script's entry: `run` and `validate` parsed without click, everything else by click.

click, with the `typing` and `inspect` it imports, is ~15 ms of a command's start-up (measured on the
2-core reference machine, `bench/NOTES.md`): more than loading and checking a 10 000-step workstream,
and paid again by every `orchestrator run` a script or a Makefile starts. So the two commands that are
started in loops are parsed here, from a table of the options `cli` declares, whenever every argument
is one this parser reads exactly as click would: long options (`--opt value`, `--opt=value`), `-q`,
`-v` and one FILE (and a lone `--version`). Anything else (help, a misspelt option, a missing or bad
value, a repeated option, `--resume` followed by a word, short-option clusters, `--`) goes to click,
which parses and reports it as always. `tests/cli/test_entry.py` holds the table to click's
declarations and checks that both parsers give the same options for the same arguments.
"""
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# option -> (parameter name, kind); kinds: "flag", "text", "float", "workers" (`--max-workers`),
# "resume" (an optional value), or a choice ("on_failure": one of commands.ON_FAILURE_CHOICES, ...)
_SOURCE = {"--ws-id": ("ws_id", "text"), "--workstreams-dir": ("workstreams_dir", "text")}
RUN_OPTIONS: dict[str, tuple[str, Any]] = {
    **_SOURCE,
    "--max-workers": ("max_workers", "workers"), "--sequential": ("sequential", "flag"),
    "--fail-fast": ("fail_fast", "flag"), "--on-failure": ("on_failure", "on_failure"),
    "--on-conflict": ("on_conflict", "on_conflict"), "--dry-run": ("dry_run", "flag"),
    "--resume": ("resume", "resume"), "--force": ("force", "flag"), "--grace": ("grace", "float"),
    "--executor": ("executor", "executor"), "--scheduler": ("scheduler", "text"),
    "--worktrees-dir": ("worktrees_dir", "text"), "--quiet": ("quiet", "flag"), "-q": ("quiet", "flag"),
    "--verbose": ("verbose", "flag"), "-v": ("verbose", "flag"),
}
VALIDATE_OPTIONS: dict[str, tuple[str, Any]] = {**_SOURCE, "--on-conflict": ("on_conflict", "on_conflict")}
COMMANDS = {"run": RUN_OPTIONS, "validate": VALIDATE_OPTIONS}
# what click gives a parameter that is not on the command line
DEFAULTS: dict[str, Any] = {"file": None, "ws_id": None, "workstreams_dir": None, "max_workers": None,
                            "sequential": False, "fail_fast": False, "on_failure": None,
                            "on_conflict": "error", "dry_run": False, "resume": None, "force": False,
                            "grace": 5.0, "executor": None, "scheduler": None, "worktrees_dir": None,
                            "quiet": False, "verbose": False}


# A list while a command is the process's last act (`main`, `cli.main`, which end it with `exit_now`):
# what the command built (`kept`) is then never freed, where freeing it object by object would cost
# more than linear time (a 100 000-step workstream: ~55 ms, its plan ~9 ms; the frees miss the caches).
# None for every other caller (tests, library use): nothing is kept.
KEEP_TO_EXIT: list[object] | None = None


def kept(obj: Any) -> Any:
    if KEEP_TO_EXIT is not None:
        KEEP_TO_EXIT.append(obj)
    return obj


def keep_to_exit() -> None:
    """The command about to run is the process's last act (it ends with `exit_now`)."""
    global KEEP_TO_EXIT
    KEEP_TO_EXIT = []


class _Unsure(Exception):
    """An argument this parser does not read exactly as click would: click parses the command."""


def parse(argv: list[str]) -> tuple[str, dict[str, Any]] | None:
    """(command, options) as click would give them to the command, or None to leave it to click.
    Raises `UsageError` where click would call the option's callback and it would refuse."""
    if not argv or argv[0] not in COMMANDS:
        return None
    table = COMMANDS[argv[0]]
    try:
        raw = _tokens(argv[1:], table)
    except _Unsure:
        return None
    names = {name for name, _ in table.values()} | {"file"}
    options = {name: DEFAULTS[name] for name in names}
    for name, (kind, value) in raw.items():
        if kind == "flag":
            options[name] = True
        elif kind == "float":
            try:
                options[name] = float(value)
            except ValueError:
                return None
        elif kind in ("on_failure", "on_conflict", "executor"):
            from . import commands
            if value not in getattr(commands, f"{kind.upper()}_CHOICES"):
                return None
            options[name] = value
        elif kind == "workers":
            from .commands import max_workers_option
            options[name] = max_workers_option(value)
        else:
            options[name] = value
    return argv[0], options


def _tokens(args: list[str], table: dict[str, tuple[str, Any]]) -> dict[str, tuple[str, Any]]:
    """Parameter name -> (kind, raw value) for every argument; raises _Unsure."""
    seen: dict[str, tuple[str, Any]] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            if arg == "-" or "file" in seen:
                raise _Unsure
            seen["file"] = ("text", arg)
            continue
        opt, eq, value = arg.partition("=")
        if opt not in table or (eq and not opt.startswith("--")):
            raise _Unsure
        name, kind = table[opt]
        if name in seen:
            raise _Unsure                      # click keeps the last one; leave repeats to it
        if kind == "flag":
            if eq:
                raise _Unsure
            value = None
        elif kind == "resume":
            if not eq:
                if i < len(args) and not args[i].startswith("-"):
                    raise _Unsure              # `--resume X`: a run id or the FILE? click decides
                value = ""
        elif not eq:
            if i >= len(args) or args[i].startswith("-"):
                raise _Unsure
            value = args[i]
            i += 1
        seen[name] = (kind, value)
    return seen


def main(argv: list[str] | None = None) -> None:
    """Console-script entry (also `python -m orchestrator` and the scripts/ wrappers): the process
    ends here. Tests drive `cli.cli` or `run_fast` instead."""
    keep_to_exit()
    args = sys.argv[1:] if argv is None else list(argv)
    code = run_fast(args)
    if code is None:
        from .cli import main as click_main
        click_main(args)
        return
    exit_now(code)
    sys.exit(code)


def run_fast(args: list[str]) -> int | None:
    """Run `args` without click when `parse` reads them; the exit code, or None for click."""
    from .errors import OrchestratorError
    if args == ["--version"]:            # what click's version option prints
        from . import __version__
        print(f"orchestrator {__version__}")
        return 0
    try:
        parsed = parse(args)
        if parsed is None:
            return None
        command, options = parsed
        commands = _import_run_path(command)
        return getattr(commands, command)(**options)
    except OrchestratorError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("Aborted!", file=sys.stderr)   # as click says it
        return 1


def _import_run_path(command: str) -> Any:
    """Import what `command` needs with the cyclic collector off, then freeze what the modules made
    (they live as long as the process): a dozen collections, each scanning those ten thousand
    objects again, cost ~2 ms of every run's start-up. Returns the `commands` module."""
    import gc
    enabled = gc.isenabled()
    gc.disable()
    try:
        from . import commands, loader  # noqa: F401
        if command == "run":
            from . import console, dispatcher, inline  # noqa: F401
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
    return commands


def exit_now(code: object) -> None:
    """End the process without the interpreter's teardown, which frees every object and module one
    by one: ~10 ms after any command, more after a big workstream. By now every file this command
    wrote is closed (the store writes through raw descriptors). Skipped whenever the teardown could
    still matter: another thread alive (a kill thread in its grace period must finish), an exit
    handler registered (the live view restores the terminal), a Dask client (distributed cleans up
    at exit), or stdout/stderr that cannot be flushed (the normal exit reports it)."""
    if not isinstance(code, int) and code is not None:
        return
    # a module never imported has nothing to say (no exit handler registered): importing it only
    # to ask costs ~1 ms; threads are counted by `_thread` (ours start there, see `lean`)
    from .lean import others_running
    atexit = sys.modules.get("atexit")
    if others_running() or (atexit is not None and getattr(atexit, "_ncallbacks", lambda: 1)()) \
            or "distributed" in sys.modules:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code or 0)
