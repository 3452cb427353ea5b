"""Eval preprocessing equals timm's on real photos, in every image mode; class names.

"timm's output" for an image file is what timm's ``ImageDataset`` feeds its model:
``Image.open(path).convert('RGB')`` (``'L'`` for one-channel models), then
``timm.data.create_transform(**cfg)``. Ours is ``create_transform(**cfg)(Image.open(path))``.
"""
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

import resnets_jax as rj
from resnets_jax.data import HighBitDepthWarning, imagenet_class_names, sample_image_path

timm = pytest.importorskip("timm")  # the reference (the [dev] extra; make test installs it)

ROCKET = str(Path(__file__).parent / "data" / "rocket.jpg")  # a camera JPEG, public domain (SpaceX)

TAGS = ["resnetv2_50.a1h_in1k",                      # bicubic, crop 0.95
        "resnetv2_50x1_bit.goog_in21k",              # bilinear, crop 0.875
        "resnetv2_50x1_bit.goog_in21k_ft_in1k"]      # 448, crop 1.0


@pytest.mark.parametrize("name", TAGS)
@pytest.mark.parametrize("use_test_size", [False, True])
def test_transform_equals_timm_on_real_photo(name, use_test_size):
    from timm.data import create_transform, resolve_data_config
    ours_cfg = rj.data.resolve_data_config(name, use_test_size=use_test_size)
    tmodel = timm.create_model(name, device="meta")
    theirs_cfg = resolve_data_config({}, model=tmodel, use_test_size=use_test_size)
    for k in ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode"):
        assert tuple(np.atleast_1d(ours_cfg[k])) == tuple(np.atleast_1d(theirs_cfg[k])), k
    img = Image.open(sample_image_path())
    for im in (img, img.transpose(Image.Transpose.ROTATE_90), img.resize((97, 301))):
        ours = rj.data.create_transform(**ours_cfg)(im)
        theirs = create_transform(**theirs_cfg)(im).numpy().transpose(1, 2, 0)
        assert ours.shape == theirs.shape and ours.dtype == np.float32
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_model_data_config_follows_in_chans():
    model = rj.build_model("resnetv2_50.a1h_in1k", in_chans=1)
    assert rj.data.resolve_data_config(model)["input_size"] == (1, 224, 224)


def test_class_names():
    names = imagenet_class_names(1000)
    assert len(names) == 1000 and names[281].startswith("tabby")
    assert len(imagenet_class_names(21843)) == 21843


@pytest.mark.parametrize("num_classes", [1000, 11821, 21843])
def test_class_names_equal_timms(num_classes):
    from timm.data import ImageNetInfo, infer_imagenet_subset
    info = ImageNetInfo(infer_imagenet_subset({"num_classes": num_classes}))
    assert imagenet_class_names(num_classes) == [info.index_to_description(i) for i in range(num_classes)]


def test_unknown_class_count():
    with pytest.raises(ValueError, match="No class names"):
        imagenet_class_names(10)


def _timm_transform(cfg):
    from timm.data import create_transform
    return create_transform(**cfg)


def _timm_output(cfg, path, mode="RGB", exif_transpose=False):
    with Image.open(path) as img:  # timm.data.ImageDataset: open, convert, transform
        img = ImageOps.exif_transpose(img) if exif_transpose else img
        return _timm_transform(cfg)(img.convert(mode)).numpy().transpose(1, 2, 0)


def _ours(cfg, path, **kwargs):
    with Image.open(path) as img:
        return rj.data.create_transform(**cfg, **kwargs)(img)


def _derive(mode, src, path):
    """A real photo in ``mode``, written to a file the way such images come (PNG, or a CMYK JPEG)."""
    img = Image.open(src).convert("RGB")
    if mode == "L":
        out = img.convert("L")
    elif mode == "LA":
        out = img.convert("L")
        out.putalpha(img.convert("L").point(lambda v: 255 - v // 2))  # a real, non-constant alpha
    elif mode == "RGBA":
        out = img.copy()
        out.putalpha(Image.linear_gradient("L").resize(img.size))
    elif mode == "P":
        out = img.quantize(colors=200)
    elif mode == "CMYK":
        out = img.convert("CMYK")
    elif mode == "I;16":  # 16-bit grayscale, using the whole 16-bit range, as a 16-bit scan would
        out = Image.fromarray(np.asarray(img.convert("L"), np.uint16) * 257)
    elif mode == "I;16-low":  # 16-bit container, 8-bit values
        out = Image.fromarray(np.asarray(img.convert("L"), np.uint16))
    path = path.with_suffix(".jpg" if mode == "CMYK" else ".png")
    out.save(path)
    with Image.open(path) as check:
        assert check.mode == ("I;16" if mode.startswith("I;16") else mode)
    return path


CFG = "resnetv2_50.a1h_in1k"  # bicubic, crop 0.95, ImageNet mean/std


@pytest.mark.parametrize("src", [sample_image_path(), ROCKET], ids=["chelsea", "rocket"])
@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16-low"])
def test_every_mode_equals_timm(tmp_path, src, mode):
    cfg = rj.data.resolve_data_config(CFG)
    path = _derive(mode, src, tmp_path / "img")
    with warnings.catch_warnings():
        warnings.simplefilter("error", HighBitDepthWarning)  # 8-bit values: nothing to warn about
        ours = _ours(cfg, path)
    theirs = _timm_output(cfg, path)
    assert ours.shape == theirs.shape == (224, 224, 3) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_16_bit_image_is_clipped_as_timm_does_with_a_warning(tmp_path):
    cfg = rj.data.resolve_data_config(CFG)
    path = _derive("I;16", ROCKET, tmp_path / "img")
    with pytest.warns(HighBitDepthWarning, match="clips every value above 255"):
        ours = _ours(cfg, path)
    np.testing.assert_allclose(ours, _timm_output(cfg, path), atol=1e-6)
    white = (1 - np.asarray(cfg["mean"], np.float32)) / np.asarray(cfg["std"], np.float32)
    assert np.isclose(ours, white, atol=1e-5).all(-1).mean() > 0.5  # the clipping is real: mostly white


def test_exif_rotated_jpeg(tmp_path):
    """A camera JPEG stored landscape with Orientation=6 (display rotated 90° clockwise)."""
    cfg = rj.data.resolve_data_config(CFG)
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[274] = 6
    Image.open(ROCKET).save(path, exif=exif, quality=95)
    with Image.open(path) as img:
        assert img.getexif()[274] == 6 and img.size == (640, 427)
    ours = _ours(cfg, path)  # default: the stored pixels, as timm
    np.testing.assert_allclose(ours, _timm_output(cfg, path), atol=1e-6)
    upright = _ours(cfg, path, exif_transpose=True)  # opt-in: as the photo is displayed
    np.testing.assert_allclose(upright, _timm_output(cfg, path, exif_transpose=True), atol=1e-6)
    assert np.abs(upright - ours).mean() > 0.1  # the two really differ


def test_one_channel_model_transform_equals_timm(tmp_path):
    from timm.data.model_config import resolve_input_data_config
    model = rj.build_model(CFG, in_chans=1)
    cfg = rj.data.resolve_data_config(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm logs that it averages the 3-channel mean/std
        theirs_cfg = resolve_input_data_config(timm.create_model(CFG, in_chans=1, device="meta"))
    assert cfg == {k: theirs_cfg[k] for k in cfg}
    ours = _ours(cfg, ROCKET)
    assert ours.shape == (224, 224, 1)
    np.testing.assert_allclose(ours, _timm_output(theirs_cfg, ROCKET, mode="L"), atol=1e-6)


@pytest.mark.parametrize("size", [(3, 224, 192), (3, 160, 256)])
def test_non_square_input_size_equals_timm(size):
    cfg = dict(rj.data.resolve_data_config(CFG), input_size=size)
    for path in (sample_image_path(), ROCKET):
        ours, theirs = _ours(cfg, path), _timm_output(cfg, path)
        assert ours.shape == theirs.shape == (*size[1:], 3)
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
