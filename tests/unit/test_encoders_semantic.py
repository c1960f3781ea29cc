"""The encoders mean something, on real media: photos (scikit-image), speech (espeak-ng), tones
(sox), and a video written with PyAV from a photo and a recording. Also the ContentEncoder
pipeline end to end on those media, including the failures it must survive.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from recstream.encoders.pipeline import ContentEncoder
from recstream.streams.settings import EncoderSettings, MediaSettings
from tests.unit.media_samples import (
    audio_encoder,
    cosine,
    encode_image_file,
    image_encoder,
    load,
    model_root,
    photo,
    read_audio,
    sox_synth,
    speech,
    text_encoder,
    write_video,
)

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field")


def test_cropped_and_flipped_views_closer_than_other_photos() -> None:
    enc = image_encoder()
    originals = [photo(n) for n in PHOTOS]
    base = enc.encode(originals)
    for i, img in enumerate(originals):
        h, w = img.shape[:2]
        crop = img[h // 8 : h - h // 8, w // 10 : w - w // 5]  # off-centre 3/4 crop
        flip = img[:, ::-1]
        views = enc.encode([np.ascontiguousarray(crop), np.ascontiguousarray(flip)])
        others = max(float(base[i] @ base[j]) for j in range(len(originals)) if j != i)
        for view in views:
            assert float(base[i] @ view) > others, (PHOTOS[i], float(base[i] @ view), others)


def test_speech_closer_to_speech_than_to_tones(tmp_path: Path) -> None:
    enc = audio_encoder()
    speeches = [
        read_audio(speech(tmp_path, "The weather tomorrow will be sunny with a light breeze.")),
        read_audio(speech(tmp_path, "Please send me the report before the meeting on Friday.")),
        read_audio(speech(tmp_path, "Bonjour, je voudrais un café et un croissant.", voice="fr")),
    ]
    tones = [
        read_audio(sox_synth(tmp_path, "sine440", "sine", "440")),
        read_audio(sox_synth(tmp_path, "square220", "square", "220")),
        read_audio(sox_synth(tmp_path, "chord", "sine", "261.6", "sine", "329.6")),
    ]
    s = enc.encode(speeches)
    t = enc.encode(tones)
    for i in range(len(s)):
        to_speech = min(float(s[i] @ s[j]) for j in range(len(s)) if j != i)
        to_tones = max(float(s[i] @ v) for v in t)
        assert to_speech > to_tones, (i, to_speech, to_tones)


def test_audio_centring_spreads_unrelated_sounds(tmp_path: Path) -> None:
    """Raw aiSFX vectors are non-negative (unrelated sounds ~0.55 cosine); centred, they are
    not: a tone and speech must not look alike."""
    enc = audio_encoder()
    a, b = enc.encode(
        [
            read_audio(speech(tmp_path, "Turn left at the next junction.")),
            read_audio(sox_synth(tmp_path, "sine1k", "sine", "1000")),
        ]
    )
    assert float(a @ b) < 0.3


def test_multilingual_text_model_matches_translations() -> None:
    enc = load("recstream.encoders.text_use", "UseTextEncoder")
    en, de, other = enc.encode(
        [
            "The children are playing football in the park.",
            "Die Kinder spielen Fußball im Park.",
            "The central bank raised interest rates again.",
        ]
    )
    assert float(en @ de) > float(en @ other) + 0.2


# -- the pipeline on real media -------------------------------------------------------------


def _item(**fields: Any) -> SimpleNamespace:
    base = dict(title=None, description=None, tags=None)
    base.update(image_uri=None, video_uri=None, audio_uri=None)
    base.update(fields)
    return SimpleNamespace(**base)


@pytest.fixture
def pipeline(tmp_path: Path) -> Any:
    text_encoder(), image_encoder(), audio_encoder()  # skip early if a model is unavailable
    enc = ContentEncoder.from_settings(
        EncoderSettings(model_dir=model_root(), device="cpu", video_fps=2.0, video_max_frames=4),
        MediaSettings(file_roots=[tmp_path]),
    )
    yield enc
    enc.close()


def test_video_frames_and_sound_match_what_it_was_made_from(
    pipeline: ContentEncoder, tmp_path: Path
) -> None:
    cat = photo("chelsea")
    voice = read_audio(speech(tmp_path, "A small cat sleeps in the warm afternoon sun."))
    video = write_video(tmp_path / "cat.mp4", cat, voice, seconds=3.0)
    [out] = asyncio.run(pipeline.encode([_item(title="Cat nap", video_uri=video.as_uri())]))
    assert out.failures == []
    assert set(out.vectors) == {"text", "image", "audio"}
    image_ref, other = image_encoder().encode([cat, photo("coffee")])
    assert cosine(out.vectors["image"], image_ref) > 0.85
    assert cosine(out.vectors["image"], image_ref) > cosine(out.vectors["image"], other) + 0.2
    [sound_ref] = audio_encoder().encode([voice])
    assert cosine(out.vectors["audio"], sound_ref) > 0.85


def test_item_with_every_part_and_item_with_broken_parts(
    pipeline: ContentEncoder, tmp_path: Path
) -> None:
    (tmp_path / "rocket.jpg").write_bytes(encode_image_file(photo("rocket")))
    tone = sox_synth(tmp_path, "tone", "sine", "660")
    silent_video = write_video(tmp_path / "silent.mp4", photo("astronaut"), None, seconds=1.0)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole JPEG")
    png = base64.b64encode(encode_image_file(photo("coffee")[:64, :64], "PNG")).decode()
    items = [
        _item(
            title="Launch day",
            description="A rocket on the pad.",
            tags=["space"],
            image_uri=(tmp_path / "rocket.jpg").as_uri(),
            video_uri=silent_video.as_uri(),
            audio_uri=tone.as_uri(),
        ),
        _item(
            title="Broken media",
            image_uri=(tmp_path / "broken.jpg").as_uri(),
            video_uri=(tmp_path / "missing.mp4").as_uri(),
            audio_uri="file:///etc/hostname",
        ),
        _item(image_uri=f"data:image/png;base64,{png}"),
        _item(),
    ]
    full, broken, inline, empty = asyncio.run(pipeline.encode(items))

    assert set(full.vectors) == {"text", "image", "audio"}  # a silent video is not a failure
    assert full.failures == []
    for v, d in ((full.vectors["text"], 384), (full.vectors["image"], 1280)):
        assert v.shape == (d,) and v.dtype == np.float32
        assert abs(float(np.linalg.norm(v)) - 1) < 1e-5
    # The image vector combines the photo and the video: close to both, equal to neither.
    rocket, astronaut = image_encoder().encode([photo("rocket"), photo("astronaut")])
    assert 0.5 < cosine(full.vectors["image"], rocket) < 0.999
    assert 0.5 < cosine(full.vectors["image"], astronaut) < 0.999

    assert set(broken.vectors) == {"text"}
    reasons = dict(broken.failures)
    assert set(reasons) == {"image_uri", "video_uri", "audio_uri"}
    assert "not an image" in reasons["image_uri"] or "decodable" in reasons["image_uri"]
    assert "does not exist" in reasons["video_uri"]
    assert "outside the configured media roots" in reasons["audio_uri"]

    assert set(inline.vectors) == {"image"} and inline.failures == []
    assert empty.vectors == {} and empty.failures == []


def test_dims_follow_enabled_modalities(tmp_path: Path) -> None:
    text_encoder()
    enc = ContentEncoder.from_settings(
        EncoderSettings(model_dir=model_root(), device="cpu", modalities=["text"]),
        MediaSettings(),
    )
    try:
        assert enc.dims == {"text": 384}
        [out] = asyncio.run(enc.encode([_item(title="x", image_uri="file:///nowhere.jpg")]))
        assert set(out.vectors) == {"text"} and out.failures == []  # images are not wanted
    finally:
        enc.close()
