"""open_rgb: every image mode becomes upright 8-bit RGB; every bad file raises a one-line DataError."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFile

from transferkit.data.images import ImageReadError, open_rgb
from transferkit.errors import DataError

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def saved(img: Image.Image, path, **kwargs):
    img.save(path, **kwargs)
    return path


def assert_rgb(img: Image.Image, size: tuple[int, int]) -> None:
    assert img.mode == "RGB" and img.size == size


def test_rgb_is_returned_unchanged(tmp_path):
    img = open_rgb(saved(Image.new("RGB", (4, 3), (10, 20, 30)), tmp_path / "a.png"))
    assert_rgb(img, (4, 3))
    assert img.getpixel((3, 2)) == (10, 20, 30)


def test_decodes_given_bytes_instead_of_reading_the_file(tmp_path):
    path = saved(Image.new("RGB", (2, 2), RED), tmp_path / "a.png")
    assert open_rgb(path, path.read_bytes()).getpixel((0, 0)) == RED


def test_grayscale_and_bilevel(tmp_path):
    assert open_rgb(saved(Image.new("L", (3, 3), 100), tmp_path / "l.png")).getpixel((1, 1)) == (100, 100, 100)
    assert open_rgb(saved(Image.new("1", (3, 3), 1), tmp_path / "1.png")).getpixel((1, 1)) == WHITE


def test_palette(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([*RED, *BLUE])
    img.putpixel((1, 0), 1)
    out = open_rgb(saved(img, tmp_path / "p.png"))
    assert [out.getpixel((x, 0)) for x in range(2)] == [RED, BLUE]


def test_palette_transparency_becomes_white(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([*RED, *BLUE])
    img.putpixel((1, 0), 1)
    path = saved(img, tmp_path / "p.png", transparency=1)
    assert Image.open(path).info.get("transparency") == 1
    out = open_rgb(path)
    assert [out.getpixel((x, 0)) for x in range(2)] == [RED, WHITE]


def test_rgba_composited_over_white(tmp_path):
    img = Image.new("RGBA", (3, 1))
    img.putdata([(255, 0, 0, 255), (0, 0, 255, 0), (0, 0, 0, 128)])
    out = open_rgb(saved(img, tmp_path / "a.png"))
    assert out.getpixel((0, 0)) == RED
    assert out.getpixel((1, 0)) == WHITE
    assert all(abs(v - 127) <= 1 for v in out.getpixel((2, 0)))


def test_la_composited_over_white(tmp_path):
    img = Image.new("LA", (2, 1))
    img.putdata([(50, 255), (0, 0)])
    out = open_rgb(saved(img, tmp_path / "la.png"))
    assert [out.getpixel((x, 0)) for x in range(2)] == [(50, 50, 50), WHITE]


def test_cmyk(tmp_path):
    out = open_rgb(saved(Image.new("CMYK", (2, 2), (0, 255, 255, 0)), tmp_path / "c.tif"))
    assert out.getpixel((0, 0)) == RED


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = saved(Image.fromarray(values), tmp_path / "g16.png")
    assert Image.open(path).mode == "I;16"
    out = open_rgb(path)
    assert [out.getpixel((x, 0)) for x in range(4)] == [(v, v, v) for v in (0, 1, 128, 255)]


def test_32_bit_integer_mode_is_read_as_16_bit(tmp_path):
    values = np.array([[-5, 0, 32896, 65535, 70000]], dtype=np.int32)
    path = saved(Image.fromarray(values), tmp_path / "i.tif")
    assert Image.open(path).mode == "I"
    out = open_rgb(path)
    assert [out.getpixel((x, 0))[0] for x in range(5)] == [0, 0, 128, 255, 255]


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (60, 30), BLUE)
    img.paste(RED, (0, 0, 10, 10))  # red top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    out = open_rgb(saved(img, tmp_path / "rot.jpg", exif=exif, quality=95))
    assert_rgb(out, (30, 60))
    red, blue = out.getpixel((25, 5)), out.getpixel((5, 5))  # red corner is now top-right
    assert red[0] > 200 and red[2] < 60
    assert blue[2] > 200 and blue[0] < 60


def test_truncated_images_are_not_silently_accepted():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def noisy_image(size=(64, 48)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size[::-1], 3), dtype=np.uint8))


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file(tmp_path, suffix):
    path = saved(noisy_image(), tmp_path / f"t{suffix}")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    expect_error(path, "truncated")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.touch()
    expect_error(path, "zero-byte")


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is text, not a JPEG\n")
    expect_error(path, "not-an-image")


def test_missing_file(tmp_path):
    expect_error(tmp_path / "gone.png", "unreadable")


def test_float_mode_cannot_be_converted(tmp_path):
    expect_error(saved(Image.new("F", (2, 2), 0.5), tmp_path / "f.tif"), "unreadable-mode")


@pytest.mark.parametrize("side", [12, 30])  # 144 pixels: Pillow warns; 900 (over twice the limit): Pillow raises
def test_decompression_bomb(tmp_path, monkeypatch, side):
    path = saved(Image.new("RGB", (side, side)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    expect_error(path, "too-large")


def expect_error(path, kind: str) -> None:
    with pytest.raises(ImageReadError) as info:
        open_rgb(path)
    assert isinstance(info.value, DataError)
    assert info.value.kind == kind
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
