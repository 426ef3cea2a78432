import subprocess
import sys
from pathlib import Path

from relay import __version__


def test_version_from_python_m() -> None:
    """``python -m relay --version`` prints the package version."""
    out = subprocess.run(
        [sys.executable, "-m", "relay", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"hoopai-relay {__version__}"


def test_help_lists_serve() -> None:
    """``--help`` exits 0 and names the serve command."""
    out = subprocess.run(
        [sys.executable, "-m", "relay", "--help"], capture_output=True, text=True, check=True
    )
    assert "serve" in out.stdout


def test_bad_setting_exits_2_naming_it() -> None:
    """``relay serve`` with a bad setting exits 2 and names the variable and value."""
    out = subprocess.run(
        [sys.executable, "-m", "relay", "serve"],
        capture_output=True,
        text=True,
        env={"RELAY_HTTP_PORT": "abc", "PATH": ""},
        check=False,
    )
    assert out.returncode == 2
    assert "RELAY_HTTP_PORT='abc'" in out.stderr


def test_unreadable_key_file_exits_2(tmp_path: Path) -> None:
    """A key file that does not exist is a configuration error, exit 2."""
    missing = tmp_path / "nope.pem"
    out = subprocess.run(
        [sys.executable, "-m", "relay", "serve"],
        capture_output=True,
        text=True,
        env={"RELAY_PUBLIC_KEYS": str(missing), "PATH": ""},
        check=False,
    )
    assert out.returncode == 2
    assert "RELAY_PUBLIC_KEYS" in out.stderr
    assert str(missing) in out.stderr
