"""The registry mirrors timm's: names, pretrained tags, configs, parameter counts, overrides."""
import dataclasses

import jax
import numpy as np
import pytest

import resnets_jax as rj
from resnets_jax.convert.shapes import expected_variables

# timm's model files we port, and name patterns over them
TIMM_MODULES = ["resnet", "sknet", "resnest", "res2net", "resnetv2"]
FAMILIES = ["resnetv2*", "resnest*", "res2n*", "resnet*", "seresnet*", "ecaresnet*", "skres*", "*resnext*",
            "wide_resnet*", "senet154", "test_resnet", "resnet50", "resnet50.a1*"]  # no tag: every tag, as timm
CFG_FIELDS = ("input_size", "test_input_size", "crop_pct", "test_crop_pct", "crop_mode", "interpolation",
              "mean", "std", "num_classes", "pool_size", "first_conv", "classifier", "hf_hub_id", "license")


@pytest.fixture(scope="module")
def timm():
    import timm
    return timm


@pytest.mark.parametrize("pattern", FAMILIES)
def test_names_and_tags_equal_timm(pattern, timm):
    # timm's other files register lookalikes (resnet50_clip, resnext26ts, ...): ours are theirs of these files
    assert rj.list_models(pattern) == timm.list_models(pattern, module=TIMM_MODULES)
    assert rj.list_pretrained(pattern) == timm.list_models(pattern, module=TIMM_MODULES, pretrained=True)


@pytest.mark.parametrize("pattern, count", [("resnetv2*", 20), ("resnest*", 8), ("res2n*", 9), ("skres*", 5)])
def test_every_family_is_complete(pattern, count):
    assert len(rj.list_models(pattern)) == count


def test_every_architecture_and_tag_of_the_ported_files(timm):
    """Every model timm registers in resnet.py, sknet.py, resnest.py, res2net.py and resnetv2.py
    (123 architectures in timm 1.0.31), and every pretrained tag of theirs, and nothing else."""
    archs = timm.list_models(module=TIMM_MODULES)
    assert rj.list_models() == sorted(archs, key=rj.registry._natural_key) and len(archs) >= 123
    assert set(rj.list_pretrained()) == set(timm.list_models(module=TIMM_MODULES, pretrained=True))


def _all_tags(timm):
    # get_arch_pretrained_cfgs is keyed by the full 'arch.tag' name
    return [n for a in timm.list_models(module=TIMM_MODULES) for n in timm.models.get_arch_pretrained_cfgs(a)]


def test_every_tag_config_equals_timm(timm):
    names = _all_tags(timm)
    assert len(names) >= 29 + 8 + 9 + 170 + 5
    for name in names:
        ours = rj.get_pretrained_cfg(name)
        theirs = timm.models.get_pretrained_cfg(name).to_dict()
        for field in CFG_FIELDS:
            assert ours.get(field) == theirs.get(field), (name, field, ours.get(field), theirs.get(field))


def test_default_tag_is_timms(timm):
    for arch in rj.list_models():
        assert rj.get_pretrained_cfg(arch)["tag"] == timm.models.get_pretrained_cfg(arch).tag


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name", rj.list_models())
def test_parameter_count_equals_timm(name, timm):
    tmodel = timm.create_model(name, device="meta")
    expected = sum(p.numel() for p in tmodel.parameters())
    # our parameters' shapes as the converter checks a checkpoint against them: traced once a
    # session and remembered on disk, where test_parity.py's conversion of the same model finds them
    shapes = expected_variables(rj.build_model(name))
    assert _count([s for (col, _), s in shapes.items() if col == "params"]) == expected


# build_model's own arguments, set on every model (not an architecture's choice)
_FACTORY_FIELDS = {"parent", "name", "num_classes", "in_chans", "drop_rate", "drop_path_rate", "dtype",
                   "param_dtype", "variant", "pretrained_cfg_overlay", "global_pool"}


def test_every_architecture_argument_can_be_overridden():
    """timm's entry points build ``dict(model_args, **kwargs)``: any argument an architecture fixes
    can be given again (``create_model('resnest14d', avg_down=False)``, an hf-hub config's
    ``model_args``). Every architecture, every field its entry point sets: passed back, it gives
    the same module (no "got multiple values" TypeError)."""
    for name in rj.list_models():
        model = rj.build_model(name)
        fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
                  if f.init and f.name not in _FACTORY_FIELDS
                  and (f.default is dataclasses.MISSING or getattr(model, f.name) != f.default)}
        assert rj.build_model(name, **fields) == model, name


@pytest.mark.parametrize("name, override", [
    ("resnest14d", dict(avg_down=False)), ("res2net50_26w_4s", dict(block_args=dict(scale=8), layers=[1, 1, 1, 1])),
    ("res2net50d", dict(stem_width=64, layers=[1, 1, 1, 1])),
    ("skresnet50d", dict(stem_type="deep_tiered", layers=[1, 1, 1, 1])),
    ("resnetv2_18", dict(channels=[32, 64, 128, 256], layers=[1, 1, 1, 1])),
    ("resnetv2_50d", dict(avg_down=False, layers=[1, 1, 1, 1])),
    ("resnet26d", dict(avg_down=False, layers=[1, 1, 1, 1]))])
def test_overridden_architecture_equals_timms(name, override, timm):
    """An override changes the architecture as in timm (lists as timm takes them): the same parameter count."""
    tmodel = timm.create_model(name, device="meta", **override)
    shapes = expected_variables(rj.build_model(name, **override))
    expected = sum(p.numel() for p in tmodel.parameters())
    assert _count([s for (col, _), s in shapes.items() if col == "params"]) == expected


@pytest.mark.parametrize("name, count", [("resnetv2_50", 25_549_352), ("resnest101e", 48_275_016),
                                         ("res2net101_26w_4s", 45_206_688)])
def test_seed_model_parameter_counts_from_model_cards(name, count):
    model = rj.build_model(name)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32))
    assert _count(shapes["params"]) == count


@pytest.mark.parametrize("bad, suggestion", [("resnetv2_5O", "resnetv2_50"), ("resnet_v2_50", "resnetv2_50"),
                                             ("resnetv2_50.a1h_in1", "resnetv2_50.a1h_in1k")])
def test_unknown_name_suggests_close_matches(bad, suggestion):
    with pytest.raises(ValueError, match="Unknown") as e:
        rj.create_model(bad)
    assert suggestion in str(e.value)


def test_unknown_name_without_close_match():
    with pytest.raises(ValueError, match="list_models"):
        rj.build_model("vit_base_patch16_224")


@pytest.mark.parametrize("bad", ["no_such_net", "resnet18.no_such_tag"])
def test_unknown_name_is_the_runtime_error_timm_raises(bad, timm):
    with pytest.raises(RuntimeError):
        timm.create_model(bad)
    with pytest.raises(RuntimeError, match="Unknown"):
        rj.create_model(bad)
