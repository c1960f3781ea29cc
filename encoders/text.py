"""Text encoder: all-MiniLM-L6-v2 (384-d) run by onnxruntime, tokenised by ``tokenizers``.

Nothing here imports torch or transformers: the exported graph already does mean pooling and
L2 normalisation, and the fast tokenizer is the same one sentence-transformers uses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from recstream.encoders.base import Embeddings, empty_embeddings
from recstream.encoders.model_cache import TOKENIZER_FILE, ensure_text_model
from recstream.encoders.runtime import Device, OnnxEncoder

TEXT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
# BERT's position table has 512 rows; longer inputs cannot be encoded at all.
MAX_POSITIONS = 512
# A batch is cut into runs of texts of similar length (sorted by token count) so that short
# titles are not padded to the longest description: attention and every MatMul cost grow
# with the padded length. A run ends when padding would exceed this fraction of its tokens.
MAX_PADDING_FRACTION = 0.25
# A run also ends before its padded size (rows x longest) passes this many tokens: a run's
# activations then stay within this CPU's per-core L2 (1 MiB here; the FFN's are 1536 floats
# a token). Measured single-thread, 32 catalog texts of 46 tokens: int8 7.4 -> 5.2 ms CPU per
# item, fp32 17.6 -> 13.1; batches of 8 unchanged.
MAX_RUN_TOKENS = 512


class TextEncoder(OnnxEncoder):
    """``Encoder[str]``: texts -> float32 [n, 384], unit rows.

    ``model_dir`` is the model cache root (``EncoderSettings.model_dir``); the model is exported
    there on first use (in a subprocess, see ``recstream.encoders.model_cache.ensure_text_model``).
    Inputs longer than ``max_tokens`` tokens are truncated. A batch is sorted by length and run in
    padded runs of texts of similar length, at most MAX_RUN_TOKENS each; padding is masked, so
    a text's vector does not depend on its batch (fp32).
    ``int8`` (CPU only): the dynamically quantised file, about 2.5x cheaper on this project's
    2-core CPU; its vectors differ slightly from fp32 and a little with batch composition
    (parity recorded in export.json). ``fp16`` (CUDA only): a float16 copy of the model.
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
        int8: bool = False,
        fp16: bool = True,
        spin: bool = False,
    ) -> None:
        export_dir = ensure_text_model(Path(model_dir))
        self._load(export_dir, device, intra_op_threads, max_tokens, int8, fp16, spin)

    @classmethod
    def from_export_dir(
        cls,
        export_dir: Path,
        device: Device = "auto",
        intra_op_threads: int = 0,
        max_tokens: int = 128,
        int8: bool = False,
    ) -> TextEncoder:
        """Open an export directory as is (model.onnx + tokenizer.json), exporting nothing.

        The exporter uses this to check a fresh export before it is moved into place.
        """
        self = cls.__new__(cls)
        self._load(Path(export_dir), device, intra_op_threads, max_tokens, int8, False, False)
        return self

    def _load(
        self,
        export_dir: Path,
        device: Device,
        intra_op_threads: int,
        max_tokens: int,
        int8: bool,
        fp16: bool,
        spin: bool,
    ) -> None:
        if not 2 <= max_tokens <= MAX_POSITIONS:  # [CLS] and [SEP] take two
            raise ValueError(f"max_tokens must be in [2, {MAX_POSITIONS}], not {max_tokens}")
        self.max_tokens = max_tokens

        tokenizer = Tokenizer.from_file(str(export_dir / TOKENIZER_FILE))
        # The shipped tokenizer.json pads every input to a fixed 128, which costs 5x the compute
        # of a 25-token title. encode() pads each length-sorted run to its own longest text.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_tokens)
        self._tokenizer = tokenizer

        self._open(export_dir, device, intra_op_threads, int8=int8, fp16=fp16, spin=spin)

    @property
    def session(self) -> ort.InferenceSession:
        return self._model.session

    def encode(self, inputs: Sequence[str]) -> Embeddings:
        # A lone str is a Sequence[str] too: encoding it would embed each character.
        if isinstance(inputs, str):
            raise TypeError("encode() takes a sequence of texts, not a single str")
        if len(inputs) == 0:
            return empty_embeddings(self.dim)
        # Unpadded token ids; each run below is padded to its own longest text.
        encodings = self._tokenizer.encode_batch(list(inputs))
        lengths = np.array([len(e.ids) for e in encodings])
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(inputs), self.dim), dtype=np.float32)
        for run in _length_runs(lengths[order]):
            rows = order[run]
            width = int(lengths[rows].max())
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for i, row in enumerate(rows):
                n = int(lengths[row])
                ids[i, :n] = encodings[row].ids
                mask[i, :n] = 1
            out[rows] = self._model.run(
                # Single-segment inputs: token types all zeros (fed only if the graph has it).
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            )
        return out

    def __repr__(self) -> str:
        return (
            f"TextEncoder({self.export_dir}, provider={self.provider}, dim={self.dim}, "
            f"max_tokens={self.max_tokens})"
        )


def _length_runs(sorted_lengths: np.ndarray) -> list[slice]:
    """Cut ascending lengths into runs whose padding stays under MAX_PADDING_FRACTION and whose
    padded size stays within MAX_RUN_TOKENS (a longer text runs alone)."""
    runs: list[slice] = []
    start = 0
    for end in range(1, len(sorted_lengths) + 1):
        if end < len(sorted_lengths):
            width = int(sorted_lengths[end])
            padded = width * (end + 1 - start)
            tokens = int(sorted_lengths[start : end + 1].sum())
            if padded - tokens <= MAX_PADDING_FRACTION * tokens and padded <= MAX_RUN_TOKENS:
                continue
        runs.append(slice(start, end))
        start = end
    return runs


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
