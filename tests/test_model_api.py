"""timm's model API, for one architecture of each family, against timm on perturbed weights:
features_only, forward_features / forward_head, heads and pools, in_chans, output_stride,
bf16, gradient checkpointing, input checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnets_jax as rj
from hub_cache import hub_cache
from timm_ref import PARITY_TOL, jit_apply, perturb_, rel_err, timm_forward, timm_state_dict

torch = pytest.importorskip("torch")  # the reference (the [dev] extra; make test installs it)
timm = pytest.importorskip("timm")  # the reference (the [dev] extra; make test installs it)

# one per family; small, but with the deep stem, avg-down shortcuts, split attention and
# multi-scale blocks; timm's resnet.py: its trunk with BasicBlocks (its other blocks and options:
# tests/test_resnet_family.py, test_parity.py, test_train.py)
ARCHS = ["resnetv2_18d", "resnest14d", "res2net50_26w_4s", "resnet18"]
ODD = 97
# Depths for the API tests, on both sides (timm's `layers` override): the API is the trunk's,
# not the depth's, and (2, 1, 1, 1) still holds a non-first Res2Net block (the one that
# accumulates across scales). Full depths: test_parity.py.
DEPTHS = {"res2net50_26w_4s": (2, 1, 1, 1), "resnet18": (1, 1, 1, 1)}
# timm's sknet.py (SelectiveKernelBasic) and a pruned ECA-ResNet (per-block widths from data, the
# feature widths timm's pruning adapts) at depth (1, 1, 1, 1) on both sides: every block kind of the
# model (a stage's first block, with its shortcut), a fraction of the compile time. They take the
# tests of what their blocks change (feature maps and widths, dilation, the first conv); heads,
# pools, bf16, remat and input checks are the trunk's, held on ARCHS.
API_ARCHS = ARCHS + ["skresnet18", "ecaresnet50d_pruned"]
DEPTHS.update({"skresnet18": (1, 1, 1, 1), "ecaresnet50d_pruned": (1, 1, 1, 1),
               "resnest50d_1s4x24d": (1, 1, 1, 1)})  # DropBlock in radix-1 split attention


def _depth(name, **kwargs):
    return {**kwargs, "layers": DEPTHS[name]} if name in DEPTHS else kwargs


def _timm(name, **kwargs):
    torch.manual_seed(0)
    return perturb_(timm.create_model(name, **_depth(name, **kwargs)), seed=7).eval()


def _x(size=ODD, chans=3, seed=0):
    return np.random.default_rng(seed).standard_normal((2, size, size, chans)).astype(np.float32)


def _ours(name, tmodel, **kwargs):
    model = rj.build_model(name, **_depth(name, **kwargs))
    return model, rj.convert_timm_state_dict(model, timm_state_dict(tmodel))


def _timm_features(tmodel, out_indices):
    """timm's features_only network (FeatureListNet) over the perturbed model's own modules."""
    from timm.models._features import FeatureListNet
    flatten = isinstance(tmodel, timm.models.ResNetV2)  # _create_resnetv2's feature_cfg
    return FeatureListNet(tmodel, out_indices=out_indices, flatten_sequential=flatten).eval()


# Every architecture's every map (its widths and strides are its blocks'); which maps a selection
# picks (a negative index, a single one) is the trunk's (models/resnet.py, resnetv2.py): by default
# on one architecture of each, on the others under `-m slow`
ALL_MAPS = (0, 1, 2, 3, 4)
SELECTION_ARCHS = ("resnetv2_18d", "resnet18")  # one per trunk: resnetv2.py's, models/resnet.py's
FEATURE_CASES = [pytest.param(name, out_indices, id=f"{out_indices}-{name}".replace(" ", ""),
                              marks=() if out_indices == ALL_MAPS or name in SELECTION_ARCHS else pytest.mark.slow)
                 for out_indices in (ALL_MAPS, (1, -1), 2) for name in API_ARCHS]


@pytest.mark.parametrize("name, out_indices", FEATURE_CASES)
def test_features_only_matches_timm(name, out_indices):
    tmodel = _timm(name)
    tfeat = _timm_features(tmodel, out_indices)
    fmodel = rj.build_model(name, **_depth(name, features_only=True, out_indices=out_indices))
    kept = tuple(_kept_prefixes(fmodel))
    fvars = rj.convert_timm_state_dict(fmodel, {k: v for k, v in timm_state_dict(tmodel).items() if k.startswith(kept)})
    x = _x()
    with torch.no_grad():
        ref = [t.numpy().transpose(0, 2, 3, 1) for t in tfeat(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))]
    out = jit_apply(fmodel, fvars, x)
    assert [o.shape for o in out] == [r.shape for r in ref]
    for o, r in zip(out, ref):
        assert rel_err(o, r) <= PARITY_TOL
    # timm lists feature_info in out_indices order; the maps (theirs and ours) come in network order
    theirs = timm.create_model(name, **_depth(name, features_only=True, out_indices=out_indices),
                               device="meta").feature_info
    ours = fmodel.feature_info
    for accessor in ("channels", "reduction", "module_name", "get_dicts"):  # timm's FeatureInfo API
        for idx in (None, 1, [0, -1]):
            assert getattr(ours, accessor)(idx=idx) == getattr(theirs, accessor)(idx=idx), (accessor, idx)
    assert ours.out_indices == theirs.out_indices
    in_order = sorted(theirs.get_dicts(), key=lambda d: d["index"])
    assert [(d["num_chs"], d["reduction"], d["module"], d["index"]) for d in ours] == \
        [(d["num_chs"], d["reduction"], d["module"], d["index"]) for d in in_order]
    assert [d["num_chs"] for d in ours] == [o.shape[-1] for o in out]


def _kept_prefixes(fmodel):
    shapes = jax.eval_shape(fmodel.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
    return {rj.convert.flax_to_timm_key("params", (m, "")) for m in shapes["params"]}


def test_features_only_loads_a_full_checkpoint_and_prunes(tmp_path):
    from safetensors.torch import save_file
    tmodel = _timm("resnetv2_18d")
    path = tmp_path / "model.safetensors"
    save_file(tmodel.state_dict(), str(path))
    model, variables = rj.create_model("resnetv2_18d", checkpoint_path=str(path), features_only=True,
                                       out_indices=(0, 1))
    assert sorted(variables["params"]) == ["stages_0", "stem"]  # stages 1-3, norm and head pruned
    ref = _timm_features(tmodel, (0, 1))(torch.from_numpy(_x().transpose(0, 3, 1, 2).copy()))
    for o, r in zip(jit_apply(model, variables, _x()), ref):
        assert rel_err(o, r.detach().numpy().transpose(0, 2, 3, 1)) <= PARITY_TOL


@pytest.mark.parametrize("name", API_ARCHS)
def test_forward_features_and_head_match_timm(name):
    tmodel = _timm(name)
    model, variables = _ours(name, tmodel)
    x = _x()
    fmap = jit_apply(model, variables, x, method="forward_features")
    assert rel_err(fmap, timm_forward(tmodel, x, method="forward_features")) <= PARITY_TOL
    tfmap = torch.from_numpy(np.asarray(fmap).transpose(0, 3, 1, 2).copy())
    for pre_logits in (False, True):
        with torch.no_grad():
            ref = tmodel.forward_head(tfmap, pre_logits=pre_logits).numpy()
        out = jit_apply(model, variables, fmap, pre_logits=pre_logits, method="forward_head")
        assert out.shape == ref.shape and rel_err(out, ref) <= PARITY_TOL


# The head is each trunk's (forward_head in models/resnet.py, ClassifierHead in resnetv2.py),
# whatever the blocks: one architecture of each by default, the others under `-m slow`
HEAD_SLOW = ("resnest14d", "res2net50_26w_4s")


# Each pool's values are test_layers.py's (against timm's SelectAdaptivePool2d); in the model:
# the default, the one that doubles the features ('catavgmax') and none (ResNetV2's unpooled
# head; timm's v1 head flattens, so '' is 'avg' there) by default, the others under `-m slow`
POOL_CASES = [pytest.param(pool, name, id=f"{pool}-{name}", marks=pytest.mark.slow if name in HEAD_SLOW
                           or pool in ("max", "avgmax") or (pool == "" and not name.startswith("resnetv2")) else ())
              for pool in ("avg", "max", "avgmax", "catavgmax", "") for name in ARCHS]


@pytest.mark.parametrize("global_pool, name", POOL_CASES)
def test_global_pools_and_num_classes_match_timm(name, global_pool):
    if global_pool == "" and not name.startswith("resnetv2"):
        global_pool = "avg"  # timm's v1 ResNet head flattens, so it has no unpooled classifier
    for num_classes in (0, 10):
        tmodel = _timm(name, global_pool=global_pool, num_classes=num_classes)
        model, variables = _ours(name, tmodel, global_pool=global_pool, num_classes=num_classes)
        x = _x(64)
        out, ref = jit_apply(model, variables, x), timm_forward(tmodel, x)
        assert out.shape == ref.shape and rel_err(out, ref) <= PARITY_TOL
        assert model.head_hidden_size == tmodel.head_hidden_size


@pytest.mark.parametrize("name", API_ARCHS)
@pytest.mark.parametrize("in_chans", [1, 4])
def test_pretrained_in_chans_adapts_the_first_conv_as_timm(name, in_chans, tmp_path, monkeypatch):
    from safetensors.torch import save_file
    from timm.models import adapt_input_conv
    tag = rj.list_pretrained(name + ".*")[0]
    cfg = rj.get_pretrained_cfg(tag)
    rgb = _timm(name)
    src = tmp_path / "model.safetensors"
    save_file(rgb.state_dict(), str(src))
    cache = hub_cache(tmp_path / "hub", cfg["hf_hub_id"], {"model.safetensors": src})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, variables = rj.create_model(tag, pretrained=True, cache_dir=str(cache), **_depth(name, in_chans=in_chans))

    sd = rgb.state_dict()
    key = cfg["first_conv"] + ".weight"
    sd[key] = adapt_input_conv(in_chans, sd[key])
    tmodel = timm.create_model(name, **_depth(name, in_chans=in_chans)).eval()
    tmodel.load_state_dict(sd)
    x = _x(chans=in_chans)
    assert rel_err(jit_apply(model, variables, x), timm_forward(tmodel, x)) <= PARITY_TOL


# output_stride 8 dilates the last two stages (dilation 2 then 4, each stage's first block at the
# previous stage's): what 16 does to the last one, and more. 16 on one architecture per trunk by
# default, on the others under `-m slow`
OUTPUT_STRIDE_CASES = [pytest.param(stride, name, id=f"{stride}-{name}",
                                    marks=() if stride == 8 or name in SELECTION_ARCHS else pytest.mark.slow)
                       for stride in (16, 8) for name in API_ARCHS]


@pytest.mark.parametrize("output_stride, name", OUTPUT_STRIDE_CASES)
def test_output_stride_matches_timm(name, output_stride):
    tmodel = _timm(name, output_stride=output_stride)
    model, variables = _ours(name, tmodel, output_stride=output_stride)
    x = _x(64)
    fmap = jit_apply(model, variables, x, method="forward_features")
    assert fmap.shape[1] == -(-64 // output_stride)
    assert rel_err(fmap, timm_forward(tmodel, x, method="forward_features")) <= PARITY_TOL
    assert rel_err(jit_apply(model, variables, x), timm_forward(tmodel, x)) <= PARITY_TOL


@pytest.mark.parametrize("name, size, chans, pixels", [
    ("resnest101e", 256, (128, 256, 512, 1024, 2048), (128, 64, 32, 16, 8)),
    ("res2net101_26w_4s", 224, (64, 256, 512, 1024, 2048), (112, 56, 28, 14, 7)),
    ("resnetv2_50", 224, (64, 256, 512, 1024, 2048), (112, 56, 28, 14, 7)),
])
def test_seed_model_card_feature_maps(name, size, chans, pixels):
    model = rj.build_model(name, features_only=True)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    feats = jax.eval_shape(model.apply, shapes, x)
    assert [f.shape for f in feats] == [(1, p, p, c) for p, c in zip(pixels, chans)]
    assert [d["num_chs"] for d in model.feature_info] == list(chans)


# bf16 keeps 8 bits of mantissa: with bf16 compute (params and norm statistics in fp32), the
# logits of these perturbed models agree with fp32 to within 5% of the largest logit (measured:
# see the test's output); the top class is unchanged.
BF16_REL_BOUND = 5e-2


@pytest.mark.parametrize("name", ARCHS)
def test_bf16_compute_stays_within_bf16_precision(name):
    tmodel = _timm(name)
    model, variables = _ours(name, tmodel)
    bf16 = rj.build_model(name, **_depth(name, dtype=jnp.bfloat16))
    x = _x(64)
    ref, out = jit_apply(model, variables, x), jit_apply(bf16, variables, x)
    assert out.dtype == jnp.bfloat16
    err = rel_err(np.asarray(out, np.float32), ref)
    print(f"{name}: bf16 vs fp32 max|Δlogit|/max|logit| = {err:.2e}")
    assert err <= BF16_REL_BOUND
    assert (np.argmax(out, -1) == np.argmax(ref, -1)).all()


# Recomputation reassociates fp32 sums inside XLA's fusions, and train-mode BatchNorm over few
# samples with a one-class log-softmax amplifies rounding: resnest14d's gradients under plain
# jax.jit and under rj.jit (the same model, other fusions) differ by 2.3e-2 (5.4e-2 with split
# attention's splits kept apart), while remat and plain compiled alike (0.0 then; 5.4e-2 now; AMD
# EPYC avx512f). Bound: the parity tolerance, or twice the spread between those two compilations.
REMAT_GRAD_TOL = 1e-4
# nn.remat wraps whichever block each trunk holds (models/resnet.py, models/resnetv2.py): one
# architecture of each trunk by default, the other blocks under `-m slow` (34-63 s each, AMD EPYC)
REMAT_ARCHS = [pytest.param(n, marks=pytest.mark.slow) if n in ("resnest14d", "res2net50_26w_4s") else n
               for n in ARCHS]


@pytest.mark.parametrize("name", REMAT_ARCHS)
def test_gradient_checkpointing_gives_identical_gradients(name):
    tmodel = _timm(name)
    model, variables = _ours(name, tmodel, drop_path_rate=0.1)
    remat = rj.build_model(name, **_depth(name, drop_path_rate=0.1, grad_checkpointing=True))
    x, key = np.random.default_rng(0).standard_normal((4, 96, 96, 3)).astype(np.float32), jax.random.PRNGKey(3)

    def loss(params, m):
        logits, _ = m.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"],
                            rngs={"dropout": key})
        return jnp.mean(jax.nn.log_softmax(logits)[:, 0])

    g1 = jax.jit(jax.grad(loss), static_argnums=1)(variables["params"], model)
    g2 = jax.jit(jax.grad(loss), static_argnums=1)(variables["params"], remat)

    def worst(ga, gb):  # worst max|Δg|/max|g| over leaves
        leaves_a, leaves_b = jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)
        # a gradient that is zero in exact arithmetic (fc1's bias, just before a training-mode
        # BatchNorm) is rounding noise in both runs: compared on the scale of the largest gradient
        floor = 1e-4 * max(float(np.abs(g).max()) for g in leaves_a)
        return max(float(np.abs(b - a).max()) / max(float(np.abs(a).max()), floor) for a, b in zip(leaves_a, leaves_b))
    remat_err = worst(g1, g2)
    print(f"{name}: remat vs plain gradients {remat_err:.1e}")
    if remat_err > REMAT_GRAD_TOL:  # then within the spread of two compilations of the plain model
        spread = worst(g1, rj.jit(jax.grad(loss), static_argnums=1)(variables["params"], model))
        assert remat_err <= 2 * spread, (remat_err, spread)


@pytest.mark.parametrize("x, error, match", [
    (np.zeros((2, 3, 64, 64), np.float32), ValueError, "looks like NCHW"),
    (np.zeros((2, 64, 64, 4), np.float32), ValueError, r"\(batch, height, width, 3\)"),
    (np.zeros((64, 64, 3), np.float32), ValueError, "rank 3"),
    (np.zeros((2, 64, 64, 3), np.uint8), TypeError, "dtype uint8"),
])
@pytest.mark.parametrize("name", ARCHS)
def test_bad_inputs_get_one_clear_error(name, x, error, match):
    model = rj.build_model(name)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
    with pytest.raises(error, match=match):
        model.apply(variables, x)


def test_features_only_has_no_head():
    model, variables = rj.create_model("resnetv2_18", features_only=True)
    with pytest.raises(ValueError, match="features_only"):
        model.apply(variables, _x(64), method="forward_features")


@pytest.mark.parametrize("size, block_size, gamma_scale", [(14, 5, 0.25), (7, 3, 1.0), (4, 5, 0.25), (6, 2, 1.0)])
def test_drop_block_statistics_match_timm(size, block_size, gamma_scale):
    """Same random process as timm's DropBlock2d (different RNGs): the kept fraction and the
    rescaling agree over many draws; every dropped pixel lies in a dropped block."""
    from timm.layers import DropBlock2d as TimmDropBlock
    n, p = 10000, 0.2
    ours = rj.layers.DropBlock2d(p, block_size, gamma_scale)
    y = np.asarray(ours.apply({}, jnp.ones((n, size, size, 1)), train=True, rngs={"dropout": jax.random.PRNGKey(0)}))
    torch.manual_seed(0)
    ref = TimmDropBlock(p, block_size, gamma_scale).train()(torch.ones(n, 1, size, size)).numpy()
    per_sample_ours, per_sample_ref = (y > 0).mean(axis=(1, 2, 3)), (ref > 0).mean(axis=(1, 2, 3))
    noise = np.sqrt((per_sample_ours.var() + per_sample_ref.var()) / n)  # std of the difference of means
    assert abs(per_sample_ours.mean() - per_sample_ref.mean()) < 4 * noise + 1e-3
    # where blocks fall: the kept rate per pixel (lower where more block centres reach it)
    np.testing.assert_allclose((y > 0).mean(axis=(0, 3)), (ref > 0).mean(axis=(0, 1)), atol=0.04)
    np.testing.assert_allclose(y.mean(), 1.0, rtol=1e-4)  # rescaled by the kept fraction of the batch
    assert set(np.unique(y)) <= {0.0, float(y.max())}
    np.testing.assert_array_equal(ours.apply({}, jnp.ones((2, size, size, 1))), 1.0)  # eval: identity


@pytest.mark.parametrize("name", ["resnest14d", "resnest50d_1s4x24d", "res2net50_26w_4s", "resnet18", "resnet14t"])
def test_drop_block_rate_acts_in_training_only(name):
    tmodel = _timm(name)
    sd = timm_state_dict(tmodel)
    plain, dropped = rj.build_model(name, **_depth(name)), rj.build_model(name, **_depth(name, drop_block_rate=0.2))
    variables = rj.convert_timm_state_dict(plain, sd)
    x, rngs = _x(64), {"dropout": jax.random.PRNGKey(0)}
    np.testing.assert_array_equal(jit_apply(dropped, variables, x), jit_apply(plain, variables, x))
    train = lambda m: jit_apply(m, variables, x, train=True, mutable=["batch_stats"], rngs=rngs)[0]  # noqa: E731
    assert not np.allclose(train(dropped), train(plain))


# The stochastic layers (DropBlock with split attention and with selective kernels; drop path and
# dropout with FRN), at depth (1, 1, 1, 1), in both dtypes between them.
X64_CASES = [("resnest14d", "float32"), ("skresnet18", "float64"), ("resnetv2_50d_frn", "float32")]


@pytest.mark.parametrize("name, dtype", X64_CASES)
def test_training_under_jax_enable_x64_keeps_the_model_dtype(name, dtype):
    """With ``jax_enable_x64`` on (as in a float64 check), every layer and every stochastic layer
    (drop block, drop path, dropout) trains in the model's dtype: a Python float constant is
    float64 there, and one that meets a float32 array in a strict op (reduce_window) failed."""
    dtype = jnp.dtype(dtype)
    drops = {"drop_path_rate": 0.2, "drop_rate": 0.2}
    if not name.startswith("resnetv2"):
        drops["drop_block_rate"] = 0.2
    with jax.enable_x64(True):
        model = rj.build_model(name, layers=(1, 1, 1, 1), dtype=dtype, param_dtype=dtype, **drops)
        x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 64, 3)), dtype)
        # create_model's random init (each variable drawn as declared; the tree, shapes and dtypes
        # of model.init's: test_random_init.py), not jax.jit(model.init), which compiles for 10-15 s
        variables = rj.convert.init_variables(model, jax.random.PRNGKey(0), x)
        rngs = {"dropout": jax.random.PRNGKey(1), "drop_path": jax.random.PRNGKey(2)}
        y, updates = jax.jit(lambda v, x, r: model.apply(v, x, train=True, mutable=["batch_stats"], rngs=r))(
            variables, x, rngs)
    assert y.dtype == dtype and np.isfinite(np.asarray(y)).all()
    for stat in jax.tree.leaves(updates):
        assert np.isfinite(np.asarray(stat)).all()
