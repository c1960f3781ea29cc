"""The catalog a ranking process holds whole: items as integer rows, one matrix per modality.

Every ranking worker builds the same catalog from two compacted topics (the Kafka Streams
GlobalKTable pattern, streams/catalog_reader.py): the encoded items (vectors, metadata and
content neighbours, from the encoding stage) and the item side (each item's popularity,
count and co-occurrence row, ranking/item_side.py). ``recstream evaluate`` builds it from the
dataset and feeds it the item side in-process. Ranking reads it with array operations only.

Rows never move: an item keeps its row for the life of the process (a deleted item's row is
marked dead; publishing it again revives it). Items are found by their 64-bit hashes
(ranking.user_state.item_hash); a neighbour not (yet) in the catalog is skipped where it is
read. The item side's rows are kept in fixed-width slots (``top`` entries, strongest first)
allocated to items that have one; with at most ``dense_limit`` items a transposed dense copy
of the "history" weights lets a whole-catalog scoring sum a user's taken columns instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recstream.ranking import kernels
from recstream.ranking import seen as bloom
from recstream.ranking.item_side import NO_TREND, CoocParams, ItemRow
from recstream.ranking.user_state import item_digest


@dataclass(frozen=True)
class CatalogParams:
    seen_bits: int = 6144  # the users' Bloom filter size (their positions are kept per row)
    content_k: int = 20  # content neighbours kept per item
    dense_limit: int = 4096  # catalogs up to this many rows also keep the dense history matrix
    list_size: int = 200  # trending and fresh rows kept ready (candidates over-fetch them)


def _grow(a: np.ndarray, n: int, fill: float | int = 0) -> np.ndarray:
    # zeros: the pages past the copy stay untouched (not resident) until written
    shape = (n, *a.shape[1:])
    out = np.zeros(shape, a.dtype) if fill == 0 else np.full(shape, fill, dtype=a.dtype)
    out[: len(a)] = a
    return out


_NO_DENSE = np.zeros((1, 1), np.float32)  # publish_row's dense matrix when there is none


class Catalog:
    def __init__(
        self,
        dims: Mapping[str, int],
        cooc: CoocParams | None = None,
        params: CatalogParams | None = None,
        capacity: int = 1024,
    ) -> None:
        self.dims = dict(dims)
        self.cooc = cooc = cooc or CoocParams()
        self.params = params = params or CatalogParams()
        self.n = 0  # rows in use
        self.n_live = 0  # of which live (not deleted)
        cap = max(capacity, 16)
        self.ids: list[str] = []
        self.titles: list[str | None] = []
        self.tags: list[tuple[str, ...]] = []
        self.hashes = np.zeros(cap, np.uint64)
        self.row_of: dict[int, int] = {}
        self.bloom_pos = np.zeros((cap, bloom.N_HASHES), np.int64)  # for params.seen_bits
        # Per modality, only the items that have it hold a vector: the matrix vec[m] is
        # compact, midx[i, row] the row's index into modality i's matrix (-1: none).
        self.modalities = list(self.dims)
        self.vec = {m: np.zeros((16, d), np.float32) for m, d in self.dims.items()}
        # and as int8 codes with a scale per row (kernels.quantize), what scoring reads: a
        # quarter of the memory traffic of a pass over the catalog's vectors
        self.codes = {m: np.zeros((16, d), np.int8) for m, d in self.dims.items()}
        self.code_scale = {m: np.zeros(16, np.float32) for m in self.dims}
        self.n_vec = {m: 0 for m in self.dims}
        self.midx = np.full((len(self.dims), cap), -1, np.int64)
        self.published_at = np.full(cap, np.nan)
        self.live = np.zeros(cap, bool)
        self.trend = np.full(cap, NO_TREND)
        self.hot = np.full(cap, NO_TREND)
        self.count = np.zeros(cap, np.float64)
        self.log_count = np.zeros(cap, np.float64)  # log1p(count): the "popular" feature
        # the counts as a Fenwick tree, to draw rows in proportion to them (the learning
        # step's popular negatives); a deleted row's count stays (the draw skips dead rows)
        self.count_tree = kernels.fenwick_build(self.count)
        # scratch of the scoring kernel: a row's index among the user's pairs (-1 between calls)
        self.pair_at = np.full(cap, -1, np.int64)
        # the scoring kernel's cache of the rows' popularity features at one time (set_side
        # clears a row's when its trends change)
        self.pop_key = np.full(3, np.nan)
        self.pop_trend = np.zeros(cap, np.float32)
        self.pop_hot = np.zeros(cap, np.float32)
        self.pop_ok = np.zeros(cap, bool)
        # content neighbours (hashes, resolved when read) and their cosines, best first
        k = params.content_k
        self.cn = np.zeros((cap, k), np.uint64)
        self.cn_sim = np.zeros((cap, k), np.float32)
        self.cn_len = np.zeros(cap, np.int32)
        # item side, published: slot per row (-1: none), each slot `top` entries
        self.top = max(cooc.top_n, cooc.history_top_n)
        self.slot = np.full(cap, -1, np.int32)
        self.nb = np.zeros((0, self.top), np.int32)  # neighbour rows, strongest first
        self.nb_w = np.zeros((0, self.top), np.float32)  # raw co-occurrence weights
        self.nb_len = np.zeros(0, np.int32)
        self._whole = np.zeros(0, bool)  # per slot: it holds its row's whole top (set_side)
        self.n_slots = 0
        self.dense_hist: np.ndarray | None = (
            np.zeros((cap, cap), np.float32) if cap <= params.dense_limit else None
        )
        # item-side rows that arrived before their item: applied when it does
        self._pending_side: dict[int, ItemRow] = {}
        # hash -> row for the compiled code: an open-addressing table at most half full
        self._keys, self._rows = kernels.table_build(self.hashes[:0], 16)
        # ready lists: rows by trend and by hot trend (best first), by interactions over all
        # time (most first) and by publication time (newest first)
        self.trending = np.zeros(0, np.int32)
        self.hottest = np.zeros(0, np.int32)
        self.popular = np.zeros(0, np.int32)
        self.fresh = np.zeros(0, np.int32)
        # per modality: count, sum and sum of squares of sampled cosines between items (each
        # new vector against a few earlier ones): how alike a typical pair is in this catalog
        self.cos_stats = {m: np.zeros(3) for m in self.dims}
        self.version = 0  # bumped on every change (caches key on it)
        self._live_rows: np.ndarray | None = None  # live_rows(), until an item comes or goes
        # 1 / max(count, 1) ** exponent per row, per exponent (scoring's normalisers), kept
        # current as counts change
        self._powers: dict[float, np.ndarray] = {}

    def __len__(self) -> int:
        return self.n

    @property
    def capacity(self) -> int:
        return len(self.hashes)

    # -- identity -----------------------------------------------------------------------------
    def rows_of(self, hashes: np.ndarray) -> np.ndarray:
        """int64 rows of item hashes (-1 where not in the catalog)."""
        h = np.asarray(hashes, dtype=np.uint64)
        return kernels.lookup_rows(*self.index_arrays(), h.ravel())

    def index_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The hash -> row table as the kernels take it (keys, rows; rows -1 where empty)."""
        return self._keys, self._rows

    def _index(self, h: int, row: int) -> None:
        """Add a new item to the hash table, rebuilt twice the size once half full."""
        if 2 * (row + 1) > len(self._keys):
            size = 1 << max(4, (4 * (row + 1) - 1).bit_length())
            self._keys, self._rows = kernels.table_build(self.hashes[: row + 1], size)
        else:
            kernels.table_put(self._keys, self._rows, np.uint64(h), row)

    def _ensure(self, n: int) -> None:
        if n <= self.capacity:
            return
        cap = max(n, 2 * self.capacity)
        self.hashes = _grow(self.hashes, cap)
        self.bloom_pos = _grow(self.bloom_pos, cap)
        # (the vector matrices are compact, grown by upsert as vectors arrive: a modality no
        # item has stays 16 rows)
        midx = np.full((len(self.modalities), cap), -1, np.int64)
        midx[:, : self.midx.shape[1]] = self.midx
        self.midx = midx
        self.published_at = _grow(self.published_at, cap, np.nan)
        self.live = _grow(self.live, cap, False)
        self.trend = _grow(self.trend, cap, NO_TREND)
        self.hot = _grow(self.hot, cap, NO_TREND)
        self.count = _grow(self.count, cap)
        self.log_count = _grow(self.log_count, cap)
        self.count_tree = kernels.fenwick_build(self.count)
        self.pair_at = _grow(self.pair_at, cap, -1)
        self.pop_trend = _grow(self.pop_trend, cap)
        self.pop_hot = _grow(self.pop_hot, cap)
        self.pop_ok = _grow(self.pop_ok, cap, False)
        self._powers = {e: np.maximum(self.count, 1.0) ** -e for e in self._powers}
        self.cn = _grow(self.cn, cap)
        self.cn_sim = _grow(self.cn_sim, cap)
        self.cn_len = _grow(self.cn_len, cap)
        self.slot = _grow(self.slot, cap, -1)
        if self.dense_hist is not None:
            if cap > self.params.dense_limit:
                self.dense_hist = None  # too big: scoring reads the rows instead
            else:
                dense = np.zeros((cap, cap), np.float32)
                dense[: len(self.dense_hist), : len(self.dense_hist)] = self.dense_hist
                self.dense_hist = dense

    # -- items --------------------------------------------------------------------------------
    def upsert(
        self,
        item_id: str,
        vectors: Mapping[str, np.ndarray],
        *,
        title: str | None = None,
        tags: Sequence[str] = (),
        published_at: int | None = None,
        neighbours: Sequence[tuple[str, float]] = (),
    ) -> int:
        """Add or replace an item; returns its row. Vectors are stored normalised (a zero
        vector counts as absent); ``neighbours``: its content neighbours (id, cosine), best
        first (the encoding stage's)."""
        digest = item_digest(item_id)
        h = int.from_bytes(digest[:8], "little")
        row = self.row_of.get(h)
        if row is None:
            row = self.n
            self._ensure(row + 1)
            self.n += 1
            self.ids.append(item_id)
            self.titles.append(title)
            self.tags.append(tuple(tags))
            self.hashes[row] = h
            self.row_of[h] = row
            self._index(h, row)
            self.bloom_pos[row] = bloom.digest_positions(digest, self.params.seen_bits)
        else:
            self.titles[row] = title
            self.tags[row] = tuple(tags)
        for i, m in enumerate(self.modalities):
            v = vectors.get(m)
            norm = float(np.linalg.norm(v)) if v is not None else 0.0
            if v is not None and norm > 1e-9 and len(v) == self.dims[m]:
                at = int(self.midx[i, row])
                if at < 0:
                    at = self.n_vec[m]
                    if at >= len(self.vec[m]):
                        self.vec[m] = _grow(self.vec[m], 2 * len(self.vec[m]))
                        self.codes[m] = _grow(self.codes[m], len(self.vec[m]))
                        self.code_scale[m] = _grow(self.code_scale[m], len(self.vec[m]))
                    self.n_vec[m] += 1
                    self.midx[i, row] = at
                self.vec[m][at] = np.asarray(v, np.float32) / np.float32(norm)
                self.codes[m][at], self.code_scale[m][at] = kernels.quantize(self.vec[m][at])
                self._sample_cosines(m, at)
            else:
                self.midx[i, row] = -1  # its old vector, if any, stays unused
        self.published_at[row] = np.nan if published_at is None else float(published_at)
        nbs = list(neighbours)[: self.params.content_k]
        self.cn_len[row] = len(nbs)
        if nbs:
            self.cn[row, : len(nbs)] = [
                int.from_bytes(item_digest(i)[:8], "little") for i, _ in nbs
            ]
            self.cn_sim[row, : len(nbs)] = [s for _, s in nbs]
        revived = not self.live[row] and self.trend[row] > NO_TREND / 2
        if not self.live[row]:
            self.n_live += 1
            self._live_rows = None
        self.live[row] = True
        if revived:
            self._on_trend(row)
            self._on_count(row)
            self._on_hot(row)
        pending = self._pending_side.pop(h, None)
        if pending is not None:
            self.set_side(h, pending)
        self._on_fresh(row)
        self.version += 1
        return row

    def _sample_cosines(self, m: str, at: int) -> None:
        """Fold the cosines of vector ``at`` with up to four earlier ones of modality ``m``
        (fixed positions, so a replay samples the same) into ``cos_stats``."""
        earlier = sorted({at - 1, at // 2, at // 3, (at * 7) // 11} - {at})
        idx = np.asarray([j for j in earlier if 0 <= j < at], np.intp)
        if len(idx):
            c = self.vec[m][idx] @ self.vec[m][at]
            self.cos_stats[m] += (len(c), float(c.sum()), float((c * c).sum()))

    def cosine_spread(self, m: str) -> tuple[float, float]:
        """(mean, standard deviation) of the cosine of two items of modality ``m`` (sampled);
        (0, 0) before any sample (unrelated directions, no spread known)."""
        n, s1, s2 = self.cos_stats[m]
        if not n:
            return 0.0, 0.0
        mean = s1 / n
        return float(mean), float(np.sqrt(max(s2 / n - mean * mean, 0.0)))

    def delete(self, item_id: str) -> None:
        row = self.row_of.get(int.from_bytes(item_digest(item_id)[:8], "little"))
        if row is not None and self.live[row]:
            self.live[row] = False
            self.n_live -= 1
            self._live_rows = None
            self.trending = self.trending[self.trending != row]
            self.hottest = self.hottest[self.hottest != row]
            self.popular = self.popular[self.popular != row]
            self.fresh = self.fresh[self.fresh != row]
            self.version += 1

    # -- the item side ------------------------------------------------------------------------
    def set_side(self, item: int, side: ItemRow, changed: np.ndarray | None = None) -> None:
        """An item's published side: trends, count and its strongest ``top`` neighbours (the
        ``top_n`` first feed "cf" and collaborative candidates, the ``history_top_n`` first
        "history", where scoring weighs each by 1 / count(neighbour) ** history_alpha with the
        counts known then: the result does not depend on the order rows are published in).
        ``changed``: the neighbours (hashes, sorted) whose weights are all that changed in the
        row since it was last given here, when the caller knows (``ItemSide.apply``): the
        published entries are then moved rather than chosen again from the whole row."""
        row = self.row_of.get(item)
        if row is None:
            self._pending_side[item] = side
            return
        if side.trend != self.trend[row]:
            self.trend[row] = side.trend
            self.pop_ok[row] = False
            self._on_trend(row)
        if side.hot != self.hot[row]:
            self.hot[row] = side.hot
            self.pop_ok[row] = False
            self._on_hot(row)
        if side.count != self.count[row]:
            kernels.fenwick_add(self.count_tree, row, side.count - self.count[row])
            self.count[row] = side.count
            self.log_count[row] = math.log1p(side.count)
            c = max(side.count, 1.0)
            for e, arr in self._powers.items():
                arr[row] = c**-e
            self._on_count(row)
        if len(side.nb) == 0 and self.slot[row] < 0:
            self.version += 1
            return
        s = int(self.slot[row])
        old = 0 if s < 0 else int(self.nb_len[s])
        dense = self.dense_hist if self.dense_hist is not None else _NO_DENSE
        if changed is not None and s >= 0 and self._whole[s] and self._moves_ok():
            m = kernels.publish_changes(
                side.nb, side.w, changed, self.top, self._keys, self._rows, self.nb[s],
                self.nb_w[s], old, dense, self.dense_hist is not None, row, self.hashes,
            )  # fmt: skip
            if m >= 0:
                self.nb_len[s] = m
                self.version += 1
                return
        if s < 0:
            s = self.n_slots
            if s >= len(self.nb):
                cap = max(16, 2 * len(self.nb))
                self.nb = _grow(self.nb, cap)
                self.nb_w = _grow(self.nb_w, cap)
                self.nb_len = _grow(self.nb_len, cap)
                self._whole = _grow(self._whole, cap, False)
            self.n_slots += 1
            self.slot[row] = s
        m = kernels.publish_row(
            side.nb, side.w, self.top, self._keys, self._rows, self.nb[s], self.nb_w[s], old,
            dense, self.dense_hist is not None, row, self.cooc.history_top_n,
        )  # fmt: skip
        self.nb_len[s] = m
        # every entry of the row's top published (no neighbour skipped as not in the catalog)
        self._whole[s] = m == min(self.top, len(side.nb))
        self.version += 1

    def _moves_ok(self) -> bool:
        """Whether published entries can be moved (``kernels.publish_changes``): a row's top
        survives the trimming of long rows, and the dense history holds every published entry
        when there is one."""
        dense_ok = self.dense_hist is None or self.cooc.history_top_n == self.top
        return dense_ok and self.cooc.max_row * 3 // 4 >= self.top

    def count_powers(self, *exponents: float) -> tuple[np.ndarray, ...]:
        """Per exponent e, float64[capacity] 1 / max(count, 1) ** e (kept current)."""
        out = []
        for e in exponents:
            arr = self._powers.get(e)
            if arr is None or len(arr) != self.capacity:
                arr = self._powers[e] = np.maximum(self.count, 1.0) ** -e
            out.append(arr)
        return tuple(out)

    def neighbours(self, row: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The row's first ``n`` published neighbours (rows) and raw weights, strongest first."""
        s = int(self.slot[row])
        if s < 0:
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        m = min(int(self.nb_len[s]), n)
        return self.nb[s, :m], self.nb_w[s, :m]

    def content_neighbours(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(owner index into ``rows``, neighbour row, cosine) of the rows' content neighbours
        that are in the catalog."""
        rows = np.asarray(rows, np.int64)
        lens = self.cn_len[rows]
        if not lens.any():
            return np.zeros(0, np.intp), np.zeros(0, np.int64), np.zeros(0, np.float32)
        mask = np.arange(self.params.content_k)[None, :] < lens[:, None]
        owner = np.nonzero(mask)[0]
        nbr = self.rows_of(self.cn[rows][mask])
        sims = self.cn_sim[rows][mask]
        ok = nbr >= 0
        return owner[ok], nbr[ok], sims[ok]

    # -- ready lists --------------------------------------------------------------------------
    def _placed(self, ranked: np.ndarray, key: np.ndarray, row: int) -> np.ndarray:
        """``ranked`` (the best ``list_size`` rows by ``key``, highest first) with ``row`` moved
        to where its key puts it (after rows of an equal key), or dropped below the last."""
        return kernels.placed(ranked, key, row, self.params.list_size)

    def _on_trend(self, row: int) -> None:
        """Keep ``trending`` the best ``list_size`` live rows by trend. Trends only grow when
        written and decay alike, so an item can only move up, and only when it is written."""
        if self.live[row]:
            self.trending = self._placed(self.trending, self.trend, row)

    def _on_hot(self, row: int) -> None:
        """Keep ``hottest`` the best ``list_size`` live rows by hot trend (as ``trending``)."""
        if self.live[row]:
            self.hottest = self._placed(self.hottest, self.hot, row)

    def _on_count(self, row: int) -> None:
        """Keep ``popular`` the best ``list_size`` live rows by interaction count (ties: the
        earlier there first). Counts only grow, so a row only moves up, when written."""
        if self.live[row]:
            self.popular = self._placed(self.popular, self.count, row)

    def _on_fresh(self, row: int) -> None:
        if np.isnan(self.published_at[row]):
            self.fresh = self.fresh[self.fresh != row]
        else:
            self.fresh = self._placed(self.fresh, self.published_at, row)

    def has(self, m: str, rows: np.ndarray) -> np.ndarray:
        """bool: which rows have a vector in modality m."""
        return self.midx[self.modalities.index(m)][rows] >= 0

    def vectors(self, row: int) -> dict[str, np.ndarray]:
        """The row's unit vectors by modality."""
        out = {}
        for i, m in enumerate(self.modalities):
            at = int(self.midx[i, row])
            if at >= 0:
                out[m] = self.vec[m][at]
        return out

    def live_rows(self) -> np.ndarray:
        """int64: the live rows, ascending (read-only; kept until an item comes or goes)."""
        if self._live_rows is None:
            rows = np.flatnonzero(self.live[: self.n]).astype(np.int64)
            rows.flags.writeable = False
            self._live_rows = rows
        return self._live_rows

    def popularity_now(self, rows: np.ndarray, now_ms: int, half_life_ms: float) -> np.ndarray:
        """The rows' current decayed popularity, from their log-space trend."""
        k = math.log(2) / half_life_ms
        return np.exp(np.minimum(self.trend[rows] - now_ms * k, 700.0))
