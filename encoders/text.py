"""Text encoder: all-MiniLM-L6-v2 (384-d) run by onnxruntime, tokenised by ``tokenizers``.

Nothing here imports torch or transformers: the exported graph already does mean pooling and
L2 normalisation, and the fast tokenizer is the same one sentence-transformers uses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
from tokenizers import Tokenizer

from encoders.base import Embeddings, empty_embeddings
from encoders.cache import (
    ONNX_FILE,
    TOKENIZER_FILE,
    ensure_text_model,
    read_export_info,
)
from encoders.runtime import Device, create_session, session_provider

TEXT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
# BERT's position table has 512 rows; longer inputs cannot be encoded at all.
MAX_POSITIONS = 512


class TextEncoder:
    """``Encoder[str]``: texts -> float32 [n, 384], unit rows.

    ``model_dir`` is the model cache root (``EncoderSettings.model_dir``); the model is exported
    there on first use (in a subprocess, see ``encoders.cache.ensure_text_model``). Inputs
    longer than ``max_tokens`` tokens are truncated; a batch is padded to its longest input.
    A batch is encoded in one session run, so the caller's micro-batch size bounds memory.
    Thread-safe: onnxruntime sessions and fast tokenizers may be shared across threads.
    """

    modality = "text"
    model_id = TEXT_MODEL_ID

    def __init__(
        self,
        model_dir: Path,
        device: Device = "auto",
        intra_op_threads: int = 0,
        max_tokens: int = 128,
    ) -> None:
        self._load(ensure_text_model(Path(model_dir)), device, intra_op_threads, max_tokens)

    @classmethod
    def from_export_dir(
        cls,
        export_dir: Path,
        device: Device = "auto",
        intra_op_threads: int = 0,
        max_tokens: int = 128,
    ) -> TextEncoder:
        """Open an export directory as is (model.onnx + tokenizer.json), exporting nothing.

        The exporter uses this to check a fresh export before it is moved into place.
        """
        self = cls.__new__(cls)
        self._load(Path(export_dir), device, intra_op_threads, max_tokens)
        return self

    def _load(
        self, export_dir: Path, device: Device, intra_op_threads: int, max_tokens: int
    ) -> None:
        if not 2 <= max_tokens <= MAX_POSITIONS:  # [CLS] and [SEP] take two
            raise ValueError(f"max_tokens must be in [2, {MAX_POSITIONS}], not {max_tokens}")
        self.export_dir = export_dir
        self.max_tokens = max_tokens
        self.info = read_export_info(export_dir) or {}

        tokenizer = Tokenizer.from_file(str(export_dir / TOKENIZER_FILE))
        # The shipped tokenizer.json pads every input to a fixed 128: padding to the longest in
        # the batch instead saves most of the compute on short texts (titles, tags).
        pad = tokenizer.padding or {}
        tokenizer.enable_padding(
            pad_id=int(pad.get("pad_id", 0)), pad_token=str(pad.get("pad_token", "[PAD]"))
        )
        tokenizer.enable_truncation(max_length=max_tokens)
        self._tokenizer = tokenizer

        self._session = create_session(export_dir / ONNX_FILE, device, intra_op_threads)
        self._input_names = [i.name for i in self._session.get_inputs()]
        self._output_name = self._session.get_outputs()[0].name
        self.dim = int(self._session.get_outputs()[0].shape[-1])

    @property
    def provider(self) -> str:
        """The onnxruntime execution provider really in use, e.g. "CPUExecutionProvider"."""
        return session_provider(self._session)

    @property
    def session(self) -> ort.InferenceSession:
        return self._session

    def encode(self, inputs: Sequence[str]) -> Embeddings:
        # A lone str is a Sequence[str] too: encoding it would embed each character.
        if isinstance(inputs, str):
            raise TypeError("encode() takes a sequence of texts, not a single str")
        if len(inputs) == 0:
            return empty_embeddings(self.dim)
        encodings = self._tokenizer.encode_batch(list(inputs))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            # Single-segment inputs: all zeros. Fed only if the graph declares it.
            "token_type_ids": np.zeros_like(ids),
        }
        (out,) = self._session.run(
            [self._output_name], {name: feeds[name] for name in self._input_names}
        )
        return np.ascontiguousarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        return (
            f"TextEncoder({self.export_dir}, provider={self.provider}, dim={self.dim}, "
            f"max_tokens={self.max_tokens})"
        )


_SENTENCE_END = re.compile(r"[.!?…:;]$")


def item_text(title: str | None, description: str | None, tags: Sequence[str] | None = None) -> str:
    """The text a content item is embedded from: "title. description. tags: a, b".

    Empty parts are left out; a part that already ends a sentence gets no extra full stop.
    Returns "" when there is nothing at all.
    """
    parts: list[str] = []
    for part in (title, description):
        text = " ".join((part or "").split())
        if text:
            parts.append(text if _SENTENCE_END.search(text) else text + ".")
    if isinstance(tags, str):  # a lone tag, not its characters
        tags = [tags]
    clean_tags = [" ".join(t.split()) for t in (tags or ()) if t and t.strip()]
    if clean_tags:
        parts.append("tags: " + ", ".join(clean_tags))
    return " ".join(parts)
