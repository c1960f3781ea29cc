"""The candidate set: one structure the stream and the harness both build, one scorer over it.

The stream builds it from the items its vector-store queries returned (similar to the user's
interests, neighbours of the user's recent items, trending, fresh); the evaluation harness from
the whole catalog in memory. Rows are items; vectors are unit rows per modality with a mask for
items that lack the modality.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

from recstream.ranking import seen as bloom
from recstream.ranking.memo import ITEM_CODES
from recstream.ranking.state import SEEN_FILTER_BITS


@dataclass
class CandidateSet:
    ids: list[str]
    # modality -> float32[n, d], unit rows (zeros where missing); a modality that no candidate
    # has may be absent (from_items leaves it out): scoring skips it.
    vectors: dict[str, np.ndarray]
    present: dict[str, np.ndarray]  # modality -> bool[n]
    trend: np.ndarray  # float64[n], log-space decayed popularity (ranking.store)
    published_at: np.ndarray  # float64[n], epoch ms, nan when unknown
    cf_count: np.ndarray  # float64[n], interactions (ranking.collab.count_after)
    titles: list[str | None] = field(default_factory=list)
    tags: list[tuple[str, ...]] = field(default_factory=list)
    seen_bits: int = SEEN_FILTER_BITS
    # The candidates' own co-occurrence rows (published ``cf_top``, with their "history"
    # weights, collab.pack_row), flattened: entry e is a neighbour of row cf_owner[e] with
    # weight cf_w[e] and Bloom positions cf_pos[:, e] (one row per hash); they give the
    # "history" feature (how much of the row the user has already taken).
    cf_owner: np.ndarray = field(default_factory=lambda: np.zeros(0, np.intp))
    cf_w: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    cf_pos: np.ndarray = field(default_factory=lambda: np.zeros((bloom.N_HASHES, 0), np.uint16))
    # True for a set built per request (from_items) that nothing changes afterwards: what
    # scoring derives from the items alone may then be kept in ``memo`` for the second
    # scoring of the same set. The harness's catalog set is updated in place: never frozen.
    frozen: bool = False
    index: dict[str, int] = field(init=False)
    seen_pos: np.ndarray = field(init=False)  # int64[n, k] Bloom positions
    memo: dict[object, object] = field(init=False, default_factory=dict)
    # seed_neighbours: the seeds' published rows resolved to candidate rows, kept for the
    # set's second scoring (the stream scores one set before and after the event, with the
    # same seeds but one).
    _seed_at: dict[str, int] = field(init=False, default_factory=dict)
    _seed_tab: tuple[np.ndarray, np.ndarray, np.ndarray] = field(init=False)
    _codes: tuple[np.ndarray, np.ndarray] = field(init=False)  # sorted id codes, their rows
    _code_gen: int = field(init=False, default=-1)

    def __post_init__(self) -> None:
        self._seed_tab = (np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0))
        self.index = {i: n for n, i in enumerate(self.ids)}
        self.seen_pos = bloom.positions_matrix(self.ids, self.seen_bits)
        if not self.titles:
            self.titles = [None] * len(self.ids)
        if not self.tags:
            self.tags = [()] * len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_items(
        cls,
        items: Sequence[object],
        dims: Mapping[str, int],
        cf_counts: Mapping[str, float] | None = None,
        seen_bits: int = SEEN_FILTER_BITS,
        cf_rows: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> CandidateSet:
        """From store items (``item_id``, ``vectors``, ``trend``, ``published_at``, ``title``,
        ``tags``; e.g. ranking.store.StoredItem), first occurrence of each id kept."""
        uniq: dict[str, object] = {}
        for it in items:
            uniq.setdefault(it.item_id, it)  # type: ignore[attr-defined]
        rows: list = list(uniq.values())  # StoredItem-like
        ids = list(uniq)
        n = len(rows)
        vectors, present = {}, {}
        for m, d in dims.items():
            vs = [it.vectors.get(m) for it in rows]
            if n and all(v is not None and len(v) == d for v in vs):
                mat = np.array(vs, dtype=np.float32)  # every item has it: one copy
            else:
                got = [(r, v) for r, v in enumerate(vs) if v is not None and len(v) == d]
                if not got:
                    # No candidate has it: left out (scoring skips a modality the set lacks,
                    # as it skips rows without it), not an [n, d] block of zeros per request.
                    continue
                mat = np.zeros((n, d), dtype=np.float32)
                mat[[r for r, _ in got]] = np.stack([v for _, v in got])
            # One vectorised normalisation: this runs per request on the stream's hot path.
            norm = np.sqrt(np.einsum("ij,ij->i", mat, mat))
            has = norm > 1e-9
            mat /= np.where(has, norm, np.float32(1.0))[:, None]  # rows without it stay as are
            vectors[m], present[m] = mat, has
        counts = cf_counts or {}
        # The candidates' own rows, already as Bloom positions (collab.pack_row/unpack_row).
        own = cf_rows or {}
        found = [
            (r, row) for r, i in enumerate(ids) if (row := own.get(i)) is not None and len(row[1])
        ]
        if found:
            lengths = [len(row[1]) for _, row in found]
            owner = np.repeat(np.asarray([r for r, _ in found], dtype=np.intp), lengths)
            pos = np.concatenate([row[0] for _, row in found], axis=1)
            wts = np.concatenate([row[1] for _, row in found])
        else:
            owner = np.zeros(0, np.intp)
            pos = np.zeros((bloom.N_HASHES, 0), np.uint16)
            wts = np.zeros(0, np.float64)
        return cls(
            ids=ids,
            vectors=vectors,
            present=present,
            trend=np.fromiter((it.trend for it in rows), dtype=np.float64, count=n),
            published_at=np.fromiter(
                (np.nan if it.published_at is None else it.published_at for it in rows),
                dtype=np.float64,
                count=n,
            ),
            cf_count=np.fromiter((counts.get(i, 0.0) for i in ids), dtype=np.float64, count=n),
            titles=[it.title for it in rows],
            tags=[tuple(it.tags) for it in rows],
            seen_bits=seen_bits,
            cf_owner=owner,
            cf_w=wts,
            cf_pos=pos,
            frozen=True,
        )

    def history_sums(self, seen_filter: bytes) -> np.ndarray:
        """float64[n]: per candidate, the weights of its row's neighbours that are in the
        user's seen filter (false positives count too, ~2% at 700 items)."""
        if not seen_filter or not len(self.cf_w):
            return np.zeros(len(self))
        hit = bloom.contains_cols(bloom.flags(seen_filter), self.cf_pos)
        return np.bincount(self.cf_owner[hit], weights=self.cf_w[hit], minlength=len(self))

    def seed_neighbours(
        self, seeds: Sequence[tuple[str, list[str], np.ndarray]]
    ) -> tuple[dict[str, int], np.ndarray, np.ndarray, np.ndarray]:
        """The published rows of some seeds ((seed id, neighbour ids, weights)) as candidate
        rows, all in one table: (seed id -> its number k, then per entry: k, candidate row,
        weight); neighbours that are not candidates are left out. Seeds resolved by an
        earlier call on this set are not resolved again."""
        codes = ITEM_CODES
        new = [(i, ids, w) for i, ids, w in seeds if i not in self._seed_at]
        codes.reserve(len(self.ids) + sum(len(ids) for _, ids, _ in new))
        if self._code_gen != codes.generation:  # first call, or the codes were reset since
            order = codes.codes_of(self.ids)
            by_code = np.argsort(order, kind="stable")
            self._codes = (order[by_code], by_code)
            self._code_gen = codes.generation
            self._seed_at = {}
            self._seed_tab = (np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0))
            new = list(seeds)
        if new:
            k0 = len(self._seed_at)
            # The neighbours' ids as codes (memoised per seed row), looked up among the
            # candidates' sorted codes: no dict lookup per neighbour.
            nb = np.concatenate([codes.codes(ids) for _, ids, _ in new])
            sorted_codes, by_code = self._codes
            at = np.minimum(np.searchsorted(sorted_codes, nb), len(sorted_codes) - 1)
            keep = sorted_codes[at] == nb if len(sorted_codes) else np.zeros(len(nb), bool)
            lengths = [len(ids) for _, ids, _ in new]
            k = np.repeat(np.arange(k0, k0 + len(new), dtype=np.intp), lengths)
            w = np.concatenate([w for _, _, w in new])
            old_k, old_r, old_w = self._seed_tab
            self._seed_tab = (
                np.concatenate([old_k, k[keep]]),
                np.concatenate([old_r, by_code[at[keep]]]),
                np.concatenate([old_w, w[keep]]),
            )
            for n, (i, _, _) in enumerate(new):
                self._seed_at[i] = k0 + n
        return (self._seed_at, *self._seed_tab)

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """int64 row of each id, -1 where the id is not a candidate."""
        return np.fromiter(map(self.index.get, ids, repeat(-1)), dtype=np.int64, count=len(ids))

    def neighbour_arrays(self, pairs: Sequence[tuple[str, float]]) -> tuple[np.ndarray, np.ndarray]:
        """A neighbour list (ids, weights) as (row indices, weights), dropping ids not here."""
        get = self.index.get
        idx = np.fromiter((get(i, -1) for i, _ in pairs), dtype=np.int64, count=len(pairs))
        w = np.fromiter((x for _, x in pairs), dtype=np.float64, count=len(pairs))
        keep = idx >= 0
        return idx[keep], w[keep]
