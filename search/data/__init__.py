"""Data-set tools: folder layout, generated data sets, leakage between splits, the data report."""
