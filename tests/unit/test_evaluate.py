"""The evaluation harness (ranking/evaluate): metric definitions with known answers, and a
small replay through both protocols: a perfect oracle scores 1.0, a random ranker ~k/catalog,
and recstream's model beats popularity on data with a planted co-occurrence structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from recstream.ranking import seen
from recstream.ranking.evaluate.baselines import ItemKNNModel, PopularityModel, RandomModel
from recstream.ranking.evaluate.cli import main
from recstream.ranking.evaluate.data import Interactions, build, load_interactions
from recstream.ranking.evaluate.metrics import query_metrics, target_ranks
from recstream.ranking.evaluate.models import RecstreamModel, ranking_settings
from recstream.ranking.evaluate.protocols import prequential, split, split_indices, split_replay
from recstream.ranking.evaluate.stream_cost import PHASES
from recstream.ranking.features import FEATURES
from recstream.ranking.state import UserState


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


def test_prequential_oracle_random_and_models() -> None:
    data = synthetic()
    settings = ranking_settings(["learning_rate=0.05"])
    models = [
        Oracle(data),
        RandomModel(data, seed=1),
        PopularityModel(data),
        ItemKNNModel(data),
        RecstreamModel(data, settings, None),
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


def test_split_protocol() -> None:
    data = synthetic(per_user=20)
    part = split_indices(data)
    for u in range(data.n_users):
        counts = np.bincount(part[data.user == u], minlength=3)
        assert counts.tolist() == [16, 2, 2]  # RecBole: floor(10%) valid and test
    targets: dict[int, set[int]] = {}
    for j in np.flatnonzero(part == 2):
        targets.setdefault(int(data.user[j]), set()).add(int(data.item[j]))
    r = split(data, [Oracle(data, targets), PopularityModel(data)], progress=False)
    assert r["oracle"]["NDCG@10"] == 1.0 and r["oracle"]["Recall@10"] == 1.0
    assert r["oracle"]["Precision@10"] == pytest.approx(0.2)
    assert r["popularity"]["NDCG@10"] < 1.0


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


def test_stream_path_is_timed_without_changing_what_the_model_learns() -> None:
    """The stream's per-event path (stream_cost.py) runs beside the whole-catalog scoring on
    the same states: it reports its cost and candidate-set size and changes no metric."""
    data = synthetic()
    settings = ranking_settings(["learning_rate=0.05", "candidate_factor=1"])
    plain = RecstreamModel(data, settings, None)
    timed = RecstreamModel(data, settings, None, stream_cost=True, stream_repeats=2)
    r = prequential(data, [plain], k=10, progress=False)["recstream"]
    t = prequential(data, [timed], k=10, progress=False)["recstream"]
    assert t["HR@10"] == r["HR@10"] and t["NDCG@10"] == r["NDCG@10"]
    assert "stream_ms_p50" not in r
    assert 0 < t["stream_best_of_2_ms_p50"] and 0 < t["stream_ms_p99"]
    # each part of the path is reported, for the first runs and the best
    for phase in PHASES:
        assert t[f"stream_{phase}_ms_p99"] >= t[f"stream_{phase}_ms_p50"] > 0, phase
        assert t[f"stream_best_of_2_{phase}_ms_p50"] > 0, phase
    # k * candidate_factor = 10 per source: trending + co-occurrence neighbours + the event's
    # item (no texts, no publish times here), never more than the catalog.
    assert 1 < t["stream_candidates_mean"] <= 21 and t["stream_candidates_max"] <= data.n_items


def _replayed_with_item_side(sets: list[str]):  # type: ignore[no-untyped-def]
    """A synthetic replay learned by the harness's model and, event by event, by the item
    side's own rules (collab.CoocTable fed as the stream feeds it)."""
    from recstream.ranking.collab import CoocTable
    from recstream.ranking.params import cooc_params

    data = synthetic(n_users=30, per_user=10)
    settings = ranking_settings(sets)
    model = RecstreamModel(data, settings, None)
    table = CoocTable.empty(cooc_params(settings))
    for j in range(len(data)):
        st = model.states.get(int(data.user[j])) or UserState()
        table.record(st.recent, data.item_ids[int(data.item[j])], 1.0)
        model.learn(j)
    return data, settings, model, table


def test_harness_history_weights_equal_the_item_sides() -> None:
    """The harness's dense item side (ranking/evaluate/models.py) publishes the same "history"
    weights as the item side's own rule (collab.CoocTable: records with the neighbours'
    counts, known_counts_after, history_weights) fed with the same events."""
    sets = ["history_alpha=0.5", "learning_rate=0", "cooc_top_n=1000", "cooc_history_top_n=1000"]
    data, _, model, table = _replayed_with_item_side(sets)
    ids = data.item_ids
    normalised = 0
    for r, row_id in enumerate(ids):
        want = dict(table.history_row(row_id))
        raw = dict(table.neighbours(row_id))
        for n, nb in enumerate(ids):
            assert model.hist_t[n, r] == pytest.approx(want.get(nb, 0.0), rel=1e-5)
            assert model.co[r, n] == pytest.approx(raw.get(nb, 0.0), rel=1e-5)
        normalised += sum(want[nb] < raw[nb] for nb in want)
    assert normalised > 0  # the rule did something: counts above 1 shrink entries


def test_harness_history_reads_only_the_published_entries() -> None:
    """The harness's "history" sums only what the item side publishes per row
    (collab.published_rows: its cooc_history_top_n strongest entries, ties by id), as the
    stream's user side only sees that: rows that outgrow it lose their weakest entries."""
    data, settings, model, table = _replayed_with_item_side(
        ["learning_rate=0", "cooc_history_top_n=3"]
    )
    ids = data.item_ids
    cut = 0
    for r, row_id in enumerate(ids):
        published = table.history_row(row_id)  # (neighbour, "history" weight), best first
        assert [ids[n] for n in model.history_entries(r)] == [nb for nb, _ in published]
        got = {
            ids[n]: float(model.hist_pub_t[n, r]) for n in np.flatnonzero(model.hist_pub_t[:, r])
        }
        assert got == pytest.approx(dict(published), rel=1e-5)
        cut += len(table.rows.get(row_id, {})) > len(published)
    assert cut > 0  # some rows had more entries than they publish
    # and "history" sums only those: one user's feature from the published entries by hand
    user = int(data.user[0])
    st = model.states[user]
    f = model.features(st, int(data.ts[-1]))
    taken = {ids[t] for t in np.flatnonzero(seen.contains_many(st.seen_filter, model.cs.seen_pos))}
    h = np.zeros(len(ids))
    for r, row_id in enumerate(ids):
        h[r] = sum(w for nb, w in table.history_row(row_id) if nb in taken)
    h /= np.maximum(model.cs.cf_count, 1.0) ** settings.history_beta
    assert h.max() > 0
    np.testing.assert_allclose(f[:, FEATURES.index("history")], h / h.max(), rtol=1e-4, atol=1e-6)
