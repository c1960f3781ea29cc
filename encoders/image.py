"""Image encoder: EfficientNet-Lite0 (ImageNet, 1280-d) run by onnxruntime; Pillow + numpy
preprocessing, no torch.

Preprocessing (the EfficientNet-Lite recipe): decode, RGB, resize the short side to 256
(bilinear), centre-crop 224x224, uint8 NHWC. The exported graph does the rest: ``(x - 127) /
128``, NCHW, the convolutional trunk, global average pooling and L2 normalisation. Feeding
uint8 keeps the per-image numpy work to a crop and the batch four times smaller than float.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

import numpy as np
from PIL import Image, UnidentifiedImageError

from recstream.encoders.base import Embeddings, empty_embeddings
from recstream.encoders.model_cache import ensure_model
from recstream.encoders.runtime import Device, OnnxEncoder

IMAGE_MODEL_ID = "efficientnet-lite0 (ImageNet), global average pool"
SIZE = 224
RESIZE = 256
# Decompression-bomb guard: Pillow's own limit is ~179 Mpx; a thumbnail source above 64 Mpx
# is not a media item we want to spend a second of CPU decoding.
MAX_PIXELS = 64_000_000
MAX_RUN = 64  # images per session run
# JPEGs are decoded at 1/2, 1/4 or 1/8 scale (in the DCT domain) only down to 1.5x the resize
# target, so the bilinear filter still does the last step. Decoding right down to 256 let
# libjpeg do the whole reduction of a 512x512 photo, and its vector moved to cosine 0.975 from
# a full decode's; with 384, 31 of 32 test JPEGs (scikit-image photos, 300 px to 7000 px) stay
# >= 0.998 and the worst is 0.988, at the same cost on the benchmark's photos.
DRAFT_MIN = RESIZE * 3 // 2

# What encode() accepts: encoded bytes (JPEG, PNG, WebP, GIF...), a Pillow image, or an
# H x W x 3 uint8 RGB array (a decoded video frame).
ImageInput: TypeAlias = bytes | Image.Image | np.ndarray


class ImageDecodeError(ValueError):
    """The bytes are not an image Pillow can decode (the message says why)."""


def decode_image(data: bytes) -> Image.Image:
    """Decode image bytes to an RGB Pillow image, shrinking JPEGs while decoding.

    Raises ImageDecodeError with a sentence for corrupt, truncated, unknown or oversized input.
    """
    try:
        img: Image.Image = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise ImageDecodeError(f"image is {width}x{height}, over {MAX_PIXELS} pixels")
        # JPEG can decode at 1/2, 1/4, 1/8 scale directly: most of the decode cost saved.
        img.draft("RGB", (DRAFT_MIN, DRAFT_MIN))
        img.load()
        if img.mode != "RGB":
            img = img.convert("RGBA").convert("RGB") if "A" in img.mode else img.convert("RGB")
        return img
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not an image: unknown or corrupt format") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"not a decodable image: {exc}") from exc


def preprocess(image: ImageInput) -> np.ndarray:
    """One input -> uint8 [224, 224, 3]: short side to 256, centre crop."""
    if isinstance(image, bytes | bytearray | memoryview):
        image = decode_image(bytes(image))
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"array images must be uint8 [H, W, 3], not {image.dtype}{image.shape}"
            )
        image = Image.fromarray(image, "RGB")
    elif image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError("image has no pixels")
    scale = RESIZE / min(width, height)
    new_w, new_h = max(SIZE, round(width * scale)), max(SIZE, round(height * scale))
    left, top = (new_w - SIZE) // 2, (new_h - SIZE) // 2
    # Resize-then-crop, computed for the crop only: ``box`` is the crop's area in source pixels,
    # so Pillow resamples 224x224 output pixels instead of the whole short-side-256 picture
    # (about half the resize cost) with the same filter positions and weights (pixels equal to
    # the full resize's crop, a few levels apart where reducing_gap pre-shrinks a big picture).
    # reducing_gap: Pillow first shrinks by an integer factor (cheap box filter), then resamples.
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + SIZE) * sx, (top + SIZE) * sy)
    crop = image.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)
    return np.asarray(crop, dtype=np.uint8)


class ImageEncoder(OnnxEncoder):
    """``Encoder[ImageInput]``: images -> float32 [n, 1280], unit rows.

    ``model_dir`` is the model cache root; the model is exported there on first use (in a
    subprocess). A batch is preprocessed, then encoded in one session run. Raises
    ImageDecodeError for an undecodable input: callers that must not fail a whole batch
    preprocess each item first (``preprocess``) and pass the arrays (``encode_pixels``).
    """

    modality = "image"
    model_id = IMAGE_MODEL_ID

    def __init__(
        self,
        model_dir: Path,
        device: Device = "auto",
        intra_op_threads: int = 0,
        int8: bool = False,
        fp16: bool = True,
        spin: bool = False,
    ) -> None:
        export_dir = ensure_model("image", Path(model_dir))
        self._open(export_dir, device, intra_op_threads, int8=int8, fp16=fp16, spin=spin)

    @classmethod
    def from_export_dir(
        cls, export_dir: Path, device: Device = "cpu", intra_op_threads: int = 0, int8: bool = False
    ) -> ImageEncoder:
        """Open an export directory as is (the exporter checks a fresh export with this)."""
        self = cls.__new__(cls)
        self._open(Path(export_dir), device, intra_op_threads, int8=int8)
        return self

    def encode(self, inputs: Sequence[ImageInput]) -> Embeddings:
        if isinstance(inputs, bytes | np.ndarray | Image.Image):
            raise TypeError("encode() takes a sequence of images, not a single image")
        if len(inputs) == 0:
            return empty_embeddings(self.dim)
        return self.encode_pixels(np.stack([preprocess(x) for x in inputs]))

    def encode_pixels(self, pixels: np.ndarray) -> Embeddings:
        """Preprocessed uint8 [n, 224, 224, 3] -> float32 [n, 1280]; session runs of at most
        MAX_RUN images, which bounds activation memory (~1.6 MB per image in the first layers)
        while a video's frames and a batch's images still share runs."""
        if len(pixels) == 0:
            return empty_embeddings(self.dim)
        return np.concatenate(
            [
                self._model.run({"pixels": np.ascontiguousarray(pixels[i : i + MAX_RUN], np.uint8)})
                for i in range(0, len(pixels), MAX_RUN)
            ]
        )

    def __repr__(self) -> str:
        return f"ImageEncoder({self.export_dir}, {self.variant} on {self.provider}, dim={self.dim})"
