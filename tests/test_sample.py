"""Interleaved samples: decoding, RGB conversion, limits that name the field."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from model.sample import Sample, SampleError, SampleLimits, decode_image
from tests.conftest import make_image, png_bytes


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_build_from_pil_bytes_and_text_keeps_order():
    img = make_image(1)
    s = Sample.build(["caption", img, png_bytes(make_image(2)), "end"])
    assert s.modalities == ["text", "image", "image", "text"]
    assert all(im.mode == "RGB" for im in s.images)


def test_from_dict_base64_and_data_url():
    raw = png_bytes(make_image(3))
    s = Sample.from_dict({"slices": [
        {"type": "image", "base64": b64(raw)},
        {"type": "image", "base64": "data:image/png;base64," + b64(raw)},
        {"type": "text", "text": "hi"},
    ], "id": "d1", "metadata": {"k": 1}})
    assert s.id == "d1" and s.metadata == {"k": 1}
    assert s.images[0].tobytes() == s.images[1].tobytes()


@pytest.mark.parametrize("mode", ["CMYK", "P", "RGBA", "LA", "L", "I;16", "1"])
def test_modes_convert_to_rgb(mode):
    img = make_image(4).convert("RGB")
    if mode == "I;16":
        img = Image.new("I;16", (10, 10))
        img.putpixel((1, 1), 40000)
    else:
        img = img.convert(mode)
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    out = decode_image(png_bytes(img, fmt), "x")
    assert out.mode == "RGB"
    if mode == "I;16":
        assert out.getpixel((1, 1)) == (255, 255, 255)


def test_animated_gif_takes_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    img = decode_image(buf.getvalue(), "x")
    r, g, _ = img.getpixel((0, 0))
    assert r > 200 and g < 50


@pytest.mark.parametrize(
    "data,field,message",
    [
        ({"slices": []}, "sample.slices", "at least one slice"),
        ({"slices": "x"}, "sample.slices", "must be a list"),
        ({"slices": [{"type": "video"}]}, "sample.slices[0].type", "must be 'text' or 'image'"),
        ({"slices": [{"type": "text", "text": 3}]}, "sample.slices[0].text", "must be a string"),
        ({"slices": [{"type": "text", "text": "a\x00b"}]}, "sample.slices[0].text", "NUL"),
        ({"slices": [{"type": "text", "text": "   "}]}, "sample.slices[0].text", "empty"),
        ({"slices": [{"type": "image", "base64": "!!notb64"}]}, "sample.slices[0].base64", "invalid base64"),
        ({"slices": [{"type": "image", "path": "../etc/passwd"}]}, "sample.slices[0].path", "not allowed"),
        ({"slices": [{"type": "image", "url": "file:///etc/passwd"}]}, "sample.slices[0].url", "not allowed"),
        ({"slices": [{"type": "image"}]}, "sample.slices[0]", "exactly one of"),
        ({"slices": [{"type": "text", "text": "a", "extra": 1}]}, "sample.slices[0]", "unknown fields ['extra']"),
        ({"slices": [{"type": "text", "text": "a"}], "bogus": 1}, "sample", "unknown fields ['bogus']"),
    ],
)
def test_schema_errors_name_the_field(data, field, message):
    with pytest.raises(SampleError) as e:
        Sample.from_dict(data)
    assert e.value.field == field
    assert message in e.value.message


def test_limits_raise_never_truncate():
    limits = SampleLimits(max_slices=3, max_text_chars=10, max_image_pixels=100)
    with pytest.raises(SampleError, match="4 slices exceed the limit of 3"):
        Sample.build(["a", "b", "c", "d"], limits=limits)
    with pytest.raises(SampleError, match="11 characters exceed the limit of 10"):
        Sample.build(["x" * 11], limits=limits)
    with pytest.raises(SampleError, match="exceeds the limit of 100"):
        Sample.build([png_bytes(make_image(5, (20, 20)))], limits=limits)
    with pytest.raises(SampleError, match="10000 slices exceed"):
        Sample.from_dict({"slices": [{"type": "text", "text": "a"}] * 10_000})


def test_decompression_bomb_refused_before_decoding():
    # a 20000x20000 PNG compresses to a few hundred KB; its header alone is refused
    bomb = png_bytes(Image.new("L", (20000, 20000)), optimize=True)
    with pytest.raises(SampleError, match="decompression bomb"):
        decode_image(bomb, "img")
    # above our limit (16.7 Mpx by default) but below Pillow's own: our check says so
    big = png_bytes(Image.new("L", (5000, 5000)), optimize=True)
    with pytest.raises(SampleError, match="5000x5000 pixels exceeds the limit"):
        decode_image(big, "img")


def test_truncated_and_unknown_images():
    raw = png_bytes(make_image(6))
    with pytest.raises(SampleError, match="cannot decode image"):
        decode_image(raw[: len(raw) // 2], "img")
    with pytest.raises(SampleError, match="cannot decode image"):
        decode_image(b"definitely not an image", "img")
    with pytest.raises(SampleError, match="empty image"):
        decode_image(b"", "img")
    limits = SampleLimits(image_formats=("PNG",))
    with pytest.raises(SampleError, match="format JPEG not accepted"):
        decode_image(png_bytes(make_image(7), "JPEG"), "img", limits)


def test_content_hash_depends_on_content_only():
    a = Sample.build(["same", make_image(8)])
    b = Sample.build(["same", png_bytes(make_image(8))])
    assert [s.content_hash() for s in a.slices] == [s.content_hash() for s in b.slices]
    assert a.slices[0].content_hash() != Sample.build(["other"]).slices[0].content_hash()


def test_round_trip_to_dict():
    s = Sample.build(["t", make_image(9)], id="x", metadata={"a": "b"})
    back = Sample.from_dict(s.to_dict())
    assert back.id == "x" and back.metadata == {"a": "b"}
    assert back.images[0].tobytes() == s.images[0].tobytes()
