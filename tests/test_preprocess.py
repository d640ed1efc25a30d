"""Decoding and preprocessing on tiny generated images and the real photos in data/."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from imgserve.serving.preprocess import ImageRejected, Preprocessing, open_image, preprocess
from tests.helpers import DATA, ROOT, image_bytes

PREP = Preprocessing(resize=32, crop=32)


def centre(arr: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(v) for v in arr[:, arr.shape[1] // 2, arr.shape[2] // 2])


def test_output_is_uint8_chw_of_the_crop_size():
    out = preprocess(image_bytes(size=(300, 200)), Preprocessing(resize=64, crop=56))
    assert out.dtype == np.uint8 and out.shape == (3, 56, 56)
    assert centre(out) == (255, 0, 0)


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("RGBA", (0, 0, 255, 0), (255, 255, 255)),  # fully transparent -> white, not the hidden blue
        ("RGBA", (0, 0, 255, 255), (0, 0, 255)),
        ("LA", (0, 0), (255, 255, 255)),
        ("L", 128, (128, 128, 128)),
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),
    ],
)
def test_modes_become_rgb(mode, colour, expected):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = preprocess(image_bytes(colour, mode=mode, fmt=fmt), PREP)
    assert np.allclose(centre(out), expected, atol=3)


def test_palette_with_transparency_becomes_white_where_transparent():
    img = Image.new("P", (40, 40), 1)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=1)
    assert centre(preprocess(buf.getvalue(), PREP)) == (255, 255, 255)


def test_16_bit_png_keeps_its_range():
    arr = np.full((40, 40), 32768, dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode.startswith("I")
    assert np.allclose(centre(preprocess(buf.getvalue(), PREP)), (127, 127, 127), atol=1)


PEAK_MEMORY = """
import sys
from imgserve.serving.preprocess import Preprocessing, preprocess

def kb(field):
    return int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith(field)))

data = sys.stdin.buffer.read()
before = kb("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak (VmHWM) starts again from here
preprocess(data, Preprocessing(resize=256, crop=224))
print(kb("VmHWM:") - before)
"""


def decoding_peak_kb(data: bytes) -> int:
    """The most memory decoding one upload took, in a fresh process (kB above what it held before)."""
    done = subprocess.run([sys.executable, "-c", PEAK_MEMORY], input=data, capture_output=True, check=True, cwd=ROOT)
    return int(done.stdout)


def test_transparent_and_16_bit_uploads_cost_about_what_an_rgb_one_does():
    """A careless or hostile client's 16 MP RGBA or 16-bit PNG (a few kB of zeros) takes at most 2.5x
    the memory an RGB photo of that size does to decode (it took 5x: four full-size RGBA copies)."""
    side = 4000
    uploads = {
        "RGB": Image.new("RGB", (side, side), (10, 200, 30)),
        "RGBA": Image.new("RGBA", (side, side), (10, 200, 30, 128)),
        "LA": Image.new("LA", (side, side), (100, 128)),
        "16-bit gray": Image.fromarray(np.full((side, side), 300, np.uint16)),
    }
    peaks = {}
    for mode, img in uploads.items():
        buf = io.BytesIO()
        img.save(buf, "PNG", compress_level=1)
        peaks[mode] = decoding_peak_kb(buf.getvalue())
    rgb = peaks.pop("RGB")
    assert rgb > side * side * 3 // 1024, "the RGB photo was not decoded at full size"
    assert all(peak <= 2.5 * rgb for peak in peaks.values()), {"RGB": rgb, **peaks}


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (40, 40), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert np.allclose(centre(preprocess(buf.getvalue(), PREP)), (255, 0, 0), atol=3)


def test_exif_rotated_photo_equals_the_upright_one():
    upright = Image.open(DATA / "cat.jpg")
    # Stored turned on its side, with EXIF orientation 6 ("rotate 90 CW to view").
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf_rot, buf_up = io.BytesIO(), io.BytesIO()
    sideways.save(buf_rot, "PNG", exif=exif)
    upright.save(buf_up, "PNG")
    prep = Preprocessing()
    assert np.array_equal(preprocess(buf_rot.getvalue(), prep), preprocess(buf_up.getvalue(), prep))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_jpeg_decoded_at_reduced_scale_is_resized_as_the_full_photo_in_every_orientation(orientation):
    """384 x 303 at 1/2 scale is 192 x 151.5 pixels, decoded as 192 x 152: the last row is half photo. The
    crop follows the photo's own part of the reduced image, wherever the EXIF orientation turns it."""
    import skimage.data
    from torchvision import transforms

    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(skimage.data.coins()).save(buf, "JPEG", quality=90, exif=exif)
    prep = Preprocessing(resize=64, crop=64, channels=1, mean=(0.5,), std=(0.5,))
    textbook = transforms.Compose([transforms.Resize(64), transforms.CenterCrop(64), transforms.PILToTensor()])
    full = ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue())))
    expected = textbook(full.convert("L")).numpy().astype(np.int16)
    got = preprocess(buf.getvalue(), prep).astype(np.int16)
    assert np.abs(got - expected).mean() < 1.0 and np.abs(got - expected).max() <= 16


@pytest.mark.parametrize(("resize", "crop"), [(28, 32), (256, (300, 240)), ((20, 30), (40, 24))])
def test_a_crop_larger_than_the_resized_photo_is_padded_with_black_as_torchvision_pads(resize, crop):
    from torchvision import transforms

    buf = io.BytesIO()
    Image.open(DATA / "coffee.jpg").save(buf, "PNG")  # no JPEG draft decoding: the same pixels exactly
    textbook = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop), transforms.PILToTensor()])
    expected = textbook(Image.open(DATA / "coffee.jpg").convert("RGB")).numpy()
    got = preprocess(buf.getvalue(), Preprocessing(resize=resize, crop=crop))
    assert got.shape == expected.shape and np.array_equal(got, expected)
    assert (got[:, 0] == 0).all() or (got[:, :, 0] == 0).all()  # a black border, where torchvision pads


@pytest.mark.parametrize("photo", ["cat.jpg", "coffee.jpg", "rocket.jpg"])
def test_a_small_models_pixels_are_those_of_the_full_photo(photo):
    """A 28 px model's JPEGs are still decoded at reduced scale, but not below 512 a side, where
    libjpeg's reduced decode (no antialiasing filter) strays from the full photo's pixels."""
    from torchvision import transforms

    data = (DATA / photo).read_bytes()
    textbook = transforms.Compose([transforms.Resize(28), transforms.CenterCrop(28), transforms.PILToTensor()])
    expected = textbook(Image.open(io.BytesIO(data)).convert("L")).numpy().astype(np.int16)
    got = preprocess(data, Preprocessing(resize=28, crop=28, mean=(0.5,), std=(0.5,), channels=1)).astype(np.int16)
    assert np.abs(got - expected).mean() < 0.1 and np.abs(got - expected).max() <= 2


def test_one_pixel_image_is_accepted():
    assert preprocess(image_bytes(size=(1, 1)), PREP).shape == (3, 32, 32)


def test_a_long_thin_strip_costs_no_more_than_its_crop():
    out = preprocess(image_bytes(size=(20000, 2)), Preprocessing())
    assert out.shape == (3, 224, 224)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"hello, this is text\n" * 10, "not a supported image"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "not a supported image"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "not a supported image"),
    ],
)
def test_non_images_are_rejected_with_a_reason(data, message):
    with pytest.raises(ImageRejected, match=message) as e:
        preprocess(data, PREP)
    assert e.value.status == 400


def test_truncated_jpeg_is_rejected():
    data = (DATA / "cat.jpg").read_bytes()
    with pytest.raises(ImageRejected, match="truncated or corrupt"):
        preprocess(data[: len(data) // 2], PREP)


def test_decompression_bomb_is_refused_from_the_header():
    # 2000 x 2000 of one colour compresses to a few kB; the limit refuses it before decoding.
    data = image_bytes(size=(2000, 2000), fmt="PNG")
    assert len(data) < 50_000
    with pytest.raises(ImageRejected, match="too large: 2000x2000") as e:
        open_image(data, max_pixels=1_000_000)
    assert e.value.status == 413
    assert open_image(data, max_pixels=4_000_000).size == (2000, 2000)  # exactly at the limit: fine


def test_matches_the_textbook_torchvision_pipeline_on_a_real_photo():
    """Same recipe as Resize(256) + CenterCrop(224) on the full decode, up to resampling noise."""
    from torchvision import transforms

    prep = Preprocessing()
    data = (DATA / "coffee.jpg").read_bytes()
    textbook = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()])
    expected = textbook(Image.open(io.BytesIO(data)).convert("RGB")).numpy().astype(np.int16)
    got = preprocess(data, prep).astype(np.int16)
    assert np.abs(got - expected).mean() < 2.0


@pytest.mark.parametrize(
    "bad",
    [{"crop": 0, "resize": 256}, {"interpolation": "magic"}, {"std": (0.0, 1.0, 1.0)}],
)
def test_invalid_preprocessing_is_refused(bad):
    with pytest.raises(ValueError):
        Preprocessing(**bad)


def test_preprocessing_round_trips_through_metadata():
    prep = Preprocessing(resize=300, crop=288, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bicubic")
    assert Preprocessing.from_dict(prep.to_dict()) == prep


def test_a_gray_model_gets_one_channel_as_torchvisions_grayscale():
    data = image_bytes((200, 100, 50), size=(60, 40))
    out = preprocess(data, Preprocessing(resize=32, crop=32, mean=(0.5,), std=(0.5,), channels=1))
    expected = Image.new("RGB", (1, 1), (200, 100, 50)).convert("L").getpixel((0, 0))  # Grayscale() is Pillow's "L"
    assert out.shape == (1, 32, 32) and centre(np.repeat(out, 3, 0)) == (expected,) * 3
    three = preprocess(data, Preprocessing(resize=32, crop=32, grayscale=True))  # Grayscale(num_output_channels=3)
    assert three.shape == (3, 32, 32) and centre(three) == (expected,) * 3


def test_an_exact_resize_squeezes_and_a_crop_may_be_oblong():
    out = preprocess(image_bytes(size=(300, 100)), Preprocessing(resize=(40, 50), crop=(30, 20)))
    assert out.shape == (3, 30, 20) and centre(out) == (255, 0, 0)


def test_entries_stored_before_channels_existed_read_as_rgb():
    old = {"resize": 256, "crop": 224, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}
    prep = Preprocessing.from_dict(old)
    assert (prep.channels, prep.grayscale, prep.input_size) == (3, False, (224, 224))


@pytest.mark.parametrize(
    "bad",
    [{"channels": 2, "mean": (0, 0), "std": (1, 1)}, {"channels": 1}, {"resize": (100, 0), "crop": (60, 60)}],
)
def test_channels_and_sizes_that_cannot_be_are_refused(bad):
    with pytest.raises(ValueError):
        Preprocessing(**bad)
