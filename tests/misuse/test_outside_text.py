"""Text from outside piml (a node's answers, a pod's log, a check's detail) reaches the terminal as text: rich
markup in it is not interpreted and terminal escapes are removed (issue 16)."""

from __future__ import annotations

import pytest

from piml.output import terminal_safe

HOSTILE = (
    "os [bold]Debian[/bold] \x1b[2J\x1b]0;owned\x07\x1b]8;;http://evil.example/\x1b\\link\x1b]8;;\x1b\\ \x9b31mred\r"
)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """One line per row, whatever the terminal (or a test worker's) width, so the words are not folded apart."""
    from piml import output

    monkeypatch.setenv("COLUMNS", "300")
    output.console.cache_clear()
    yield
    output.console.cache_clear()


def assert_shown_as_text(text: str) -> None:
    assert not any(c in text for c in "\x1b\x07\x9b\r"), repr(text)
    assert "[bold]Debian[/bold]" in text and "link" in text, text


def test_preflight_details_are_text(capsys):
    from piml.commands.up import render_checks
    from piml.preflight import Check

    render_checks([Check("pi1", "os", "warn", HOSTILE, HOSTILE)])
    assert_shown_as_text(capsys.readouterr().out)


def test_check_details_are_text(capsys):
    from piml.health.report import show
    from piml.health.result import Result

    show([Result("deep", "ray", "train", "fail", HOSTILE, HOSTILE)], 1.0)
    assert_shown_as_text(capsys.readouterr().out)


def test_terminal_safe_keeps_lines_and_tabs():
    assert terminal_safe("a\tb\nc") == "a\tb\nc"
    assert terminal_safe("\x00\x08\x7f") == "???"
