"""Pretrained encoders run by onnxruntime: one module per modality, one small protocol.

Importing this package never imports torch; only ``recstream.encoders.export`` / ``export_media``
need it. ``recstream.encoders.pipeline.ContentEncoder`` turns content items into per-modality
vectors."""

from recstream.encoders.base import Embeddings, Encoder
from recstream.encoders.runtime import OnnxModel, create_session, session_provider
from recstream.encoders.text import TextEncoder, item_text

__all__ = [
    "Embeddings",
    "Encoder",
    "OnnxModel",
    "TextEncoder",
    "create_session",
    "item_text",
    "session_provider",
]
