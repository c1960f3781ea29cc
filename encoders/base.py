"""The one contract every encoder keeps, whatever the modality.

An encoder turns a batch of inputs into float32 unit vectors, one row per input, so that a dot
product is a cosine similarity. Text takes ``str``; image and audio encoders will take their own
input types, hence the protocol is generic over the input type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeAlias, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

# float32 [n, dim], each row L2-normalised.
Embeddings: TypeAlias = npt.NDArray[np.float32]

InputT_contra = TypeVar("InputT_contra", contravariant=True)


@runtime_checkable
class Encoder(Protocol[InputT_contra]):
    """Batch encoder: ``encode(inputs) -> float32 [len(inputs), dim]`` with unit-norm rows.

    ``modality`` is "text" (later "image", "audio"): vectors from different modalities live in
    different spaces and must not be compared. ``model_id`` names the model so stored vectors
    can be traced to (and invalidated with) the model that made them. An empty batch gives an
    array of shape ``(0, dim)``.
    """

    @property
    def modality(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def model_id(self) -> str: ...

    def encode(self, inputs: Sequence[InputT_contra]) -> Embeddings: ...


def empty_embeddings(dim: int) -> Embeddings:
    """The result for an empty batch, shaped so callers can still ``vstack`` or index it."""
    return np.zeros((0, dim), dtype=np.float32)
