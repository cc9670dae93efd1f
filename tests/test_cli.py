"""The `advbias` root command: help works, bad input is one line and a non-zero exit."""
import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "advbias", *args], capture_output=True, text=True)


def test_help_lists_commands():
    result = run("--help")
    assert result.returncode == 0
    assert "usage: advbias" in result.stdout


def test_unknown_command_fails():
    result = run("no-such-command")
    assert result.returncode != 0
    assert "invalid choice" in result.stderr
