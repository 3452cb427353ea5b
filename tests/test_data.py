"""Eval preprocessing equals timm's on a real photo; class names."""
import numpy as np
import pytest
from PIL import Image

import resnets_jax as rj
from resnets_jax.data import imagenet_class_names, sample_image_path

timm = pytest.importorskip("timm")

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
    with pytest.raises(ValueError, match="No class names"):
        imagenet_class_names(10)
