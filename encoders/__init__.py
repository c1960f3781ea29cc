"""Pretrained encoders run by onnxruntime: one module per modality, one small protocol.

Importing this package never imports torch; only ``encoders.export`` / ``export_media`` need it.
``encoders.pipeline.ContentEncoder`` turns content items into per-modality vectors.
"""

from encoders.base import Embeddings, Encoder
from encoders.runtime import OnnxModel, create_session, session_provider
from encoders.text import TextEncoder, item_text

__all__ = [
    "Embeddings",
    "Encoder",
    "OnnxModel",
    "TextEncoder",
    "create_session",
    "item_text",
    "session_provider",
]
