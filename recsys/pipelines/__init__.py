"""Polars data pipelines: readers per format, cleaning, k-core, id maps, splits, item text."""
