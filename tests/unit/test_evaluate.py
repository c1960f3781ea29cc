"""The evaluation harness (ranking/evaluate): metric definitions with known answers, and
small replays through both protocols: a perfect oracle scores 1.0, a random ranker ~k/catalog,
and recstream's online model (OnlineRecstream: the stream's own step, ranking/step.py) beats
popularity on data with a planted co-occurrence structure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from recstream.ranking import scoring, seen
from recstream.ranking.evaluate.baselines import ItemKNNModel, PopularityModel, RandomModel
from recstream.ranking.evaluate.cli import main
from recstream.ranking.evaluate.data import Interactions, build, load_interactions
from recstream.ranking.evaluate.metrics import Accumulator, list_ranks, query_metrics, target_ranks
from recstream.ranking.evaluate.online import (
    OnlineRecstream,
    content_neighbours,
    ranking_settings,
    replay_states,
)
from recstream.ranking.evaluate.protocols import (
    beside,
    prequential,
    split,
    split_indices,
    split_replay,
)
from recstream.ranking.scoring import FEATURES, Pairs


def test_ties_count_against_the_model() -> None:
    cand = np.ones(5, dtype=bool)
    assert target_ranks(np.array([1.0, 1.0, 1.0, 0.0, 0.0]), cand, [0]) == [2]
    assert target_ranks(np.array([0.0, 0.0, 0.0, 0.0, 0.0]), cand, [4]) == [4]
    assert target_ranks(np.array([0.0, 1.0, 2.0, 3.0, 4.0]), cand, [4]) == [0]
    assert target_ranks(np.array([-np.inf, 1, 2, 3, 4.0]), cand, [0]) == [5]  # excluded: miss
    cand[4] = False  # not a candidate (already seen): does not count
    assert target_ranks(np.array([0.0, 1.0, 2.0, 3.0, 4.0]), cand, [3]) == [0]
    many = target_ranks(np.array([5.0, 5.0, 5.0, 1.0, 0.0]), np.ones(5, bool), [0, 3])
    assert sorted(many) == [2, 3]  # non-targets first at equal score


def test_query_metrics_known_answers() -> None:
    m = query_metrics([0], 10)
    assert m == {"HR": 1.0, "NDCG": 1.0, "Recall": 1.0, "Precision": 0.1, "MRR": 1.0}
    m = query_metrics([2], 10)
    assert m["NDCG"] == pytest.approx(0.5) and m["MRR"] == pytest.approx(1 / 3)
    assert query_metrics([10], 10) == dict.fromkeys(
        ["HR", "NDCG", "Recall", "Precision", "MRR"], 0.0
    )
    two = query_metrics([1, 30], 10)  # one of two relevant items found, at rank 2
    assert two["Recall"] == 0.5 and two["HR"] == 1.0
    assert two["NDCG"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))


def synthetic(n_users: int = 60, n_items: int = 40, per_user: int = 12, seed: int = 0):
    """Two taste groups with a fixed item order inside each: a strong sequential and
    collaborative structure, plus some noise."""
    rng = np.random.default_rng(seed)
    rows = []
    half = n_items // 2
    for u in range(n_users):
        group = list(range(half)) if u % 2 == 0 else list(range(half, n_items))
        start = int(rng.integers(0, half))
        seq = [group[(start + j) % half] for j in range(per_user)]
        t0 = int(rng.integers(0, 10_000))
        for j, i in enumerate(seq):
            rows.append(
                (f"u{u}", f"i{i}", float(1_700_000_000 + t0 + 60 * j), "like", float("nan"))
            )
    return build(rows)


def texts(data: Interactions, seed: int = 0) -> np.ndarray:
    """Random unit "text" vectors per item (the replays' catalogs need a modality)."""
    v = np.random.default_rng(seed).normal(size=(data.n_items, 8))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


class Oracle:
    """Knows the future: scores the item the harness will ask about next."""

    name = "oracle"

    def __init__(self, data: Interactions, targets: dict[int, set[int]] | None = None) -> None:
        self.data, self.cursor, self.targets = data, 0, targets

    def scores(self, user: int, now_ms: int) -> np.ndarray:
        s = np.zeros(self.data.n_items)
        if self.targets is not None:
            s[list(self.targets.get(user, ()))] = 1.0
        else:
            s[self.data.item[self.cursor]] = 1.0
        return s

    def learn(self, j: int) -> None:
        self.cursor = j + 1


@pytest.mark.parametrize("with_text", [False, True])
def test_prequential_oracle_random_and_models(with_text: bool) -> None:
    data = synthetic()
    settings = ranking_settings(["learning_rate=0.05"])
    models = [
        Oracle(data),
        RandomModel(data, seed=1),
        PopularityModel(data),
        ItemKNNModel(data),
        OnlineRecstream(data, settings, texts(data) if with_text else None),
    ]
    r = prequential(data, models, k=10, progress=False)
    assert r["oracle"]["HR@10"] == 1.0 and r["oracle"]["NDCG@10"] == 1.0
    assert r["oracle"]["n"] == len(data) and r["oracle"]["first_n"] == data.n_users
    # random: HR ~ k / candidates (40 items, a user has seen 0..11 of them)
    expected = np.mean([10 / (40 - j) for j in range(12)])
    assert abs(r["random"]["HR@10"] - expected) < 0.08
    assert r["recstream"]["HR@10"] > r["popularity"]["HR@10"] + 0.1
    assert r["recstream"]["HR@10"] > 0.6
    assert 0 < r["recstream"]["Coverage@10"] <= 1
    assert r["recstream"]["ms_p99"] > 0


@pytest.mark.parametrize("protocol", ["prequential", "split"])
def test_baselines_beside_give_what_one_process_gives(protocol: str) -> None:
    """``beside`` with two jobs: the baselines replay in a second (spawned) process while
    recstream replays in this one; every metric is the one a single process gives."""
    data = synthetic(per_user=20)
    run = prequential if protocol == "prequential" else split

    def models() -> list[Any]:
        text = texts(data)
        ours = OnlineRecstream(data, ranking_settings(["learning_rate=0.05"]), text)
        return [PopularityModel(data), ours, ItemKNNModel(data), RandomModel(data, seed=1)]

    one = beside(run, data, models(), 1, False, k=10)
    two = beside(run, data, models(), 2, False, k=10)
    assert list(two) == ["popularity", "recstream", "item-knn", "random"]
    timing = ("ms_p50", "ms_p99", "ms_mean", "stream")
    for name in one:
        a = {k: v for k, v in one[name].items() if not k.startswith(timing)}
        b = {k: v for k, v in two[name].items() if not k.startswith(timing)}
        assert a == b, name


def test_split_protocol() -> None:
    data = synthetic(per_user=20)
    part = split_indices(data)
    for u in range(data.n_users):
        counts = np.bincount(part[data.user == u], minlength=3)
        assert counts.tolist() == [16, 2, 2]  # RecBole: floor(10%) valid and test
    targets: dict[int, set[int]] = {}
    for j in np.flatnonzero(part == 2):
        targets.setdefault(int(data.user[j]), set()).add(int(data.item[j]))
    ours = OnlineRecstream(data, ranking_settings(), texts(data))
    r = split(data, [Oracle(data, targets), PopularityModel(data), ours], progress=False)
    assert r["oracle"]["NDCG@10"] == 1.0 and r["oracle"]["Recall@10"] == 1.0
    assert r["oracle"]["Precision@10"] == pytest.approx(0.2)
    assert r["popularity"]["NDCG@10"] < 1.0
    assert r["recstream"]["NDCG@10"] > r["popularity"]["NDCG@10"] + 0.3  # the planted order


def test_split_replay_orders_only_the_training_part() -> None:
    """Both orders hold the same train/valid/test interactions as split_indices; ``random``
    learns the training part in another order than time, with ascending timestamps."""
    data = synthetic(per_user=20)
    part0 = split_indices(data, 7)

    def parts(d: Interactions, part: np.ndarray, p: int) -> list[tuple[int, int, str]]:
        rows = np.flatnonzero(part == p).tolist()
        return sorted((int(d.user[j]), int(d.item[j]), d.etype[j]) for j in rows)

    by_time, part_t = split_replay(data, 7, "time")
    shuffled, part_r = split_replay(data, 7, "random")
    n_train = int((part0 == 0).sum())
    for d, part in ((by_time, part_t), (shuffled, part_r)):
        assert len(d) == len(data) and (part[:n_train] == 0).all() and (part[n_train:] > 0).all()
        for p in (0, 1, 2):
            assert parts(d, part, p) == parts(data, part0, p)
        assert np.all(np.diff(d.ts[:n_train]) >= 0)  # time moves forward while learning
    assert by_time.ts[:n_train].tolist() == shuffled.ts[:n_train].tolist()
    assert by_time.ts[:n_train].tolist() == data.ts[part0 == 0].tolist()

    def pairs(d: Interactions) -> list[tuple[int, int]]:
        return [(int(d.user[j]), int(d.item[j])) for j in range(n_train)]

    order_t, order_r = pairs(by_time), pairs(shuffled)
    assert order_t != order_r and sorted(order_t) == sorted(order_r)
    # the test part keeps its own timestamps
    assert sorted(shuffled.ts[part_r == 2].tolist()) == sorted(data.ts[part0 == 2].tolist())
    with pytest.raises(ValueError, match="split order"):
        split_replay(data, 7, "backwards")


def test_cli_on_a_csv_file_writes_the_report(tmp_path: Path) -> None:
    data = synthetic(n_users=20)
    csv = tmp_path / "events.csv"
    lines = ["user,item,timestamp,type"]
    for j in range(len(data)):
        u, i = data.user_ids[data.user[j]], data.item_ids[data.item[j]]
        lines.append(f"{u},{i},{data.ts[j]},like")
    csv.write_text("\n".join(lines) + "\n")
    back = load_interactions(csv)
    assert len(back) == len(data) and back.ts.tolist() == data.ts.tolist()  # ms kept as ms
    out = tmp_path / "report.json"
    rc = main(["--data", str(csv), "--protocol", "prequential", "--report", str(out),
               "--no-text", "--quiet"])  # fmt: skip
    assert rc == 0
    rep = orjson.loads(out.read_bytes())
    assert rep["models"] == ["recstream", "popularity", "item-knn"]
    for name in rep["models"]:
        for key in ("HR@10", "NDCG@10", "Recall@10", "Precision@10", "MRR@10", "Coverage@10",
                    "first_HR@10", "cold_HR@10", "ms_p50", "ms_p99"):  # fmt: skip
            assert key in rep[name], (name, key)


def test_jsonl_and_items_files(tmp_path: Path) -> None:
    ev = tmp_path / "ev.jsonl"
    ev.write_text(
        '{"user_id": "a", "item_id": "x", "ts": 1700000000000, "type": "click"}\n'
        '{"user_id": "a", "item_id": "y", "ts": 1700000001000, "rating": 2}\n'
    )
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,genres\nx,Ex,Drama|Comedy\ny,Why,Horror\nz,Zed,\n")
    d = load_interactions(ev, items)
    assert d.item_ids == ["x", "y", "z"]  # the catalog includes items nobody touched yet
    assert d.etype == ["click", "view"] and d.value[1] == pytest.approx(0.4)
    assert d.item_tags[0] == ("Drama", "Comedy") and d.item_text[0] == "Ex. Drama, Comedy"


def test_stream_step_is_timed_by_part_without_changing_any_metric() -> None:
    """OnlineRecstream times its stream path (state read, step, state write) every
    ``time_every``-th event: p50 and p99 per part and in all, and no metric changes."""
    data = synthetic()
    settings = ranking_settings(["learning_rate=0.05"])
    plain = OnlineRecstream(data, settings, texts(data))
    timed = OnlineRecstream(data, settings, texts(data), time_every=1)
    r = prequential(data, [plain], k=10, progress=False)["recstream"]
    t = prequential(data, [timed], k=10, progress=False)["recstream"]
    for key in ("HR@10", "NDCG@10", "Recall@10", "MRR@10", "Coverage@10", "n"):
        assert t[key] == r[key], key
    assert not any(key.startswith("stream_") for key in r)
    weights = {f"weight_{f}" for f in FEATURES}  # the shared weights learned, by feature
    assert plain.report().keys() == weights
    assert timed.report() == {k: t[k] for k in t if k.startswith("stream_") or k in weights}
    assert plain.report() == {k: t[k] for k in weights}  # timing changes nothing learned
    for part in ("stream_state_read_ms", "stream_step_ms", "stream_state_write_ms", "stream_ms"):
        assert t[f"{part}_p99"] >= t[f"{part}_p50"] > 0, part
    assert t["stream_ms_p50"] >= t["stream_step_ms_p50"]  # the whole path holds the step
    assert len(timed.timings["total"]) == len(data)
    every3 = OnlineRecstream(data, settings, texts(data), time_every=3)
    for j in range(30):
        every3.learn(j)
    assert len(every3.timings["step"]) == 10


def test_ranked_lists_the_models_best_among_the_protocols_candidates() -> None:
    """``ranked``: the step's own list for the user, without the items the protocol rules out
    that the user's state does not know (the split's valid part), still k long."""
    data = synthetic()
    model = OnlineRecstream(data, ranking_settings(), texts(data))
    for j in range(300):
        model.learn(j)
    u, now = int(data.user[299]), int(data.ts[299])
    st = replay_states(model, [u])[u]
    (full,) = model.model.recommend([st], [data.n_items], now, False, [model.shared.w])
    order = [int(r) for r in full.rows]
    assert len(order) >= 20
    cand = np.ones(data.n_items, dtype=bool)
    cand[data.item[:300][data.user[:300] == u]] = False  # what the user took: known to the state
    cand[order[:5]] = False  # the five best: ruled out by the protocol only
    got = model.ranked(u, now, 10, cand)
    assert got == [r for r in order if cand[r]][:10] and len(got) == 10


def _replayed(sets: list[str]) -> tuple[Interactions, OnlineRecstream]:
    data = synthetic(n_users=30, per_user=10)
    model = OnlineRecstream(data, ranking_settings(["learning_rate=0", *sets]), texts(data))
    for j in range(len(data)):
        model.learn(j)
    return data, model


def test_harness_item_side_follows_the_pair_rule_and_publishes_the_strongest() -> None:
    """The harness's item side holds, per item, the pairs of item_side's rule (r -> j:
    decay ** (d - 1) for the d-th latest item r a user took before j, j -> r: backward * that)
    and its count; its catalog publishes each row's cooc_top_n strongest (ties by hash)."""
    data, model = _replayed(["cooc_top_n=4"])
    p, cat = model.params.cooc, model.cat
    want: dict[int, dict[int, float]] = {}
    taken: dict[int, list[int]] = {}
    for j in range(len(data)):
        u, i = int(data.user[j]), int(data.item[j])
        mine = taken.setdefault(u, [])
        for d, r in enumerate(reversed(mine[-p.window :]), start=1):
            row_r, row_i = want.setdefault(r, {}), want.setdefault(i, {})
            row_r[i] = row_r.get(i, 0.0) + p.decay ** (d - 1)
            row_i[r] = row_i.get(r, 0.0) + p.backward * p.decay ** (d - 1)
        mine.append(i)
    counts = np.bincount(data.item, minlength=data.n_items)
    cut = 0
    for r in range(data.n_items):
        side = model.side.rows.get(int(cat.hashes[r]))
        if side is None:
            assert counts[r] == 0 and r not in want
            continue
        assert side.count == counts[r]
        got = {cat.row_of[int(h)]: float(x) for h, x in zip(side.nb, side.w, strict=True)}
        assert got == pytest.approx(want.get(r, {}), rel=1e-5)
        best = sorted(got, key=lambda n: (-got[n], int(cat.hashes[n])))[: p.top_n]
        nb, nb_w = cat.neighbours(r, p.top_n)
        assert nb.tolist() == best
        np.testing.assert_allclose(nb_w, [got[n] for n in best], rtol=1e-6)
        cut += len(got) > p.top_n
    assert cut > 0  # some rows hold more than they publish


def test_harness_history_reads_only_the_published_entries() -> None:
    """The "history" feature sums only the cooc_history_top_n strongest entries of each
    candidate's row (what the item side publishes) over the items in the user's filter,
    / count ** history_beta, scaled by the user's maximum, which counts for m / (m + 1) of
    itself, m all those entries' weight (history_alpha 0: raw weights)."""
    data, model = _replayed(["cooc_history_top_n=3", "history_alpha=0"])
    cat, p = model.cat, model.params
    assert any(len(row.nb) > 3 for row in model.side.rows.values())
    u = int(data.user[0])
    st = replay_states(model, [u])[u]
    users = scoring.resolve_users(cat, [st], p.score, now_ms=int(data.ts[-1]))
    sc = scoring.score(cat, users, Pairs.whole(1, cat.live_rows()), int(data.ts[-1]), p.score,
                       top_n=p.cooc.top_n, history_top_n=p.cooc.history_top_n)  # fmt: skip
    h = np.zeros(data.n_items)
    for r in range(data.n_items):
        row = model.side.rows.get(int(cat.hashes[r]))
        if row is None:
            continue
        for e in np.lexsort((row.nb, -row.w))[:3]:
            if seen.contains(st.seen_filter, cat.ids[cat.row_of[int(row.nb[e])]]):
                h[r] += float(row.w[e])
    mass = h.sum()  # all the history behind the user's pairs: its confidence, m / (m + 1)
    h /= np.maximum(np.bincount(data.item, minlength=data.n_items), 1.0) ** p.score.history_beta
    assert h.max() > 0 and mass < 1000  # a user whose confidence shows
    got = sc.features[:, FEATURES.index("history")]
    np.testing.assert_allclose(got, h / h.max() * mass / (mass + 1), rtol=1e-4, atol=1e-6)


def test_list_ranks_count_only_what_the_list_shows() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    cand = np.ones(5, dtype=bool)
    # the model lists items 0, 3 (diversified past 1 and 2)
    assert list_ranks([0, 3], scores, cand, [3, 1, 4]) == [1, 2, 4]


def test_ild_is_the_mean_pairwise_distance_of_a_list() -> None:
    v = np.array([[1, 0, 0], [0, 1, 0], [1 / np.sqrt(2), 1 / np.sqrt(2), 0]])
    acc = Accumulator(3, 3, v)
    acc.add([0], [], [0, 1, 2])
    # 1 - mean cosine of the pairs: (0 + 0.7071 + 0.7071) / 3
    assert acc.result()["ILD@3"] == pytest.approx(1 - 2 * np.sqrt(0.5) / 3, rel=1e-6)
    assert "ILD@3" not in Accumulator(3, 3).result()


def test_the_harness_measures_diversified_lists() -> None:
    """With diversity on, the harness ranks the targets by the lists the step shows, and
    those lists are further apart (ILD@10) than the score order's."""
    rng = np.random.default_rng(5)
    n_items, rows = 60, []
    for u in range(40):
        for j, i in enumerate(rng.choice(n_items, 12, replace=False)):
            rows.append((f"u{u}", f"i{i}", float(1_700_000_000 + 60 * j + u), "like", np.nan))
    data = build(rows)
    # clusters of near-copies: 6 directions, 10 items around each
    centres = rng.normal(size=(6, 8))
    vec = np.stack([centres[k % 6] + 0.05 * rng.normal(size=8) for k in range(data.n_items)])
    vec = (vec / np.linalg.norm(vec, axis=1, keepdims=True)).astype(np.float32)
    out = {}
    for lam in (0.0, 0.7):
        model = OnlineRecstream(data, ranking_settings([f"diversity={lam}"]), vec)
        np.testing.assert_allclose(model.item_vectors(), vec, atol=1e-6)  # the CLI's ILD vectors
        out[lam] = prequential(data, [model], k=10, progress=False, item_vectors=vec)["recstream"]
    assert out[0.7]["ILD@10"] > out[0.0]["ILD@10"] + 0.05
    assert 0 < out[0.7]["HR@10"] <= 1 and out[0.7]["n"] == out[0.0]["n"]


def test_content_neighbours_are_each_items_nearest_others_best_first() -> None:
    vecs = np.asarray([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [0.7, 0.7]], np.float32)
    ids = ["a", "b", "c", "d", "e"]
    got = content_neighbours(vecs, 2, ids, chunk=2)  # chunks of 2: the same as one pass
    assert [[i for i, _ in row] for row in got] == [
        ["b", "e"], ["a", "e"], ["d", "e"], ["c", "e"], ["b", "d"]
    ]  # fmt: skip
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    assert got[0][0][1] == pytest.approx(float(unit[0] @ unit[1]))
    assert all(i != ids[n] for n, row in enumerate(got) for i, _ in row)  # never itself
