"""Fixtures for the unit tests: event weights, and the real exported text encoder (CPU)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The service's default weights (streams.settings.RankingSettings), spelled out so a change of
# defaults does not silently change what these tests check.
WEIGHTS = {
    "view": 0.5,
    "click": 1.0,
    "like": 2.0,
    "share": 3.0,
    "complete": 2.0,
    "skip": -0.5,
    "dislike": -2.0,
}


@pytest.fixture
def weights() -> dict[str, float]:
    return dict(WEIGHTS)


@pytest.fixture(scope="session")
def text_encoder():  # -> encoders.text.TextEncoder
    """The exported MiniLM model: env RECSTREAM_ENCODER_MODEL_DIR, else ~/.cache/recstream/models.

    Skips (rather than exporting, which needs torch and a minute) when it is not there.
    """
    from recstream.encoders.model_cache import EncoderUnavailableError
    from recstream.encoders.text import TextEncoder

    env = os.environ.get("RECSTREAM_ENCODER_MODEL_DIR")
    model_dir = Path(env) if env else Path.home() / ".cache" / "recstream" / "models"
    try:
        return TextEncoder(model_dir, device="cpu")
    except EncoderUnavailableError as exc:
        pytest.skip(f"text model not available: {exc}")
