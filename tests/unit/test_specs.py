"""`specs.shell_argv`: which shell tasks may skip `/bin/sh -c` (make's fast path)."""
from __future__ import annotations

import shutil

import pytest

from orchestrator.specs import shell_argv


@pytest.mark.parametrize("text", ["true", "sleep 0.1", "make -j2 X=1", "ls -la /tmp", "env", "true --x=a,b:c@d%e+f",
                                  "true  x"])
def test_plain_words_of_a_program_on_path_are_exec_d_directly(text):
    words = text.split()
    assert shell_argv(text) == (shutil.which(words[0]), *words[1:])


@pytest.mark.parametrize("text", [
    "echo hi",                 # a builtin whose behaviour differs from /bin/echo
    "cd /tmp", "exit 3", "export A=1", ": nothing", "test -f x", "[ -f x ]",
    "A=1 env",                 # an assignment
    "./script.sh", "bin/tool",   # a path: relative to the step's cwd
    "true; false", "true && false", "true | cat", "sleep 1 &", "echo $HOME", "echo `id`",
    "ls *.py", "ls ~", "cat < f", "echo > f", "ls 'a b'", 'ls "a"', "ls a\\ b", "(true)", "{ true; }",
    "true\nfalse", "true\tx", "  true", "true ", "ls #comment", "ls !x",
    "no-such-program-xyz",     # not on PATH: the shell's own "not found" and exit 127
])
def test_anything_else_keeps_the_shell(text):
    assert shell_argv(text) == ("/bin/sh", "-c", text)


def test_the_steps_own_path_is_searched(tmp_path):
    tool = tmp_path / "mytool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert shell_argv("mytool a", str(tmp_path)) == (str(tool), "a")
    assert shell_argv("mytool a") == ("/bin/sh", "-c", "mytool a")
