"""timm's API where we mirror it, held against timm on the same inputs: ``list_models`` /
``list_pretrained``, ``resolve_data_config`` / ``resolve_model_data_config``, a model's
``pretrained_cfg`` (and ``create_model``'s ``pretrained_cfg`` / ``pretrained_cfg_overlay``), and
``create_transform`` (signature, eval, no-aug and training transforms)."""
import inspect
import random

import numpy as np
import pytest
from PIL import Image

import resnets_jax as rj
from resnets_jax.data import TrainTransform, create_transform, resolve_data_config, resolve_model_data_config

timm = pytest.importorskip("timm")  # the reference (the [dev] extra; make test installs it)
torch = pytest.importorskip("torch")  # the reference (the [dev] extra; make test installs it)

DATA_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
# small models of each family, and tags with a test size / other mean and std / another input size
NAMES = ("resnetv2_18", "resnest14d.gluon_in1k", "res2net50_26w_4s", "resnet50.a1_in1k", "skresnet18",
         "resnetv2_50x1_bit.goog_in21k")
ARGS = ({}, {"img_size": 160}, {"input_size": (3, 100, 120), "crop_pct": 0.5}, {"mean": (0.5,), "std": (0.25,)},
        {"interpolation": "bilinear", "crop_mode": "center"}, {"in_chans": 3, "mean": (0.1, 0.2, 0.3)})


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


@pytest.mark.parametrize("kwargs", [
    dict(filter="resnet5*"), dict(filter="resnet50", pretrained=True),
    dict(filter=["resnest*", "res2n*"], exclude_filters="*d"), dict(module="sknet"),
    dict(module=["resnet", "resnetv2"], filter="*18*", include_tags=True),
    dict(pretrained=True, exclude_filters=["*in21k", "*in12k*"]), dict(name_matches_cfg=True, filter="resnetv2*"),
    dict(pretrained=True, include_tags=False, filter="resnetv2*"), dict(filter="resnet18.*", include_tags=True)])
def test_list_models_equals_timms(kwargs):
    ours = set(rj.list_models())
    theirs = [n for n in timm.list_models(**kwargs) if n.partition(".")[0] in ours]  # the families we register
    assert rj.list_models(**kwargs) == theirs and theirs


def test_list_signatures_are_timms():
    for ours, theirs in [(rj.list_models, timm.list_models), (rj.list_pretrained, timm.list_pretrained)]:
        assert list(inspect.signature(ours).parameters) == list(inspect.signature(theirs).parameters)
    assert rj.list_pretrained("resnetv2_50*", exclude_filters="*x1*") == [
        n for n in timm.list_pretrained("resnetv2_50*", exclude_filters="*x1*")]
    with pytest.raises(TypeError):
        rj.list_models(exclude="*")


@pytest.mark.parametrize("name, kwargs", [
    ("resnet18", dict(pretrained_cfg="tv_in1k")), ("resnet50.a1_in1k", dict(pretrained_cfg="tv2_in1k")),
    ("resnet18", dict(pretrained_cfg=None)), ("resnest14d", dict(pretrained_cfg=dict(input_size=(3, 128, 128)))),
    ("resnetv2_18", dict(pretrained_cfg=dict(mean=(0.5,) * 3, std=(0.5,) * 3, num_classes=10))),
    ("resnet18", dict(pretrained_cfg_overlay=dict(input_size=(3, 160, 160), crop_pct=1.0, interpolation="bilinear"))),
    ("res2net50_26w_4s", dict(pretrained_cfg_overlay=dict(num_classes=10, mean=(0.5,) * 3))),
    ("resnet18", dict(pretrained_cfg="a1_in1k", pretrained_cfg_overlay=dict(test_input_size=(3, 96, 96))))])
def test_create_models_pretrained_cfg_arguments_are_timms(name, kwargs):
    """timm's ``create_model(name, pretrained_cfg=tag | dict | None, pretrained_cfg_overlay=dict)``:
    the model's ``pretrained_cfg``, its head and its data config follow them."""
    tmodel = timm.create_model(name, **kwargs)
    model, _ = rj.create_model(name, **kwargs)
    ours, theirs = _tuples(model.pretrained_cfg), _tuples(tmodel.pretrained_cfg)
    assert set(ours) <= set(theirs) and set(DATA_KEYS) | {"num_classes", "architecture"} <= set(ours)
    assert ours == {k: theirs[k] for k in ours}  # (our configs hold no url, origin_url, paper_ids, ...)
    assert model.num_classes == tmodel.num_classes
    for use_test_size in (False, True):
        assert _tuples(resolve_model_data_config(model, use_test_size=use_test_size)) == \
            _tuples(timm.data.resolve_model_data_config(tmodel, use_test_size=use_test_size))


def test_create_model_takes_every_argument_timms_does():
    """Every parameter of timm's ``create_model`` is one of ours (a timm call runs unchanged:
    ``scriptable``/``exportable``/``no_jit`` accepted, with no layers to switch in JAX)."""
    theirs = set(inspect.signature(timm.create_model).parameters)
    assert theirs <= set(inspect.signature(rj.create_model).parameters), theirs
    rj.create_model("test_resnet", scriptable=True, exportable=True, no_jit=True)


def test_pretrained_cfg_errors():
    with pytest.raises(ValueError, match="Unknown pretrained tag"):
        rj.build_model("resnet18", pretrained_cfg="no_such_tag")
    with pytest.raises(ValueError, match="config.json"):
        rj.build_model("hf-hub:timm/resnet18.a1_in1k", pretrained_cfg="tv_in1k")


@pytest.mark.parametrize("name", NAMES)
def test_resolve_data_config_equals_timms(name):
    """The same args and pretrained config through ours and timm's, with and without the test size;
    our model's ``pretrained_cfg`` is timm's ``get_pretrained_cfg`` where both have a key."""
    model = rj.build_model(name)
    theirs_cfg = timm.models.get_pretrained_cfg(name).to_dict()
    ours_cfg = model.pretrained_cfg
    assert model.default_cfg == ours_cfg
    assert {k: ours_cfg[k] for k in ours_cfg if k in theirs_cfg and theirs_cfg[k] is not None} == \
        {k: theirs_cfg[k] for k in ours_cfg if k in theirs_cfg and theirs_cfg[k] is not None}
    for args in ARGS:
        for use_test_size in (False, True):
            theirs = timm.data.resolve_data_config(args, pretrained_cfg=theirs_cfg, use_test_size=use_test_size)
            assert _tuples(resolve_data_config(args, model=model, use_test_size=use_test_size)) == _tuples(theirs)
            assert resolve_model_data_config(model, args, use_test_size=use_test_size) == \
                resolve_data_config(args, model=model, use_test_size=use_test_size)
            assert _tuples(resolve_data_config(args, pretrained_cfg=ours_cfg, use_test_size=use_test_size)) == \
                _tuples(theirs)
    assert resolve_data_config(name) == resolve_data_config(model) == resolve_data_config({}, model=model)


def test_resolve_data_config_errors():
    with pytest.raises(ValueError, match="at least one of model, args or pretrained_cfg"):
        resolve_data_config()
    with pytest.raises(ValueError, match="mean: expected 1 or 3 values"):
        resolve_data_config({"mean": (0.5, 0.5)}, model=rj.build_model("resnetv2_18"))
    with pytest.raises(TypeError):
        resolve_data_config({}, model=None, test_size=True)


def test_create_transform_signature_is_timms():
    ours = list(inspect.signature(create_transform).parameters)
    assert ours[:-1] == list(inspect.signature(timm.data.create_transform).parameters)
    assert ours[-1] == "exif_transpose"  # ours, keyword-only
    img = Image.new("RGB", (40, 30))
    for bad in (dict(is_trainig=True), dict(foo=1)):  # timm's has a fixed signature: a typo is an error
        with pytest.raises(TypeError):
            timm.data.create_transform(**bad)
        with pytest.raises(TypeError):
            create_transform(**bad)
    with pytest.raises(NotImplementedError, match="auto_augment='rand-m9-mstd0.5'"):
        create_transform(is_training=True, auto_augment="rand-m9-mstd0.5")
    assert create_transform(32)(img).shape == (32, 32, 3)


def _photo(w=71, h=57, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _timm_array(t, img):
    return t(img).numpy().transpose(1, 2, 0)


@pytest.mark.parametrize("input_size", [32, (3, 24, 40)])
def test_train_transform_without_torchs_draws_equals_timms(input_size):
    """``is_training=True`` with hflip 0 and no jitter draws only timm's crop (from ``random``):
    equal to timm's on the same seed, each interpolation; ``no_aug`` equals timm's no-aug resize."""
    img = _photo()
    for interp in ("bicubic", "random"):
        kw = dict(input_size=input_size, is_training=True, hflip=0.0, color_jitter=None, interpolation=interp,
                  mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
        ours_t, theirs_t = create_transform(**kw), timm.data.create_transform(**kw)
        assert isinstance(ours_t, TrainTransform)
        for seed in range(4):
            random.seed(seed)
            theirs = _timm_array(theirs_t, img)
            np.testing.assert_allclose(ours_t(img, random.Random(seed)), theirs, rtol=0, atol=2e-6)  # fp32 rounding
    kw = dict(input_size=input_size, is_training=True, no_aug=True, interpolation="bilinear")
    np.testing.assert_allclose(create_transform(**kw)(img), _timm_array(timm.data.create_transform(**kw), img),
                               rtol=0, atol=2e-6)


def test_train_transform_with_the_same_draws_equals_torchvisions():
    """Each drawn crop box, flips and jitter (order and factors, hue included) applied by
    torchvision's own functions: the same pixels."""
    from torchvision.transforms import functional as F
    from torchvision.transforms import InterpolationMode
    t = create_transform((3, 28, 36), is_training=True, color_jitter=(0.4, 0.4, 0.4, 0.1), vflip=0.5,
                         grayscale_prob=0.3, interpolation="random", mean=(0.5,) * 3, std=(0.25,) * 3)
    img = _photo()
    ops = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
    seen = set()
    for seed in range(12):
        p = t.draw(*img.size, rng=random.Random(seed))
        seen.update([p.hflip, p.vflip, p.grayscale])
        x = F.resized_crop(img, p.top, p.left, p.height, p.width, [28, 36], InterpolationMode(p.interpolation))
        x = F.hflip(x) if p.hflip else x
        x = F.vflip(x) if p.vflip else x
        for i in p.jitter_order:
            x = ops[i](x, p.jitter_factors[i])
        x = F.rgb_to_grayscale(x, num_output_channels=3) if p.grayscale else x
        theirs = F.normalize(F.to_tensor(x), (0.5,) * 3, (0.25,) * 3).numpy().transpose(1, 2, 0)
        np.testing.assert_allclose(t.apply(img, p), theirs, rtol=0, atol=2e-6)
    assert seen == {True, False}  # both branches of each choice ran


def test_train_transform_distribution():
    """timm's defaults: crops of 8-100 % of the area, ratio 3/4-4/3, flips half the time, jitter
    factors in [0.6, 1.4] for brightness, contrast and saturation (no hue), every order."""
    img = _photo(64, 48)
    t = create_transform(**resolve_data_config("resnetv2_18"), is_training=True)
    rng = random.Random(0)
    draws = [t.draw(64, 48, rng) for _ in range(400)]
    area = np.array([p.height * p.width for p in draws]) / (64 * 48)
    assert area.min() >= 0.08 - 0.02 and area.max() <= 1.0  # rounding of the box sides
    assert all(p.interpolation == "bicubic" for p in draws)
    flips = sum(p.hflip for p in draws)
    assert abs(flips - 200) < 4 * 10  # binomial(400, 0.5): sd 10
    factors = np.array([p.jitter_factors[:3] for p in draws])
    assert factors.min() >= 0.6 and factors.max() <= 1.4 and all(p.jitter_factors[3] is None for p in draws)
    assert len({p.jitter_order for p in draws}) == 24
    x = t(img, random.Random(1))
    assert x.shape == (224, 224, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(x, t(img, random.Random(1)))  # seeded: reproducible
    random.seed(3)
    a = t(img)
    random.seed(3)
    np.testing.assert_array_equal(a, t(img))  # without an rng: the random module, as timm's crop
    assert create_transform(32, is_training=True, normalize=False)(img, rng).dtype == np.uint8
