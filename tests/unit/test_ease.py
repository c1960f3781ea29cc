"""EASE (Steck 2019) in the harness: the closed form with known answers, the model fit
lazily on what it learned, and the split protocol running it by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from recstream.ranking.evaluate.baselines import EASE_REG, EASEModel, PopularityModel, ease_weights
from recstream.ranking.evaluate.cli import DEFAULT_MODELS, main, model_names
from recstream.ranking.evaluate.data import build
from recstream.ranking.evaluate.protocols import split


def _history() -> dict[int, list[int]]:
    """Items 0 and 1 taken together by users 0-4, items 2 and 3 by users 5-9, item 4 (the
    most popular) alone by users 10-29, item 0 alone by user 30."""
    hist = {u: [0, 1] for u in range(5)} | {u: [2, 3] for u in range(5, 10)}
    return hist | {u: [4] for u in range(10, 30)} | {30: [0]}


@pytest.mark.parametrize("reg", [1.0, EASE_REG])
def test_ease_weights_known_answer(reg: float) -> None:
    """Items 0 and 1 form their own block of G: [[6 + reg, 5], [5, 5 + reg]], so
    B[0, 1] = -P01 / P11 = 5 / (6 + reg) and B[1, 0] = 5 / (5 + reg); the rest is zero."""
    b = ease_weights(_history(), 5, reg)
    assert b.dtype == np.float32 and b.shape == (5, 5)
    assert np.all(np.diag(b) == 0.0)
    assert b[0, 1] == pytest.approx(5 / (6 + reg), rel=1e-5)
    assert b[1, 0] == pytest.approx(5 / (5 + reg), rel=1e-5)
    assert b[2, 3] == pytest.approx(5 / (5 + reg), rel=1e-5)
    assert np.abs(b[:, 4]).max() < 1e-6 and np.abs(b[4]).max() < 1e-6
    # user 30 (item 0): the co-taken item 1 ranks first, above the most popular item 4
    s = b[[0]].sum(axis=0)
    s[0] = -np.inf
    assert int(np.argmax(s)) == 1


def test_ease_weights_match_the_float64_formula() -> None:
    rng = np.random.default_rng(3)
    x = (rng.random((50, 30)) < 0.2).astype(np.float64)
    hist = {u: np.flatnonzero(x[u]).tolist() for u in range(50)}
    p = np.linalg.inv(x.T @ x + 3.0 * np.eye(30))
    want = p / -np.diag(p)
    np.fill_diagonal(want, 0.0)
    got = ease_weights(hist, 30, 3.0, chunk=7)  # several chunks of users
    np.testing.assert_allclose(got, want, atol=1e-5)


def _data():
    rows = []
    for u, items in _history().items():
        for n, i in enumerate(items):
            rows.append((f"u{u}", f"i{i}", float(1_700_000_000 + 100 * u + n), "like", np.nan))
    return build(rows)


def test_ease_model_fits_on_first_scores_and_again_after_learning() -> None:
    data = _data()
    model = EASEModel(data, reg=1.0)
    for j in range(len(data) - 1):  # all but user 30's one interaction
        model.learn(j)
    assert model.weights is None  # learning only collects
    u0 = data.user_ids.index("u0")
    s = model.scores(u0, 0)
    b = model.weights
    assert b is not None and model.scores(u0, 0) is not s and model.weights is b  # one fit
    hist = [data.item_ids.index(f"i{i}") for i in (0, 1)]
    np.testing.assert_allclose(s, b[hist].sum(axis=0), rtol=1e-6)
    model.learn(len(data) - 1)
    assert model.weights is None  # refit on the next scores
    model.scores(u0, 0)
    assert model.weights is not None and model.report()["reg"] == 1.0


def test_split_runs_ease_by_default_and_prequential_refuses_it(tmp_path: Path) -> None:
    assert "ease" in model_names(None, "split") and "ease" in DEFAULT_MODELS["split"]
    assert "ease" not in model_names(None, "prequential")
    rng = np.random.default_rng(0)
    rows = []
    for u in range(80):  # two taste groups of 15 items each
        group = rng.permutation(15)[:10] + (15 if u % 2 else 0)
        for n, i in enumerate(group):
            rows.append((f"u{u}", f"i{i}", float(1_700_000_000 + 60 * n + u), "like", np.nan))
    data = build(rows)
    r = split(data, [PopularityModel(data), EASEModel(data)], progress=False)
    assert r["ease"]["NDCG@10"] > r["popularity"]["NDCG@10"] + 0.2
    assert r["ease"]["fit_s"] >= 0
    csv = tmp_path / "ev.csv"
    lines = ["user,item,timestamp,type"] + [f"{u},{i},{int(t)},{e}" for u, i, t, e, _ in rows]
    csv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "r.json"
    argv = ["--data", str(csv), "--protocol", "split", "--models", "popularity,ease"]
    assert main([*argv, "--quiet", "--no-text", "--report", str(out)]) == 0
    rep = orjson.loads(out.read_bytes())
    assert rep["models"] == ["popularity", "ease"] and rep["ease"]["reg"] == EASE_REG
