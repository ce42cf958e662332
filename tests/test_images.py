"""Robust image input: mode conversions, EXIF orientation, bad files, decompression bombs, in-memory inputs."""

import numpy as np
import pytest
import torch
from PIL import Image

from efficientformer.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    as_rgb_image,
    find_images,
    load_image,
)
from efficientformer.data.transforms import EvalTransform as EvalPreprocess


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


# -- mode conversions --------------------------------------------------------------------------------------------
def test_greyscale_and_bilevel_become_rgb(tmp_path):
    grey = Image.new("L", (8, 6), 100)
    out = load_image(_save(grey, tmp_path / "g.png"))
    assert out.mode == "RGB" and out.size == (8, 6)
    assert out.getpixel((0, 0)) == (100, 100, 100)
    bilevel = Image.new("1", (8, 6), 1)
    assert load_image(_save(bilevel, tmp_path / "b.png")).getpixel((3, 3)) == (255, 255, 255)


def test_palette_image_keeps_its_colours(tmp_path):
    rgb = Image.new("RGB", (8, 8), (200, 30, 40))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert pal.mode == "P"
    out = load_image(_save(pal, tmp_path / "p.png"))
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (200, 30, 40)


def test_palette_transparency_composited_on_white(tmp_path):
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((0, 0), 1)
    pal.info["transparency"] = 0  # index 0 (black) is transparent
    out = load_image(_save(pal, tmp_path / "pt.png", transparency=0))
    assert out.getpixel((1, 1)) == (255, 255, 255)  # transparent black -> white, not black
    assert out.getpixel((0, 0)) == (10, 200, 30)


def test_rgba_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 255, 128))  # half-transparent blue over white
    out = load_image(_save(rgba, tmp_path / "a.png"))
    assert out.mode == "RGB"
    assert out.getpixel((3, 3)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (255, 0, 0)
    r, g, b = out.getpixel((1, 0))
    assert 120 <= r <= 135 and 120 <= g <= 135 and b == 255
    la = Image.new("LA", (2, 2), (0, 0))
    assert load_image(_save(la, tmp_path / "la.png")).getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(_save(cmyk, tmp_path / "c.jpg", quality=95))
    assert out.mode == "RGB"
    r, g, b = out.getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60


def test_16bit_greyscale_is_rescaled_not_clipped(tmp_path):
    arr = np.array([[0, 257 * 100], [32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    out = load_image(_save(img, tmp_path / "16.png"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((1, 0)) == (100, 100, 100)  # Pillow's convert("L") would clip this to 255
    assert out.getpixel((0, 1))[0] in (127, 128)
    assert out.getpixel((1, 1)) == (255, 255, 255)


def test_32bit_integer_and_float_modes():
    as_i = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert as_i.mode == "I"
    assert as_rgb_image(as_i).getpixel((1, 0)) == (255, 255, 255)
    as_f = Image.fromarray(np.array([[0.0, 0.5]], dtype=np.float32))
    assert as_f.mode == "F"
    assert as_rgb_image(as_f).getpixel((1, 0))[0] in (127, 128)


# -- EXIF orientation --------------------------------------------------------------------------------------------
def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red strip on the left edge as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(img, tmp_path / "rot.jpg", exif=exif, quality=95)
    with Image.open(path) as raw:
        assert raw.size == (40, 20)  # stored landscape
    out = load_image(path)
    assert out.size == (20, 40)  # displayed portrait
    r, g, b = out.getpixel((10, 3))  # the left strip is now at the top
    assert r > 200 and b < 60
    r, g, b = out.getpixel((10, 36))
    assert b > 200 and r < 60


# -- bad files ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("empty.jpg", b"", "empty file"),
        ("text.png", b"this is not an image at all\n" * 10, "not an image"),
        ("garbage.jpg", bytes(range(256)) * 4, "not an image"),
    ],
)
def test_bad_files_raise_one_line_error_naming_the_file(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    msg = str(info.value)
    assert str(path) in msg and needle in msg and "\n" not in msg
    assert isinstance(info.value, ValueError) and info.value.source == str(path)


def test_truncated_image_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    full = _save(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), tmp_path / "full.png")
    data = full.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="cut.png.*(truncated|corrupt)"):
        load_image(cut)
    jpg = _save(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), tmp_path / "full.jpg")
    cut_jpg = tmp_path / "cut.jpg"
    cut_jpg.write_bytes(jpg.read_bytes()[:300])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        load_image(cut_jpg)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageLoadError, match="is a folder"):
        load_image(tmp_path)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    # A real bomb: a bilevel PNG whose header announces more pixels than Pillow's default limit, a few kB on disk.
    side = int(DEFAULT_MAX_PIXELS**0.5) + 100
    bomb = _save(Image.new("1", (side, side), 0), tmp_path / "bomb.png")
    assert bomb.stat().st_size < 2_000_000
    with pytest.raises(ImageLoadError) as info:
        load_image(bomb)
    assert "bomb.png" in str(info.value) and "decompression bomb" in str(info.value)
    # The limit is configurable, and applies to in-memory PIL images too.
    small = _save(Image.new("RGB", (64, 64)), tmp_path / "small.png")
    with pytest.raises(ImageLoadError, match="over the limit of 1,000"):
        load_image(small, max_pixels=1000)
    assert load_image(small, max_pixels=64 * 64).size == (64, 64)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        as_rgb_image(Image.new("L", (100, 100)), max_pixels=50)


# -- in-memory inputs --------------------------------------------------------------------------------------------
def test_arrays_and_tensors_of_each_kind():
    u8 = np.full((6, 8, 3), 51, dtype=np.uint8)
    assert as_rgb_image(u8).getpixel((0, 0)) == (51, 51, 51)
    assert as_rgb_image(u8.astype(np.float32) / 255).getpixel((0, 0)) == (51, 51, 51)
    assert as_rgb_image(np.full((6, 8), 51, dtype=np.uint8)).getpixel((0, 0)) == (51, 51, 51)
    assert as_rgb_image(np.full((6, 8, 1), 51, dtype=np.uint8)).size == (8, 6)
    assert as_rgb_image(np.full((6, 8), 257 * 51, dtype=np.uint16)).getpixel((0, 0)) == (51, 51, 51)
    rgba = np.zeros((6, 8, 4), dtype=np.uint8)
    assert as_rgb_image(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    t = torch.full((3, 6, 8), 0.2)
    assert as_rgb_image(t).getpixel((0, 0)) == (51, 51, 51)
    assert as_rgb_image(t.to(torch.uint8).add(51)).getpixel((0, 0)) == (51, 51, 51)
    assert as_rgb_image(t.half()).size == (8, 6)


@pytest.mark.parametrize(
    "obj,needle",
    [
        (np.full((6, 8, 3), 2.0, dtype=np.float32), r"\[0, 1\]"),
        (np.zeros((3, 6, 8), dtype=np.uint8), "channels-first"),
        (np.zeros((6, 8, 5), dtype=np.uint8), "shape"),
        (np.zeros((0, 8, 3), dtype=np.uint8), "no pixels"),
        (np.full((6, 8, 3), np.nan, dtype=np.float32), "NaN"),
        (torch.zeros(5, 6, 8), "CHW"),
        (42, "unsupported input type"),
    ],
)
def test_bad_in_memory_inputs(obj, needle):
    with pytest.raises(ImageLoadError, match=needle) as info:
        as_rgb_image(obj, index=3)
    assert "input #3" in str(info.value)


def test_find_images_recurses_and_keeps_explicit_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "x.JPG").write_bytes(b"1")
    (tmp_path / "a" / "b" / "y.png").write_bytes(b"1")
    (tmp_path / "a" / "notes.txt").write_bytes(b"1")
    (tmp_path / "a" / ".hidden.png").write_bytes(b"1")
    explicit = tmp_path / "explicit.dat"
    found, problems = find_images([tmp_path / "a", explicit])
    assert problems == []
    assert found == [tmp_path / "a" / "x.JPG", tmp_path / "a" / "b" / "y.png", explicit]


# -- preprocessing -----------------------------------------------------------------------------------------------
def test_preprocess_matches_torchvision_resize_and_centre_crop():
    """The one eval preprocessing equals torchvision's Resize + CenterCrop + ToTensor + Normalize on PIL images."""
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    def interpolation_mode(name):
        return InterpolationMode(name)

    rng = np.random.default_rng(1)
    for h, w in [(300, 451), (451, 300), (97, 97), (64, 200)]:
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        for size, interp in [(224, "bicubic"), (64, "bilinear"), (96, "nearest"), (256, "bicubic")]:
            ours = EvalPreprocess(img_size=size, interpolation=interp)(img)
            ref = T.Compose(
                [
                    T.Resize(int(size / 0.875), interpolation=interpolation_mode(interp)),
                    T.CenterCrop(size),
                    T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                ]
            )(img)
            assert ours.shape == (3, size, size)
            torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_preprocess_rejects_bad_settings():
    with pytest.raises(ValueError, match="multiples of 32"):
        EvalPreprocess(img_size=100)
    with pytest.raises(ValueError, match="interpolation"):
        EvalPreprocess(interpolation="cubic")
    with pytest.raises(ValueError, match="at least img_size"):
        EvalPreprocess(img_size=224, resize=200)
    assert EvalPreprocess().resize_to == 256 and EvalPreprocess(img_size=64).resize_to == 73
    # The official rule truncates: int(256 / 0.875) = int(292.57) = 292 (round() gave 293).
    assert EvalPreprocess(img_size=256).resize_to == 292


# -- limits: pixels above Pillow's default, aspect ratio, bounded resize -----------------------------------------
def test_max_pixels_above_pillows_limit_really_raises_it(tmp_path, monkeypatch):
    """--max-pixels above Pillow's own limit must let the image through (Pillow refused it at twice its global)."""
    import efficientformer.data.images as images

    # Scale Pillow's limit down so the test image is small: 2,500 px is over twice Pillow's (pretend) 1,000.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setattr(images, "DEFAULT_MAX_PIXELS", 1000)
    big = _save(Image.new("RGB", (50, 50), (1, 2, 3)), tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(big)
    assert load_image(big, max_pixels=10_000).getpixel((0, 0)) == (1, 2, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000  # Pillow's global is restored afterwards
    with pytest.raises(ImageLoadError, match="2,?000"):
        load_image(big, max_pixels=2000)


def test_absurd_aspect_ratio_is_refused_with_a_clear_message(tmp_path):
    strip = _save(Image.new("L", (30000, 1), 7), tmp_path / "strip.png")
    assert strip.stat().st_size < 2000  # a few hundred bytes that would resize to 256 x 7,680,000
    with pytest.raises(ImageLoadError, match=r"strip.png: 30000x1 has an aspect ratio over 100:1"):
        load_image(strip)
    with pytest.raises(ImageLoadError, match="aspect ratio"):
        as_rgb_image(np.zeros((1, 500), np.uint8))
    assert load_image(_save(Image.new("L", (1000, 10)), tmp_path / "wide.png")).size == (1000, 10)  # 100:1 is fine


def test_resize_work_is_bounded():
    from efficientformer.data.transforms import MAX_RESIZED_PIXELS

    tf = EvalPreprocess(img_size=224, resize=8192)
    img = Image.new("RGB", (100, 4000))
    assert tf.resized_size(100, 4000)[0] * tf.resized_size(100, 4000)[1] > MAX_RESIZED_PIXELS
    with pytest.raises(ValueError, match="resized to 8192x327680"):
        tf(img)


def test_unlistable_subfolder_is_reported(tmp_path, monkeypatch):
    import os

    (tmp_path / "a" / "locked").mkdir(parents=True)
    _save(Image.new("RGB", (8, 8)), tmp_path / "a" / "x.png")
    _save(Image.new("RGB", (8, 8)), tmp_path / "a" / "locked" / "y.png")
    real = os.scandir

    def scandir(path="."):  # tests run as root, where chmod 000 does not stop reading: fail the call instead
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    found, problems = find_images([tmp_path / "a"])
    assert found == [tmp_path / "a" / "x.png"]
    assert len(problems) == 1 and "locked: cannot list folder (Permission denied)" in problems[0]
