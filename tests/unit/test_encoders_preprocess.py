"""Image preprocessing shortcuts against the plain recipe they stand for: JPEG decoding at
reduced scale (``Image.draft``) against a full decode, and resizing only the centre crop against
resizing the whole picture and then cropping. Real photos (scikit-image)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from recstream.encoders.image import RESIZE, SIZE, decode_image, preprocess
from tests.unit.media_samples import encode_image_file, image_encoder, photo

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "colorwheel")


def _resize_then_crop(image: Image.Image) -> np.ndarray:
    """The recipe written out: short side to 256 (bilinear), then the centre 224x224."""
    width, height = image.size
    scale = RESIZE / min(width, height)
    new_w, new_h = max(SIZE, round(width * scale)), max(SIZE, round(height * scale))
    full = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - SIZE) // 2, (new_h - SIZE) // 2
    return np.asarray(full.crop((left, top, left + SIZE, top + SIZE)))


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("shape", [None, (300, 900), (700, 260), (224, 224)])
def test_crop_only_resize_equals_resize_then_crop(name: str, shape: tuple[int, int]) -> None:
    img = Image.fromarray(photo(name))
    if shape is not None:  # other aspect ratios and sizes (none shrinks 6x: no pre-shrink)
        img = img.resize(shape, Image.Resampling.BICUBIC)
    got = preprocess(img).astype(int)
    want = _resize_then_crop(img).astype(int)
    assert got.shape == (SIZE, SIZE, 3)
    assert np.abs(got - want).max() <= 1  # same filter taps; rounding of the box edges only


def test_reduced_scale_jpeg_decode_keeps_the_vectors() -> None:
    """Decoding the sample photos' JPEGs at reduced scale gives the vectors of a full decode."""
    enc = image_encoder()
    jpegs = [encode_image_file(photo(name)) for name in PHOTOS]
    drafted = enc.encode(jpegs)
    full = enc.encode([Image.open(io.BytesIO(j)).convert("RGB") for j in jpegs])
    cosines = (drafted * full).sum(axis=1)
    assert cosines.min() >= 0.99, dict(zip(PHOTOS, cosines.round(4), strict=True))
    # The big ones really were decoded at reduced scale, and not below 1.5x the resize target.
    big = Image.open(io.BytesIO(encode_image_file(photo("retina"))))  # 1411 x 1411
    assert min(decode_image(encode_image_file(photo("retina"))).size) < min(big.size)
    assert min(decode_image(encode_image_file(photo("retina"))).size) >= RESIZE * 3 // 2
