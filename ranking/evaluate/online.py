"""recstream in the harness: a dataset replayed through the online step the worker runs
(ranking/step.py), with the same catalog and item side, in-process.

The catalog holds every item (row i = item i of the dataset, text vectors from the real
encoder); each interaction is one event for ``OnlineModel.step`` (the user's state read from
and written to its bytes, as the worker does), its item-side updates applied to an
``ItemSide`` whose changed rows are published to the catalog at once. ``ranked`` asks the model
for the list it would show now (``OnlineModel.recommend``): the protocols score the targets by
their position in it, so quality is measured on the lists the stream publishes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson

from recstream.ranking import kernels
from recstream.ranking import seen as bloom
from recstream.ranking.catalog import Catalog, CatalogParams
from recstream.ranking.evaluate.data import Interactions, default_cache
from recstream.ranking.item_side import ItemSide
from recstream.ranking.learner import SharedWeights
from recstream.ranking.params import model_params
from recstream.ranking.scoring import FEATURES
from recstream.ranking.settings import RankingSettings
from recstream.ranking.step import Event, OnlineModel, Ranked
from recstream.ranking.user_state import UserState

PARTS = ("state_read", "step", "state_write")


def ranking_settings(overrides: Sequence[str] = ()) -> RankingSettings:
    """RankingSettings (env RECSTREAM_RANKING_*) with FIELD=VALUE overrides (JSON values)."""
    base = RankingSettings().model_dump()
    for o in overrides:
        key, _, raw = o.partition("=")
        if key not in base:
            raise SystemExit(f"unknown ranking setting {key!r}")
        try:
            val = orjson.loads(raw)
        except orjson.JSONDecodeError:
            val = raw
        if isinstance(base[key], dict) and isinstance(val, dict):
            val = {**base[key], **val}
        base[key] = val
    return RankingSettings.model_validate(base)


def encode_items(data: Interactions, model_dir: Path | None = None) -> np.ndarray | None:
    """Item texts through the real MiniLM encoder, cached per text list; None if no texts."""
    if not any(data.item_text):
        return None
    digest = hashlib.sha256("\n".join(data.item_text).encode()).hexdigest()[:16]
    path = default_cache() / f"text-minilm-{digest}.npy"
    if path.exists():
        return np.load(path)
    from recstream.encoders.settings import EncoderSettings
    from recstream.encoders.text import TextEncoder

    root = Path(model_dir or EncoderSettings().model_dir)
    done = root / "text-minilm"
    if (done / "model.onnx").exists() and (done / "tokenizer.json").exists():
        enc = TextEncoder.from_export_dir(done, device="cpu")  # exported already: just load it
    else:
        enc = TextEncoder(root, device="cpu")
    out = np.concatenate(
        [enc.encode(data.item_text[i : i + 64]) for i in range(0, len(data.item_text), 64)]
    ).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def content_neighbours(
    vectors: np.ndarray, k: int, ids: Sequence[str], chunk: int = 1024
) -> list[list[tuple[str, float]]]:
    """Each item's ``k`` nearest other items by cosine, best first (ties by position), as
    (id, cosine): what the encoding stage's store search gives an item indexed after all the
    others (the harness's catalog is all there from the start)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    n, k = len(unit), min(k, len(unit) - 1)
    out: list[list[tuple[str, float]]] = []
    for lo in range(0, n, chunk):
        sims = unit[lo : lo + chunk] @ unit.T
        sims[np.arange(len(sims)), lo + np.arange(len(sims))] = -np.inf
        if k <= 0:
            out.extend([] for _ in range(len(sims)))
            continue
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        for i, cand in enumerate(top):
            order = cand[np.lexsort((cand, -sims[i, cand]))]
            out.append([(ids[int(j)], float(sims[i, j])) for j in order])
    return out


class OnlineRecstream:
    name = "recstream"

    def __init__(
        self,
        data: Interactions,
        settings: RankingSettings,
        text: np.ndarray | None,
        *,
        time_every: int = 0,
        explain: bool = False,
    ) -> None:
        """``explain``: the lists ``learn`` returns carry their reasons (the protocols only
        read the rows)."""
        self.data = data
        self.explain = explain
        self.params = model_params(settings)
        dims = {"text": int(text.shape[1])} if text is not None else {}
        self.cat = Catalog(
            dims,
            self.params.cooc,
            CatalogParams(
                seen_bits=settings.seen_filter_bits, content_k=settings.content_neighbours
            ),
            capacity=data.n_items,
        )
        # content neighbours, as the encoding stage finds them for each new item (only read
        # once the catalog is past full_scan_items: candidate sources)
        near: list[list[tuple[str, float]]] = [[] for _ in data.item_ids]
        if text is not None and data.n_items > self.params.full_scan_limit:
            near = content_neighbours(text, settings.content_neighbours, data.item_ids)
        for i, item_id in enumerate(data.item_ids):
            row = self.cat.upsert(
                item_id,
                {"text": text[i]} if text is not None else {},
                title=data.item_title[i] if data.item_title else None,
                tags=data.item_tags[i] if data.item_tags else (),
                neighbours=near[i],
            )
            assert row == i
        self.side = ItemSide(
            self.params.cooc,
            self.params.score.trending_half_life_ms,
            self.params.score.hot_half_life_ms,
        )
        self.model = OnlineModel(self.cat, self.params)
        self.shared = SharedWeights.start(self.params.score.prior)
        self.states: dict[int, bytes] = {}
        self.time_every = time_every
        self.timings: dict[str, list[int]] = {p: [] for p in (*PARTS, "total")}

    def _state(self, u: int) -> UserState:
        raw = self.states.get(u)
        return UserState.from_bytes(raw) if raw is not None else UserState()

    def ranked(self, user: int, now_ms: int, k: int, cand: np.ndarray) -> list[int]:
        """The k best items the stream would list for ``user`` now, among ``cand`` (the
        protocol's candidates: the model excludes what the user took itself)."""
        st = self._state(user)
        # items the protocol rules out that the state does not (the split's valid part)
        out = np.flatnonzero(~cand)
        extra = len(out)
        if len(out) and st.seen_filter:
            seen = kernels.bloom_rows(bloom.flags(st.seen_filter), self.cat.bloom_pos, out)
            extra = int((~seen).sum())
        lst = self.model.recommend(
            [st], [k + extra], now_ms, explain=False, shared=[self.shared.w]
        )[0]
        return [int(r) for r in lst.rows if cand[r]][:k]

    def learn(self, j: int) -> Ranked | None:
        """Interaction ``j`` through the step; returns the list the stream would answer it with."""
        d = self.data
        u = int(d.user[j])
        value = None if np.isnan(d.value[j]) else float(d.value[j])
        ev = Event(str(u), d.item_ids[int(d.item[j])], d.etype[j], int(d.ts[j]), value)
        timed = self.time_every > 0 and j % self.time_every == 0
        t0 = time.perf_counter_ns()
        st = self._state(u)
        t1 = time.perf_counter_ns()
        res = self.model.step([ev], [st], int(d.ts[j]), [self.shared.w], explain=self.explain)
        t2 = time.perf_counter_ns()
        self.states[u] = res.outcomes[0].state.to_bytes()
        t3 = time.perf_counter_ns()
        if timed:
            for part, ns in zip(PARTS, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                self.timings[part].append(ns)
            self.timings["total"].append(t3 - t0)
        p = self.params
        self.shared.learn(res.gradients.values(), p.shared_learning_rate, p.shared_l2)
        for h, changed in self.side.apply(res.updates).items():
            self.cat.set_side(h, self.side.rows[h], changed)
        return res.outcomes[0].ranked

    def item_vectors(self) -> np.ndarray | None:
        """float32[n_items, d]: the items' unit text vectors (row i = item i), if any."""
        if "text" not in self.cat.vec:
            return None
        rows = self.cat.midx[self.cat.modalities.index("text"), : self.data.n_items]
        if (rows < 0).any():
            return None
        return self.cat.vec["text"][rows]

    def report(self) -> dict[str, float]:
        # the shared weights learned over the replay, by feature
        out = {f"weight_{f}": float(w) for f, w in zip(FEATURES, self.shared.w, strict=True)}
        for part, ns in self.timings.items():
            if ns:
                a = np.asarray(ns, np.float64) / 1e6
                key = "stream_ms" if part == "total" else f"stream_{part}_ms"
                out[f"{key}_p50"] = float(np.percentile(a, 50))
                out[f"{key}_p99"] = float(np.percentile(a, 99))
        return out


def replay_states(model: OnlineRecstream, users: Sequence[int]) -> dict[int, UserState]:
    return {u: model._state(u) for u in users}
