"""The online learner (ranking/learner.py): the BPR gradient, the user's deltas, the shared
weights and their wire form; and the shared weights learning from a stream (ranking/step.py)."""

from __future__ import annotations

import numpy as np
import pytest

from recstream.ranking.catalog import Catalog
from recstream.ranking.item_side import ItemRow, trend_after
from recstream.ranking.learner import SharedWeights, bpr_gradient, user_step
from recstream.ranking.scoring import FEATURES
from recstream.ranking.step import Event, OnlineModel
from recstream.ranking.user_state import UserState, item_hash
from tests.unit.test_step import NOW, params, unit

EQUAL = (1.0,) * len(FEATURES)
HALF_LIFE = 24 * 3_600_000


def test_the_gradient_is_big_where_the_list_had_the_pair_the_wrong_way_round() -> None:
    w = np.asarray([1.0, 0.0])
    taken = np.asarray([0.0, 1.0])
    wrong = bpr_gradient(w, taken, np.asarray([[1.0, 0.0]]))  # the other scored higher
    right = bpr_gradient(w, taken, np.asarray([[-1.0, 0.0]]))
    # sigmoid(-x) * (taken - passed over), x = (taken - passed over) . w
    np.testing.assert_allclose(wrong, [-1 / (1 + np.exp(-1)), 1 / (1 + np.exp(-1))])
    np.testing.assert_allclose(right, [1 / (1 + np.exp(1)), 1 / (1 + np.exp(1))])
    both = bpr_gradient(w, taken, np.asarray([[1.0, 0.0], [-1.0, 0.0]]))
    np.testing.assert_allclose(both, (wrong + right) / 2)  # the mean over the pairs


def test_a_users_deltas_step_along_the_gradient_with_l2_rounded() -> None:
    d = user_step(np.asarray([0.5, -0.25], np.float32), np.asarray([1.0, 2.0]), 0.1, 0.2)
    assert d.dtype == np.float32
    assert d.tolist() == pytest.approx([0.5 + 0.1 * (1 - 0.1), -0.25 + 0.1 * (2 + 0.05)])
    assert user_step(np.zeros(2), np.asarray([1e-7, 0.0]), 0.01, 0.0).tolist() == [0.0, 0.0]


def test_shared_weights_step_along_a_rounds_summed_gradients_in_any_order() -> None:
    g = [np.asarray([1.0, 0.0, -1.0]), np.asarray([0.5, 0.5, 0.5])]
    a, b = SharedWeights.start((1.0, 2.0, 3.0)), SharedWeights.start((1.0, 2.0, 3.0))
    a.learn(g, lr=0.1, l2=0.01)
    b.learn(g[::-1], lr=0.1, l2=0.01)
    assert a.w.tolist() == b.w.tolist() and a.n == b.n == 2
    want = np.asarray([1.0, 2.0, 3.0]) + 0.1 * (g[0] + g[1] - 2 * 0.01 * np.asarray([1, 2, 3]))
    np.testing.assert_allclose(a.w, want)
    a.learn([], lr=0.1, l2=0.01)  # no gradient: no step, not even the L2 pull
    np.testing.assert_allclose(a.w, want)


def test_shared_weights_round_trip_and_start_over_at_another_length() -> None:
    sw = SharedWeights(np.asarray([0.25, -1.5, 3.0]), n=7, upto=41)
    back = SharedWeights.from_bytes(sw.to_bytes(), (1.0, 1.0, 1.0))
    assert (back.w.tolist(), back.n, back.upto) == ([0.25, -1.5, 3.0], 7, 41)
    longer = SharedWeights.from_bytes(sw.to_bytes(), (0.5,) * 4)  # a feature added since
    assert (longer.w.tolist(), longer.n, longer.upto) == ([0.5] * 4, 0, 41)
    with pytest.raises(ValueError, match="version"):
        SharedWeights.from_bytes(b"\x09" + sw.to_bytes()[1:], (1.0, 1.0, 1.0))


def test_the_shared_weights_learn_what_the_population_takes() -> None:
    """Everyone takes the items everyone takes (popular ones), whatever their content: from
    equal weights, the shared weights come to weigh popularity over content."""
    p = params(EQUAL, learning_rate=0.0)  # no per-user deltas: the shared weights alone
    cat = Catalog({"text": 4}, p.cooc, capacity=256)
    model = OnlineModel(cat, p)
    rng = np.random.default_rng(5)
    ids = [f"i{n}" for n in range(60)]
    for i in ids:
        cat.upsert(i, {"text": unit(*rng.normal(size=4))})
    taste = np.asarray([1.0 / (n + 1) ** 1.2 for n in range(60)])  # a few popular items
    taste /= taste.sum()
    shared = SharedWeights.start(EQUAL)
    states: dict[str, UserState] = {}
    counts = np.zeros(60)
    for t in range(1500):
        user = f"u{rng.integers(40)}"
        n = int(rng.choice(60, p=taste))
        ev = Event(user, ids[n], "like", NOW + t * 1000)
        res = model.step([ev], [states.get(user, UserState())], NOW + t * 1000, [shared.w])
        states[user] = res.outcomes[0].state
        shared.learn(res.gradients.values(), p.shared_learning_rate, p.shared_l2)
        counts[n] += 1
        # the item side as it would publish the item's row: its popularity, no neighbours
        h = item_hash(ids[n])
        trend = trend_after(float(cat.trend[cat.row_of[h]]), 1.0, ev.ts, HALF_LIFE)
        cat.set_side(h, ItemRow(trend, float(counts[n])))
    w = dict(zip(FEATURES, shared.w.tolist(), strict=True))
    assert shared.n > 1000, w
    assert w["popular"] > 1.0 and w["popularity"] > 1.0  # grew from 1
    assert w["popular"] > w["content"] and w["popularity"] > w["content"]
