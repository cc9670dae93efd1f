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


def test_module_and_script_report_the_same_one_line_error(tmp_path):
    """`python -m advbias` and the `advbias` script share one root and one CLIError."""
    import shutil
    from pathlib import Path

    script = Path(sys.executable).with_name("advbias")
    assert script.exists() or shutil.which("advbias")
    args = ["simulate", "nope", "--participants", "1", "--bias", "0.6", "--set", str(tmp_path),
            "--url", "http://127.0.0.1:9"]
    by_module = run(*args)
    by_script = subprocess.run([str(script if script.exists() else shutil.which("advbias")), *args],
                               capture_output=True, text=True)
    for result in (by_module, by_script):
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert by_module.stderr == by_script.stderr


def test_a_closed_pipe_is_not_a_traceback(tmp_path):
    """`advbias ... | head -0`: the reader left before the output; no traceback, no error message."""
    proc = subprocess.Popen([sys.executable, "-m", "advbias", "db", "upgrade", "--database-url",
                             f"sqlite:///{tmp_path / 'x.db'}", "--instance", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # nobody reads what it prints
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert proc.returncode in (0, 141)
