"""Pretrained encoders run by onnxruntime: one module per modality, one small protocol.

Importing this package imports neither torch nor onnxruntime (``recstream.encoders.settings``
is read by every worker, also ranking-only ones): the names below load their modules on first
use. Only ``recstream.encoders.export`` / ``export_media`` need torch.
``recstream.encoders.pipeline.ContentEncoder`` turns content items into per-modality vectors."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recstream.encoders.base import Embeddings, Encoder
    from recstream.encoders.runtime import OnnxModel, create_session, session_provider
    from recstream.encoders.text import TextEncoder, item_text

_HOME = {
    "Embeddings": "base",
    "Encoder": "base",
    "OnnxModel": "runtime",
    "create_session": "runtime",
    "session_provider": "runtime",
    "TextEncoder": "text",
    "item_text": "text",
}

__all__ = [
    "Embeddings",
    "Encoder",
    "OnnxModel",
    "TextEncoder",
    "create_session",
    "item_text",
    "session_provider",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"recstream.encoders.{home}"), name)
