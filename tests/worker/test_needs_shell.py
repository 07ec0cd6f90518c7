"""needs_shell: which command lines may skip /bin/sh."""

from __future__ import annotations

import pytest

from worker.shell import needs_shell

DIRECT = [
    "sleep 10",
    "/bin/sleep 0",
    "ls -la /tmp",
    "python3 -m worker.process --fd 3",
    "  sleep   1  ",
    "sleep\t1",
    "grep -r foo=bar .",  # '=' outside a leading assignment is an ordinary character
    "env A=1 printenv A",  # the assignment is env's argument, not sh's
    "x-y=1 run",  # not a valid variable name, so a command word to sh as well
    "cmd foo~bar",  # '~' only expands at the start of a word
    "cmd a!b",  # '!' is only special as a word of its own
    "cmd a,b c.d e:f g@h i%j k^l m+n",
    "cmd ]",
    "truesay",  # starts like the builtin 'true' but is not it
    "exporter run",
]

SHELL = [
    "",
    "   ",
    "echo hi",  # builtins run in sh, where their behaviour is sh's
    "true",
    "printf x",
    "kill -9 1",
    "test -e /tmp",
    "pwd",
    "cd /tmp",
    "export A=1",
    "exit 3",
    "source env.sh",
    ". env.sh",
    ": noop",
    "if true",
    "for x",
    "while true",
    "! ls",
    "time ls",
    "exec sleep 1",
    "A=1 cmd",
    "_x9=1",
    "ls | wc",
    "ls > out",
    "ls >> out",
    "ls < in",
    "a && b",
    "a || b",
    "a; b",
    "sleep 1 &",
    "echo $HOME",
    "cmd $HOME",
    "cmd ${X}",
    "cmd `date`",
    "cmd $(date)",
    "ls *.py",
    "ls file?",
    "ls [ab]",
    "ls ~",
    "ls ~/x",
    "ls\t~user",
    "cmd 'quoted arg'",
    'cmd "quoted arg"',
    "cmd a\\ b",
    "(ls)",
    "{ ls; }",
    "cmd {a,b}",
    "ls # comment",
    "ls\nls",
    "ls\rx",
    "ls\x0bx",
    "ls\u00a0x",  # a blank that str.split() splits on and sh does not
]


@pytest.mark.parametrize("cmd", DIRECT)
def test_plain_command_lines_are_exec_directly(cmd: str) -> None:
    assert needs_shell(cmd) is False


@pytest.mark.parametrize("cmd", SHELL)
def test_shell_syntax_goes_through_sh(cmd: str) -> None:
    assert needs_shell(cmd) is True
