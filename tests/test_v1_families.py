"""ResNeSt and Res2Net (the ResNet v1 trunk) against timm, beyond what the registry-wide tests
(test_parity, test_registry) cover: the model card's feature map, dilation, heads, training mode,
drop path, split attention and grouped convs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnets_jax as rj
from timm_ref import PARITY_TOL, perturb_, rel_err, timm_forward, timm_state_dict


import timm  # noqa: E402

RESNEST = rj.list_models("resnest*")
RES2NET = rj.list_models("res2n*")
ARCHS = RESNEST + RES2NET

ODD_SIZE = 97  # not a multiple of 32: odd maps at every stride expose pool/pad mistakes


def _build(name, **kwargs):
    """The Flax module alone: no random init of ~100M parameters just to count or convert."""
    return rj.build_model(name, **kwargs)


def _timm_model(name, **kwargs):
    import torch
    torch.manual_seed(0)
    return perturb_(timm.create_model(name, **kwargs).eval())


def _input(size, batch=2, seed=0):
    return np.random.RandomState(seed).randn(batch, size, size, 3).astype(np.float32)


def test_forward_features_shape_resnest101e():
    model = _build("resnest101e")
    x = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    fmap = jax.eval_shape(lambda v, x: model.apply(v, x, method="forward_features"), variables, x)
    assert fmap.shape == (2, 8, 8, 2048)


@pytest.mark.parametrize("name,output_stride", [("resnest14d", 8), ("res2net50d", 16)])
def test_dilated_parity(name, output_stride, torch_device):
    """output_stride 8/16: dilated stages, stride-1 shortcuts (timm's AvgPool2dSame for avg-down)."""
    tm = _timm_model(name, output_stride=output_stride)
    model = _build(name, output_stride=output_stride)
    variables = rj.convert_timm_state_dict(model, timm_state_dict(tm))
    x = _input(ODD_SIZE, seed=1)
    fmap = model.apply(variables, x, method="forward_features")
    ref = timm_forward(tm, x, torch_device, method="forward_features")
    assert fmap.shape == ref.shape
    assert rel_err(fmap, ref) <= PARITY_TOL


@pytest.mark.parametrize("name", ["resnest14d"])
def test_head_variants(name, torch_device):
    """pre_logits and num_classes=0 give timm's pooled features; catavgmax pooling widens fc."""
    import torch
    tm = _timm_model(name, global_pool="catavgmax", num_classes=10)
    model = _build(name, global_pool="catavgmax", num_classes=10)
    variables = rj.convert_timm_state_dict(model, timm_state_dict(tm))
    x = _input(64, seed=2)
    fmap = model.apply(variables, x, method="forward_features")
    emb = model.apply(variables, fmap, pre_logits=True, method="forward_head")
    with torch.no_grad():
        ref_fmap = tm.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2)))
        ref_emb = tm.forward_head(ref_fmap, pre_logits=True).numpy()
    assert emb.shape == (2, model.head_hidden_size) == ref_emb.shape
    assert rel_err(emb, ref_emb) <= PARITY_TOL
    assert rel_err(model.apply(variables, x), timm_forward(tm, x, torch_device)) <= PARITY_TOL

    headless = _build(name, num_classes=0)
    sd = {k: v for k, v in timm_state_dict(tm).items() if not k.startswith("fc.")}
    v0 = rj.convert_timm_state_dict(headless, sd)
    assert headless.apply(v0, x).shape == (2, 2048)


@pytest.mark.parametrize("name", ["resnest14d", "res2net50_48w_2s"])
def test_train_mode_matches_timm(name):
    """Training forward (batch statistics everywhere, incl. SplitAttn's bn1 on 1x1 maps) and
    the updated running statistics (torch's unbiased variance, momentum 0.1)."""
    import torch
    tm = _timm_model(name)
    model = _build(name)
    # a copy: timm's training forward updates its buffers in place, under any numpy views
    variables = rj.convert_timm_state_dict(model, {k: v.copy() for k, v in timm_state_dict(tm).items()})
    x = _input(64, batch=4, seed=3)
    tm.train()
    with torch.no_grad():
        ref = tm(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert rel_err(out, ref) <= PARITY_TOL
    new_sd = rj.export_timm_state_dict(model, {"params": variables["params"], **updates})
    for k, v in timm_state_dict(tm).items():
        if "running" in k:
            assert rel_err(new_sd[k], v) <= PARITY_TOL, k
        elif k.endswith("num_batches_tracked"):
            assert new_sd[k] == v, k


@pytest.mark.parametrize("name", ["resnest50d", "res2net101_26w_4s"])
def test_drop_path_schedule(name):
    """Per-block drop-path rates follow timm's linear rule over the network-wide block index."""
    tm = timm.create_model(name, device="meta", drop_path_rate=0.2)
    ref = [b.drop_path.drop_prob if b.drop_path is not None else 0.0
           for layer in (tm.layer1, tm.layer2, tm.layer3, tm.layer4) for b in layer]
    model = _build(name, drop_path_rate=0.2)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    bound = model.bind(jax.eval_shape(model.init, jax.random.PRNGKey(0), x))
    ours = [b.drop_path_rate for stage in bound.stages() for b in stage]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_split_attn_attention_width():
    """timm's rule: make_divisible(in * radix * 0.25, divisor=8, min_value=32)."""
    from timm.layers.helpers import make_divisible as timm_make_divisible
    for in_chs in (64, 128, 160, 256, 320, 512):
        for radix in (1, 2, 4):
            assert rj.layers.split_attn_channels(in_chs, radix) == timm_make_divisible(
                in_chs * radix * 0.25, min_value=32, divisor=8)


@pytest.mark.parametrize("groups,stride,dilation", [(2, 1, 1), (8, 2, 1), (4, 1, 2)])
def test_grouped_conv_split_equals_feature_group_count(groups, stride, dilation):
    """Conv2d's CPU fast path (one conv per group, concatenated) computes the grouped conv."""
    x = jnp.asarray(_input(19, seed=4)[..., :1].repeat(32, -1) * np.linspace(0.5, 1.5, 32), jnp.float32)
    outs = []
    for split in (False, True):
        conv = rj.layers.Conv2d(64, 3, stride=stride, dilation=dilation, groups=groups, split_groups=split)
        variables = conv.init(jax.random.PRNGKey(0), x)
        outs.append(np.asarray(conv.apply(variables, x)))
    assert outs[0].shape == outs[1].shape
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)
