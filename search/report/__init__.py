"""The report of a search: its results table, the run stored for it, and the page built from them."""
