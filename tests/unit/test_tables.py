"""The table namespace: which names a table owns, and when two tables' names clash."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.core import tables


@pytest.mark.parametrize(
    ("table", "other", "phrase"),
    [
        ("t", "t", "the same table"),
        ("t_history", "t", "the history table of table 't'"),
        ("t_current_keys", "t", "the current-keys table of table 't'"),
        ("t_sources", "t", "the sources table of table 't'"),
        ("t_until_20260101000000", "t", "a moved-aside table of table 't'"),
        ("t_history_until_x", "t", "a moved-aside table of table 't'"),
        ("t", "t_history", "the history table of table 't'"),  # either side
        ("t_until", "t", "a moved-aside table of table 't'"),  # t_until_history
    ],
)
def test_names_derived_from_another_table_clash(table: str, other: str, phrase: str) -> None:
    assert phrase in (tables.clash(table, other) or "")
    assert tables.clash(other, table) is not None  # symmetric


@pytest.mark.parametrize(("table", "other"), [("t", "u"), ("t", "tt_history"), ("ab", "a_b")])
def test_tables_apart_do_not_clash(table: str, other: str) -> None:
    assert tables.clash(table, other) is None


@pytest.mark.parametrize("table", ["gbatch_jobs", "gbatch_owner", "gbatch", "gbatch_x"])
def test_bookkeeping_names_are_reserved(table: str) -> None:
    assert "bookkeeping" in (tables.reserved(table) or "")


def test_ordinary_names_are_not_reserved() -> None:
    assert tables.reserved("gbatchy") is None and tables.reserved("product_copy") is None


def test_every_derived_name_is_owned_by_its_table() -> None:
    for name in tables.derived("t"):
        assert tables.clash(name, "t") is not None
    assert tables.retired("t_history", "1") == "t_history_until_1"


# names built from the fragments that make tables meet, so clashes are common
_fragment = st.sampled_from(["t", "u", "_history", "_sources", "_current_keys", "_until_", "x"])
_name = st.lists(_fragment, min_size=1, max_size=5).map("".join)


@given(_name, _name)
@settings(max_examples=3000, deadline=None)
def test_tables_that_clash_always_share_a_key(table: str, other: str) -> None:
    """``keys`` is what an index over many tables looks names up by: it may find tables that
    do not clash, never miss one that does."""
    if tables.clash(table, other) is not None:
        assert tables.keys(table) & tables.keys(other)


def test_a_table_shares_no_key_with_tables_apart() -> None:
    assert not tables.keys("cities") & tables.keys("towns")
    assert not tables.keys("t") & tables.keys("tt_history")
