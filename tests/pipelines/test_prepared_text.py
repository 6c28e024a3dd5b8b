"""items_without_text: one count of items lacking text, for the training job and the benchmark."""

import polars as pl

from recsys.pipelines.prepared import items_without_text


def test_counts_empty_blank_and_missing_text_on_loaded_and_lazy_tables():
    items = pl.DataFrame({"item_idx": [0, 1, 2, 3], "text": ["a drill", "", "   ", None]})
    assert items_without_text(items) == 3
    assert items_without_text(items.lazy()) == 3
    assert items_without_text(items.drop("text")) == 4  # no text column: no item has text
    assert items_without_text(items.drop("text").lazy()) == 4
    assert items_without_text(items.head(1)) == 0
