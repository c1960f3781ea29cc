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

from ranking import seen as bloom
from ranking.state import SEEN_FILTER_BITS


@dataclass
class CandidateSet:
    ids: list[str]
    vectors: dict[str, np.ndarray]  # modality -> float32[n, d], unit rows (zeros where missing)
    present: dict[str, np.ndarray]  # modality -> bool[n]
    trend: np.ndarray  # float64[n], log-space decayed popularity (ranking.store)
    published_at: np.ndarray  # float64[n], epoch ms, nan when unknown
    cf_count: np.ndarray  # float64[n], interactions (ranking.collab.count_after)
    titles: list[str | None] = field(default_factory=list)
    tags: list[tuple[str, ...]] = field(default_factory=list)
    seen_bits: int = SEEN_FILTER_BITS
    # The candidates' own co-occurrence rows (published ``cf_top``), flattened: entry e is
    # neighbour of row cf_owner[e] with weight cf_w[e] and Bloom positions cf_pos[e]; they give
    # the "history" feature (how much of the row the user has already taken).
    cf_owner: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cf_w: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    cf_pos: np.ndarray = field(default_factory=lambda: np.zeros((0, bloom.N_HASHES), np.int64))
    index: dict[str, int] = field(init=False)
    seen_pos: np.ndarray = field(init=False)  # int64[n, k] Bloom positions
    # seed id -> neighbour_arrays of its row: the stream scores one set twice per event
    # (before and after the event), with the same seeds.
    neighbour_cache: dict[str, tuple[np.ndarray, np.ndarray]] = field(
        init=False, default_factory=dict
    )

    def __post_init__(self) -> None:
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
            mat = np.zeros((n, d), dtype=np.float32)
            got = [
                (r, v)
                for r, it in enumerate(rows)
                if (v := it.vectors.get(m)) is not None and len(v) == d
            ]
            if got:
                mat[[r for r, _ in got]] = np.stack([v for _, v in got])
            # One vectorised normalisation: this runs per request on the stream's hot path.
            norm = np.linalg.norm(mat, axis=1)
            has = norm > 1e-9
            mat[has] /= norm[has, None]
            vectors[m], present[m] = mat, has
        counts = cf_counts or {}
        # The candidates' own rows, already as Bloom positions (collab.pack_row/unpack_row).
        own = cf_rows or {}
        found = [
            (r, row) for r, i in enumerate(ids) if (row := own.get(i)) is not None and len(row[1])
        ]
        if found:
            lengths = [len(row[1]) for _, row in found]
            owner = np.repeat(np.asarray([r for r, _ in found], dtype=np.int64), lengths)
            pos = np.concatenate([row[0] for _, row in found])
            wts = np.concatenate([row[1] for _, row in found]).astype(np.float64)
        else:
            owner = np.zeros(0, np.int64)
            pos = np.zeros((0, bloom.N_HASHES), np.int64)
            wts = np.zeros(0, np.float64)
        published = [it.published_at for it in rows]
        return cls(
            ids=ids,
            vectors=vectors,
            present=present,
            trend=np.fromiter((it.trend for it in rows), dtype=np.float64, count=n),
            published_at=np.array(
                [np.nan if t is None else t for t in published], dtype=np.float64
            ),
            cf_count=np.fromiter((counts.get(i, 0.0) for i in ids), dtype=np.float64, count=n),
            titles=[it.title for it in rows],
            tags=[tuple(it.tags) for it in rows],
            seen_bits=seen_bits,
            cf_owner=owner,
            cf_w=wts,
            cf_pos=pos,
        )

    def history_sums(self, seen_filter: bytes) -> np.ndarray:
        """float64[n]: per candidate, the weights of its row's neighbours that are in the
        user's seen filter (false positives count too, ~2% at 700 items)."""
        hit = bloom.contains_many(seen_filter, self.cf_pos)
        return np.bincount(self.cf_owner[hit], weights=self.cf_w[hit], minlength=len(self))

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
