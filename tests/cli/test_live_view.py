"""Real runs of `python -m orchestrator run` as a person and as CI see them: under a pseudo-terminal
(the rich live view) and through a pipe (plain lines, no ANSI codes, `Progress:` lines). The pty is
read until EOF with a deadline; nothing sleeps and nothing is timed."""
from __future__ import annotations

import errno
import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
WS_ID = "ws-live"
STEPS = ["step-01-alpha", "step-02-beta", "step-03-gamma"]
SGR = re.compile(r"\x1b\[([0-9;]*)m")


@pytest.fixture
def live_project(tmp_path):
    root = tmp_path / "proj"
    (root / "workstreams").mkdir(parents=True)
    doc = {"id": WS_ID, "execution": {"max_workers": 3},
           "steps": [{"id": sid, "tasks": [f"echo hello from {sid}", "sleep 0.5"]} for sid in STEPS]}
    (root / "workstreams" / f"{WS_ID}.json").write_text(json.dumps(doc))
    return root


def run_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("ORCHESTRATOR_WORKTREES_DIR", "NO_COLOR", "FORCE_COLOR", "TERM", "COLUMNS", "LINES"):
        env.pop(key, None)
    env.update(PYTHONPATH=str(REPO), **extra)
    return env


def run_in_pty(cwd: Path, *args: str, env: dict[str, str], deadline_s: float = 45.0) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pty slave; read the master until EOF."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", "--ws-id", WS_ID, *args],
                                cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                                close_fds=True)
    finally:
        os.close(slave)            # only the child holds the slave now: its exit gives us EOF (EIO)
    chunks: list[bytes] = []
    deadline = time.monotonic() + deadline_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                pytest.fail("the run did not end before the deadline:\n"
                            + b"".join(chunks).decode(errors="replace"))
            ready, _, _ = select.select([master], [], [], left)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError as e:
                if e.errno == errno.EIO:       # Linux: the slave side is closed — EOF
                    break
                raise
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, b"".join(chunks).decode("utf-8", errors="replace")


def test_live_view_under_a_pseudo_terminal(live_project):
    code, out = run_in_pty(live_project, env=run_env(TERM="xterm", COLUMNS="100"))
    assert code == 0, out
    assert "\x1b[" in out                                  # the live view drew (cursor control)
    for sid in STEPS:
        assert sid in out
    assert "3/3 steps (100%)" in out
    lines = [line.strip() for line in re.sub(r"\x1b\[[0-?]*[ -/]*[@-~]", "", out).splitlines()]
    assert any(line.startswith("SUCCEEDED: 3 succeeded") for line in lines[-2:]), out
    assert "Traceback" not in out


def test_live_view_with_no_color_has_no_colour_codes(live_project):
    code, out = run_in_pty(live_project, "-v", env=run_env(TERM="xterm", COLUMNS="100", NO_COLOR="1"))
    assert code == 0, out
    codes = {int(p) for m in SGR.finditer(out) for p in m.group(1).split(";") if p}
    assert not {c for c in codes if 30 <= c <= 49 or 90 <= c <= 107}, sorted(codes)
    for sid in STEPS:
        assert f"[{sid}] hello from {sid}" in out        # -v output goes above the live area
    assert "SUCCEEDED: 3 succeeded" in out


def test_piped_run_prints_plain_lines_and_progress(live_project):
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "run", "--ws-id", WS_ID, "-v"],
                          cwd=live_project, env=run_env(TERM="xterm"), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=50)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "\x1b" not in err and "\x1b" not in proc.stdout.decode()
    lines = err.splitlines()
    assert any(line.startswith("Progress: ") for line in lines)
    assert lines[-2] == "Progress: 3/3 steps complete"
    assert lines[-1].startswith("SUCCEEDED: 3 succeeded")
    for sid in STEPS:
        assert any(re.fullmatch(rf"\[\d\d:\d\d:\d\d\] ✓ {sid} \(\d+\.\ds\)", line) for line in lines), err
        mine = [line for line in lines if line.startswith(f"[{sid}] ")]
        assert mine == [f"[{sid}] --- task 1/2: echo hello from {sid}", f"[{sid}] hello from {sid}",
                        f"[{sid}] --- task 2/2: sleep 0.5"]
        finished = next(i for i, line in enumerate(lines) if f"✓ {sid} " in line)
        assert lines.index(mine[-1]) < finished


def test_quiet_run_prints_only_the_summary_line(live_project):
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "run", "--ws-id", WS_ID, "-q"],
                          cwd=live_project, env=run_env(), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=50)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("SUCCEEDED: 3 succeeded"), lines
