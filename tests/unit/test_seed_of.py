"""recommender.seed_of: a fetched item's published co-occurrence row as a Seed, whichever way
the row was published (JSON text in columns now; pairs as JSON text or nested lists before),
parsed once per version."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from recstream.ranking.collab import cf_top_text
from recstream.ranking.features import RowPairs
from recstream.ranking.recommender import seed_of
from recstream.ranking.store import StoredItem

ROW = [["b", 2.5], ["c", 1.25], ["d", 0.5]]


def item(cf_top: object, **payload: object) -> StoredItem:
    p = {"item_id": "a", "title": "A", "cf_count": 4.0, "cf_top": cf_top, **payload}
    return StoredItem.from_parts(p, {"text": np.ones(3, dtype=np.float32)})


def test_text_and_list_rows_give_the_same_seed() -> None:
    columns = cf_top_text([(i, w) for i, w in ROW])
    assert orjson.loads(columns) == {"i": ["b", "c", "d"], "w": [2.5, 1.25, 0.5]}
    as_columns = seed_of(item(columns))
    as_text = seed_of(item(orjson.dumps(ROW).decode()))
    as_list = seed_of(item(ROW, cf_pos="p", cf_w="w"))
    for s in (as_columns, as_text, as_list):
        assert s.cf_top == [("b", 2.5), ("c", 1.25), ("d", 0.5)]
        assert s.cf_top[1:] == [("c", 1.25), ("d", 0.5)] and len(s.cf_top) == 3
        assert isinstance(s.cf_top, RowPairs)  # its columns are the arrays ranking reads
        ids, w = s.cf_arrays
        assert ids == ["b", "c", "d"] and w.tolist() == [2.5, 1.25, 0.5]
        assert s.cf_count == 4.0 and s.title == "A"


def test_a_new_version_of_the_row_is_read_not_the_memo() -> None:
    first = seed_of(item(cf_top_text([(i, w) for i, w in ROW])))
    newer = seed_of(item(cf_top_text([("e", 9.0)])))
    assert first.cf_top[0] == ("b", 2.5) and newer.cf_top == [("e", 9.0)]
    # lists without the packed strings are never memoised under a shared key
    assert seed_of(item([["f", 1.0]])).cf_top == [("f", 1.0)]
    assert seed_of(item(None)).cf_top == []


def test_a_row_whose_columns_disagree_is_refused() -> None:
    bad = orjson.dumps({"i": ["b", "c"], "w": [1.0]}).decode()
    with pytest.raises(ValueError, match="2 ids and 1 weights"):
        seed_of(item(bad))
