"""Markdown tables: header, rule, one line per row, cells as text."""
from rtune_ds.report import markdown_table


def test_markdown_table():
    assert markdown_table(["a", "b"], [[1, None], ["x", ""]]) == [
        "| a | b |", "|---|---|", "| 1 | None |", "| x |  |"]
    assert markdown_table(["only"], []) == ["| only |", "|---|"]
