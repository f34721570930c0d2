"""Helpers for tests that drive the command line and check its user errors."""

from __future__ import annotations

from click.testing import CliRunner

from geo_pix2pix.cli.main import main


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def message_lines(text: str) -> list[str]:
    """What the user reads, without log lines (the CLI logs at INFO without -q)."""
    return [s for s in text.strip().splitlines() if s and not s.startswith(("INFO:", "DEBUG:"))]


def assert_user_error(result, fragment: str) -> str:
    """Exit code 1, one line ``Error: …`` holding ``fragment``, no traceback."""
    lines = message_lines(result.output)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert fragment in lines[0], lines[0]
    return lines[0]
