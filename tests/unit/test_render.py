"""Rendering: fixed-notation numbers, terminal-fitted tables, progress lines that never wrap."""

from __future__ import annotations

import io
import re
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.cli import console, render
from runner.cli.progress import Row, line, plain_line

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("value", "text"),
    [(3.01e-05, "$0.0000301"), (0.0, "$0.0000"), (1.23456, "$1.2346"), (0.004, "$0.00400")],
)
def test_money_is_in_fixed_notation(value: float, text: str) -> None:
    assert render.money(value) == text


@given(st.floats(min_value=-1e12, max_value=1e12, allow_nan=False))
def test_a_float_cell_never_uses_an_exponent_and_keeps_six_digits(value: float) -> None:
    text = render.fixed(value)
    assert "e" not in text.lower()
    assert float(text) == pytest.approx(value, rel=1e-5, abs=1e-300)


def test_a_float_cell_drops_binary_noise() -> None:
    assert render.fixed(0.00009829999999999999) == "0.0000983"
    assert render.fixed(1234.5) == "1234.5" and render.fixed(0.0) == "0"


def test_durations_are_h_mm_ss_and_ages_are_short() -> None:
    assert render.duration(3 * 3600 + 7 * 60 + 5) == "3:07:05"
    assert render.duration(30 * 3600) == "30:00:00"
    assert [render.age(s) for s in (5, 90, 7200, 3 * 86400)] == ["5s", "1m", "2h", "3d"]


def status_table(error: str) -> render.Table:
    head = ["manifest", "status", "cost", "last error"]
    rows = [["product-copy", "blocked", "$0.0000301", error], ["seed", "ok", "$0.0100", ""]]
    return render.Table(head, rows, wide=("last error",), styles=((1, "status"),))


def test_a_table_on_a_terminal_fits_its_width_and_is_coloured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setenv("COLUMNS", "50")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    console.table(status_table("estimated cost exceeds policy.max_cost_usd " * 4))
    drawn = terminal.getvalue()
    assert "\x1b[" in drawn  # coloured statuses
    lines = ANSI.sub("", drawn).splitlines()
    assert lines and all(len(text) <= 50 for text in lines), lines
    assert "policy.max_cost_usd" in re.sub(r"\s", "", ANSI.sub("", drawn))  # folded, not lost


def test_a_table_in_a_pipe_is_plain_one_line_per_row(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stdout", pipe)
    monkeypatch.setenv("COLUMNS", "50")
    console.table(status_table("a long error " * 10))
    text = pipe.getvalue()
    assert "\x1b[" not in text
    assert len(text.splitlines()) == 4  # head, rule, two rows: never wrapped
    assert text.splitlines()[2].startswith("product-copy  blocked")


def row(name: str = "product-copy-descriptions") -> Row:
    return Row(
        name=name,
        total=50_000,
        succeeded=12_000,
        failed=345,
        started_done=0,
        states="2 running",
        cost=0.0000301,
        elapsed=3725.0,
    )


@pytest.mark.parametrize("width", [20, 32, 40, 60, 80, 120, 200])
def test_a_progress_line_never_wraps(width: int) -> None:
    text = line(row(), width=width, name_width=30)
    assert text.cell_len <= width
    assert "\n" not in text.plain


def test_a_wide_progress_line_has_every_column() -> None:
    text = line(row(), width=200, name_width=30).plain
    assert text.startswith("product-copy-descriptions")
    for part in ("12345/50000", "345 failed", "3.3/s", "ETA 3:09:22", "1:02:05", "$0.0000301"):
        assert part in text, text
    narrow = line(row(), width=40, name_width=30).plain
    assert "12345/50000" in narrow and "345 failed" in narrow  # the counts go last


def test_the_plain_progress_line_says_done_and_failed_apart() -> None:
    text = plain_line(row("seed"))
    assert text.startswith("[1:02:05] seed: 12345/50000 done, 345 failed")
    assert "ETA 3:09:22" in text and "cost so far $0.0000301" in text
