import subprocess
import sys

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
