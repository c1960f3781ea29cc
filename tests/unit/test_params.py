"""The pure parameter objects' own defaults are the settings' defaults: code that builds them
directly (tests, a small deployment using ranking/ as a library) ranks and learns as the
worker does with no settings changed."""

from __future__ import annotations

import dataclasses

from recstream.ranking.collab import CoocParams
from recstream.ranking.features import ScoreParams
from recstream.ranking.params import cooc_params, score_params
from recstream.streams.settings import RankingSettings


def test_cooc_params_defaults_are_the_settings_defaults() -> None:
    assert CoocParams() == cooc_params(RankingSettings())


def test_score_params_defaults_are_the_settings_defaults() -> None:
    built = score_params(RankingSettings())
    defaults = {
        f.name for f in dataclasses.fields(ScoreParams) if f.default is not dataclasses.MISSING
    }
    for name in defaults:
        assert getattr(built, name) == getattr(ScoreParams, name), name
