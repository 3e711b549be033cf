"""The click-free entry (`orchestrator.entry`): it must read `run` and `validate` arguments exactly as
click does, leave everything it is not sure of to click, and behave as the click command does."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from orchestrator import commands, entry
from orchestrator.cli import cli

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]


def click_params(argv: list[str]) -> dict:
    cmd = cli.commands[argv[0]]
    with cmd.make_context(argv[0], list(argv[1:])) as ctx:
        return dict(ctx.params)


@pytest.mark.parametrize("command", sorted(entry.COMMANDS))
def test_the_table_is_the_click_commands_options(command):
    table = entry.COMMANDS[command]
    params = [p for p in cli.commands[command].params if isinstance(p, click.Option)]
    declared = {o: p for p in params for o in (*p.opts, *p.secondary_opts)}
    assert set(declared) == set(table)
    click_defaults = click_params([command])
    for opt, p in declared.items():
        name, kind = table[opt]
        assert name == p.name
        assert entry.DEFAULTS[name] == click_defaults[name], opt
        if p.is_flag:
            assert kind == "flag", opt
        elif isinstance(p.type, click.Choice):
            assert tuple(p.type.choices) == getattr(commands, f"{kind.upper()}_CHOICES"), opt
        elif p.callback is not None:
            assert kind == "workers", opt
        elif p._flag_needs_value:
            assert kind == "resume", opt
        elif p.type is click.FLOAT:
            assert kind == "float", opt
        else:
            assert kind == "text" and p.type is click.STRING, opt
    args = [p for p in cli.commands[command].params if isinstance(p, click.Argument)]
    assert [a.name for a in args] == ["file"] and entry.DEFAULTS["file"] is None


READ_THE_SAME = [
    ["run", "ws.json"],
    ["run", "--ws-id", "my-ws"],
    ["run", "--ws-id=my-ws", "--workstreams-dir", "ws"],
    ["run", "ws.json", "-q", "--worktrees-dir", "wt"],
    ["run", "ws.json", "--quiet"],
    ["run", "-v", "ws.json", "--max-workers", "3"],
    ["run", "ws.json", "--max-workers=auto", "--sequential", "--fail-fast"],
    ["run", "ws.json", "--on-failure", "complete_running", "--on-conflict", "serialize"],
    ["run", "ws.json", "--dry-run", "--grace", "0.5", "--executor", "dask", "--scheduler", "tcp://h:1"],
    ["run", "ws.json", "--grace=1e1", "--force"],
    ["run", "ws.json", "--resume"],
    ["run", "ws.json", "--resume", "-q"],
    ["run", "ws.json", "--resume=20261125_143022_abc12345"],
    ["run", "ws.json", "--resume="],
    ["run", "-q", "-v", "ws.json"],            # both parse; the command refuses them together
    ["run"],
    ["validate", "ws.json"],
    ["validate", "--ws-id", "x", "--on-conflict=serialize"],
]


@pytest.mark.parametrize("argv", READ_THE_SAME, ids=" ".join)
def test_both_parsers_read_the_same(argv):
    parsed = entry.parse(argv)
    assert parsed is not None, "the fast parser should take this one"
    assert parsed == (argv[0], click_params(argv))


LEFT_TO_CLICK = [
    [], ["--version"], ["-h"], ["status", "ws"], ["graph", "--ws-id", "x"],
    ["run", "--help"], ["run", "-h"], ["run", "-qv", "ws.json"], ["run", "ws.json", "--"],
    ["run", "a.json", "b.json"], ["run", "--nope"], ["run", "--ws-id"], ["run", "--ws-id", "-q"],
    ["run", "ws.json", "--grace", "soon"], ["run", "ws.json", "--grace", "-1"],
    ["run", "ws.json", "--on-failure", "explode"], ["run", "ws.json", "--executor=thread"],
    ["run", "ws.json", "-q", "--quiet"], ["run", "--resume", "ws.json"], ["run", "ws.json", "-q=1"],
    ["run", "ws.json", "--dry-run=yes"], ["run", "-"], ["validate", "ws.json", "-q"],
    ["validate", "--max-workers", "2", "ws.json"],
]


@pytest.mark.parametrize("argv", LEFT_TO_CLICK, ids=lambda a: " ".join(a) or "(none)")
def test_what_it_is_not_sure_of_goes_to_click(argv):
    assert entry.parse(argv) is None


def test_version_is_what_click_prints(capsys):
    assert entry.run_fast(["--version"]) == 0
    assert capsys.readouterr().out == CliRunner().invoke(cli, ["--version"], prog_name="orchestrator").output


def test_a_bad_max_workers_is_refused_by_the_same_check():
    with pytest.raises(Exception, match="max-workers must be at least 1"):
        entry.parse(["run", "ws.json", "--max-workers", "0"])


@pytest.mark.parametrize("argv", [["validate", "--ws-id", "ws-test"],
                                  ["validate", "missing.json"],
                                  ["run", "--ws-id", "ws-test", "-q"],
                                  ["run", "--ws-id", "ws-test", "--dry-run"],
                                  ["run", "--ws-id", "ws-test", "--max-workers", "0"],
                                  ["run", "--ws-id", "ws-test", "-q", "-v"]])
def test_fast_and_click_commands_end_the_same(make_workstream, project, capsys, argv):
    make_workstream([{"id": "a", "tasks": ["echo a"]}, {"id": "b", "tasks": ["exit 3"]}])
    fast = entry.run_fast(argv)
    out = capsys.readouterr()
    slow = CliRunner().invoke(cli, argv)
    assert fast == slow.exit_code
    assert out.out.splitlines()[:1] == slow.stdout.splitlines()[:1]   # run ids and times differ after
    assert ("error: " in out.err) == ("error: " in slow.stderr)


def test_only_the_process_entry_keeps_what_a_command_built(make_workstream, project, monkeypatch,
                                                           capsys):
    """`entry.main` ends the process with os._exit, so what the command built is kept for it rather
    than freed object by object; any other caller (a test, a library user) keeps nothing."""
    make_workstream([{"id": "a", "tasks": ["true"]}])
    assert entry.KEEP_TO_EXIT is None
    assert entry.run_fast(["run", "--ws-id", "ws-test", "--dry-run"]) == 0
    assert entry.KEEP_TO_EXIT is None
    kept: list = []
    monkeypatch.setattr(entry, "KEEP_TO_EXIT", kept)
    assert entry.run_fast(["run", "--ws-id", "ws-test", "--dry-run"]) == 0
    assert [type(o).__name__ for o in kept] == ["Workstream", "dict"]   # the plan
    capsys.readouterr()


# what `run` and `validate` must not import: click and what it brings (~15 ms), dataclasses, and
# pathlib (~8 ms with the urllib.parse, ipaddress and fnmatch it imports); nor json, re, enum and
# signal (~5 ms together), nor threading, functools, collections, operator and heapq (~3 ms: their
# C halves do) for a workstream that needs no regular expression (`orchestrator.lean`)
HEAVY = ("click", "inspect", "typing", "dataclasses", "pathlib", "ctypes", "datetime",
         "json", "re", "enum", "signal", "threading", "functools", "collections", "operator", "heapq",
         "math", "encodings.utf_8_sig")


@pytest.mark.parametrize("argv", [["validate", "--ws-id", "ws-test"],
                                  ["run", "--ws-id", "ws-test", "-q"]], ids=["validate", "run"])
def test_the_fast_path_imports_neither_click_nor_pathlib(make_workstream, project, argv):
    """Nor ctypes (prctl goes through _ctypes) nor datetime (a run parses no time)."""
    make_workstream([{"id": "a", "tasks": ["true"]}])
    code = (f"import sys; sys.argv = ['orchestrator', *{argv!r}]\n"
            "import orchestrator.entry as e\n"
            "try:\n    code = e.run_fast(sys.argv[1:])\nfinally:\n"
            f"    print(repr(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)\n"
            "sys.exit(code)\n")
    # -S: without site, whose editable-install finder imports pathlib itself (the Makefile installs
    # the package as a plain path entry, which imports nothing)
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=project,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "OK:" in proc.stdout or "SUCCEEDED" in proc.stderr
    assert ast.literal_eval(proc.stderr.strip().splitlines()[-1]) == []
