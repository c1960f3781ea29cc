"""Candidate retrieval from Qdrant + ranking, for one user. The async part of ranking/.

Sources: items similar to the user's interest (one vector query per modality), trending items
and fresh items, all fetched in one Qdrant batch request with the user's exclusions applied
by Qdrant itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from ranking.ranker import RankedItem, RankParams, interest_units, rank
from ranking.state import UserState
from ranking.store import ItemStore, StoredItem


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Recommender:
    def __init__(
        self,
        store: ItemStore,
        params: RankParams,
        *,
        candidate_factor: int = 4,
        clock: Callable[[], int] = now_ms,
    ):
        self.store = store
        self.params = params
        self.candidate_factor = candidate_factor
        self.clock = clock

    async def recommend(
        self,
        state: UserState,
        k: int,
        *,
        anchors: Sequence[StoredItem] = (),
        now: int | None = None,
    ) -> list[RankedItem]:
        """Top-k items for the user, never one they interacted with, disliked, or that is not
        (or no longer) in the catalog. ``anchors``: the user's recently liked items, with
        vectors, used to explain similarity ("because you liked ...")."""
        exclude = state.excluded()
        candidates = await self.store.candidates(
            interest_units(state.interest), exclude=exclude, limit=k * self.candidate_factor
        )
        return rank(
            candidates=candidates,
            interest=state.interest,
            exclude=exclude,
            anchors=anchors,
            k=k,
            now_ms=self.clock() if now is None else now,
            params=self.params,
        )
