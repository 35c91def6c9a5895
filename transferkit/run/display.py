"""Moved to transferkit/tables.py (a utility, so inference and data print tables the same way); kept for
branches that import it from here."""

from transferkit.tables import plain_lines, print_table, table_width  # noqa: F401
