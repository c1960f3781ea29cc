"""The one contract every encoder keeps, run against each of them (real weights, CPU).

Shape [n, dim], dtype float32, unit rows, finite; the same input gives the same vector; a batch
gives the vectors its items give one at a time; an empty batch gives [0, dim].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from recstream.encoders.base import Encoder
from tests.unit.media_samples import encode_image_file, load, photo


@dataclass
class Case:
    name: str
    modality: str
    dim: int
    make: Callable[[], Any]
    inputs: Callable[[], Sequence[Any]]
    atol: float = 1e-5


def _texts() -> list[str]:
    return [
        "Miles Davis recorded Kind of Blue in 1959.",
        "ok",
        "",
        "La recette traditionnelle de la ratatouille provençale.",
        "A beginner's guide to Kubernetes operators, CRDs and reconciliation loops in Go, "
        "with examples of controllers that watch custom resources and converge cluster state.",
    ]


def _images() -> list[Any]:
    astronaut, coffee = photo("astronaut"), photo("coffee")
    return [
        encode_image_file(astronaut, "JPEG"),
        encode_image_file(photo("chelsea"), "PNG"),
        coffee,  # a decoded array, as video frames arrive
        encode_image_file(photo("camera"), "PNG"),  # greyscale
        astronaut[:100, :300],  # small and wide
    ]


def _clips() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    t = np.arange(int(44100 * 6.0)) / 44100
    return [
        np.sin(2 * np.pi * 440 * t[:22050]).astype(np.float32),  # 0.5 s: one padded block
        (0.3 * rng.standard_normal(len(t))).astype(np.float32),  # 6 s: two blocks
        np.sin(2 * np.pi * (200 + 500 * t) * t).astype(np.float32),
        np.zeros(44100, np.float32),  # silence
    ]


def _open(module: str, cls: str, **kwargs: Any) -> Callable[[], Any]:
    return lambda: load(module, cls, **kwargs)


CASES = [
    Case("text-minilm", "text", 384, _open("recstream.encoders.text", "TextEncoder"), _texts),
    Case("text-use", "text", 512, _open("recstream.encoders.text_use", "UseTextEncoder"), _texts),
    Case("image-effnet", "image", 1280, _open("recstream.encoders.image", "ImageEncoder"), _images),
    Case("audio-aisfx", "audio", 512, _open("recstream.encoders.audio", "AudioEncoder"), _clips),
    # Static int8 (fixed activation ranges): still batch-independent, unlike dynamic int8.
    Case(
        "audio-aisfx-int8",
        "audio",
        512,
        _open("recstream.encoders.audio", "AudioEncoder", int8=True),
        _clips,
        atol=1e-4,
    ),
]

_opened: dict[str, Any] = {}


@pytest.fixture(params=CASES, ids=[c.name for c in CASES], scope="module")
def case(request: pytest.FixtureRequest) -> tuple[Case, Any]:
    c: Case = request.param
    if c.name not in _opened:
        _opened[c.name] = c.make()
    return c, _opened[c.name]


def test_protocol_and_identity(case: tuple[Case, Any]) -> None:
    c, enc = case
    assert isinstance(enc, Encoder)
    assert enc.modality == c.modality
    assert enc.dim == c.dim
    assert isinstance(enc.model_id, str) and enc.model_id
    assert enc.provider == "CPUExecutionProvider"


def test_shape_dtype_unit_norm(case: tuple[Case, Any]) -> None:
    c, enc = case
    inputs = c.inputs()
    vectors = enc.encode(inputs)
    assert vectors.shape == (len(inputs), c.dim)
    assert vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float64), axis=1), 1.0, atol=1e-5)


def test_deterministic(case: tuple[Case, Any]) -> None:
    c, enc = case
    inputs = c.inputs()
    np.testing.assert_array_equal(enc.encode(inputs), enc.encode(inputs))


def test_batch_equals_one_at_a_time(case: tuple[Case, Any]) -> None:
    c, enc = case
    inputs = c.inputs()
    batch = enc.encode(inputs)
    singles = np.vstack([enc.encode([x]) for x in inputs])
    np.testing.assert_allclose(batch, singles, atol=c.atol)


def test_empty_batch(case: tuple[Case, Any]) -> None:
    c, enc = case
    empty = enc.encode([])
    assert empty.shape == (0, c.dim)
    assert empty.dtype == np.float32


def test_distinct_inputs_distinct_vectors(case: tuple[Case, Any]) -> None:
    c, enc = case
    vectors = enc.encode(c.inputs())
    sims = vectors @ vectors.T
    off_diagonal = sims[~np.eye(len(vectors), dtype=bool)]
    assert off_diagonal.max() < 0.999
