"""A random init without compiling the network (convert.random_init): the tree, shapes and dtypes
of ``model.init``, each variable drawn from the distribution its module declares (held against
``model.init``'s own draws), constants exact, deterministic in the rng; reset_classifier; the
compile cache on by default."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import resnets_jax as rj
from resnets_jax.convert import expected_variables, fresh_variables, init_variables
from resnets_jax.convert.keys import flat_variables
from resnets_jax.convert.random_init import declared_variables
from resnets_jax.layers import BatchNormAct2d, ClassifierHead, Conv2d, Normal, Uniform
from resnets_jax.layers.eca import Conv1d

# Two-sample Kolmogorov-Smirnov at a false-alarm rate of 1e-9 per variable: D is rejected above
# c * sqrt((n + m) / (n m)), c = sqrt(-ln(alpha / 2) / 2) (the asymptotic critical value).
KS_ALPHA = 1e-9
KS_C = np.sqrt(-np.log(KS_ALPHA / 2) / 2)


class Tiny(nn.Module):
    """Every kind of initializer the registered models declare, at sizes that make the
    distribution test strong: kaiming normal (Conv2d), BatchNorm's ones/zeros and running
    statistics, a zero-init-last norm, torch's uniform (ECA's Conv1d, ResNet's Linear), the head's
    normal(0.01); and two Flax-only ones the numpy path does not know (lecun_normal, a lambda)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Conv2d(64, 3, name="conv")(x)
        x = BatchNormAct2d(name="bn")(x, train)
        x = BatchNormAct2d(scale_init=nn.initializers.zeros, name="bn_last")(x, train)
        y = Conv1d(64, 5, name="conv1d")(x.mean(axis=1))
        self.variable("stats", "lambda_made", lambda: jnp.full((7,), 3.0))
        x = ClassifierHead(200, use_conv=True, name="head")(x + y.mean())
        x = nn.Dense(300, kernel_init=Uniform(1 / 8), bias_init=Uniform(1 / 8), name="fc")(x)
        return nn.Dense(50, kernel_init=nn.initializers.lecun_normal(), name="flax_dense")(x)


TINY_INPUT = jax.ShapeDtypeStruct((1, 8, 8, 32), jnp.float32)


@pytest.fixture(scope="module")
def tiny_reference():
    return flat_variables(jax.jit(Tiny().init)(jax.random.PRNGKey(0), jnp.zeros(TINY_INPUT.shape)))


def _ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.sort(a.ravel()), np.sort(b.ravel())
    both = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, both, "right") / a.size - np.searchsorted(b, both, "right") / b.size)))


def test_each_variable_has_model_inits_distribution(tiny_reference):
    ours = fresh_variables(Tiny(), jax.random.PRNGKey(1), TINY_INPUT)
    assert set(ours) == set(tiny_reference)
    for key, ref in tiny_reference.items():
        got, ref = np.asarray(ours[key]), np.asarray(ref)
        assert (got.shape, got.dtype) == (ref.shape, ref.dtype), key
        if np.all(ref == ref.flat[0]):  # a constant init: exactly its value
            np.testing.assert_array_equal(got, ref, err_msg=str(key))
            continue
        n = ref.size
        d = _ks_statistic(got, ref)
        assert d < KS_C * np.sqrt(2 / n), (key, d, n)  # same distribution, shape and scale
        assert not np.array_equal(got, ref)


def test_tree_shapes_dtypes_and_determinism():
    model = rj.build_model("resnetv2_18", num_classes=10, param_dtype=jnp.bfloat16)
    a = init_variables(model, jax.random.PRNGKey(3))
    abstract = jax.eval_shape(model.init, {"params": jax.random.PRNGKey(0)}, jnp.zeros((1, 64, 64, 3)))
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(abstract)
    assert jax.tree_util.tree_map(lambda v: (v.shape, v.dtype), a) == \
        jax.tree_util.tree_map(lambda v: (v.shape, v.dtype), abstract)
    b = init_variables(model, jax.random.PRNGKey(3))
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    c = flat_variables(init_variables(model, jax.random.key(4)))  # a typed key works too
    kernel = ("params", ("stem", "conv", "kernel"))
    assert not np.array_equal(flat_variables(a)[kernel], c[kernel])
    # a variable's value depends on the rng and its path only: drawn alone, it is the same
    head = {k for k in flat_variables(a) if k[1][0] == "head"}
    alone = fresh_variables(model, jax.random.PRNGKey(3), only=head)
    assert set(alone) == head and all(np.array_equal(alone[k], flat_variables(a)[k]) for k in head)
    with pytest.raises(TypeError, match="expected a PRNG key"):
        init_variables(model, 3)


def test_module_that_cannot_be_replayed_falls_back_to_model_init():
    class TakesArray(nn.Module):  # an array argument to the initializer: only model.init can make it
        @nn.compact
        def __call__(self, x):
            return x * self.param("w", lambda key, like: jnp.ones_like(like) * 2, jnp.zeros((3,)))

    spec = jax.ShapeDtypeStruct((2, 3), jnp.float32)
    assert not declared_variables(TakesArray(), spec)[0].replayable
    out = fresh_variables(TakesArray(), example_input=spec)
    np.testing.assert_array_equal(out[("params", ("w",))], np.full((3,), 2.0, np.float32))


def test_initializers_numpy_and_jax_agree_on_scale():
    shape = (3, 3, 16, 32)
    gen = np.random.default_rng(0)
    for init, std in [(Normal(np.sqrt(2), "fan_out"), np.sqrt(2 / (32 * 9))), (Normal(0.01), 0.01),
                      (Uniform(1.0, "fan_in"), 1 / np.sqrt(16 * 9) / np.sqrt(3))]:
        drawn = init.draw_numpy(gen, shape, jnp.float32)
        assert drawn.dtype == np.float32 and drawn.shape == shape
        # sample std of n draws: relative standard error below 1/sqrt(n) for these; 6 of them
        assert abs(drawn.std() / std - 1) < 6 / np.sqrt(drawn.size), (init, drawn.std(), std)
    with pytest.raises(ValueError, match="fan_sideways"):
        Normal(1.0, "fan_sideways").scale(shape)


# ----------------------------------------------------------------------------- reset_classifier

@pytest.mark.parametrize("name, head", [("resnet18", ("fc",)), ("resnetv2_18", ("head", "fc"))])
def test_reset_classifier(name, head):
    model, variables = rj.create_model(name)
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    new, new_vars = rj.reset_classifier(model, variables, 7, rng=jax.random.PRNGKey(9))
    assert new.num_classes == 7 and jax.eval_shape(new.apply, new_vars, x).shape == (2, 7)
    old_flat, new_flat = flat_variables(variables), flat_variables(new_vars)
    trunk = [k for k in old_flat if k[1][:len(head)] != head]
    assert all(new_flat[k] is old_flat[k] for k in trunk)  # kept, the same arrays
    fresh = fresh_variables(new, jax.random.PRNGKey(9), only={k for k in new_flat if k[1][:len(head)] == head})
    assert fresh and all(np.array_equal(new_flat[k], v) for k, v in fresh.items())
    # num_classes=0: pooled features; a pool that doubles the width: the new head fits it
    feats, feats_vars = rj.reset_classifier(model, variables, 0, global_pool="catavgmax")
    width = jax.eval_shape(functools.partial(model.apply, method="forward_features"), variables, x).shape[-1]
    assert jax.eval_shape(feats.apply, feats_vars, x).shape == (2, 2 * width)
    again, again_vars = rj.reset_classifier(feats, feats_vars, 3)
    assert again.global_pool == "catavgmax" and jax.eval_shape(again.apply, again_vars, x).shape == (2, 3)


def test_reset_classifier_errors():
    model, variables = rj.create_model("resnet18")
    with pytest.raises(ValueError, match="num_classes must be an int >= 0"):
        rj.reset_classifier(model, variables, -1)
    with pytest.raises(ValueError, match="global_pool must be one of"):
        rj.reset_classifier(model, variables, 3, global_pool="median")
    with pytest.raises(ValueError, match="lack"):
        rj.reset_classifier(model, {"params": {}}, 3)
    features = rj.build_model("resnet18", features_only=True)
    with pytest.raises(ValueError, match="features_only"):
        rj.reset_classifier(features, {}, 3)


def test_nnx_reset_classifier_in_place():
    from flax import nnx
    import resnets_jax.nnx as rjn
    model = rjn.create_model("resnetv2_18", rngs=nnx.Rngs(0))
    stem = model.stem["conv"]["kernel"]
    model.reset_classifier(5)
    module, variables = rjn.to_linen(model)
    assert module.num_classes == 5 and variables["params"]["head"]["fc"]["kernel"].shape == (1, 1, 512, 5)
    assert model.stem["conv"]["kernel"] is stem  # the trunk's variables are the same objects
    model.reset_classifier(0)
    module, variables = rjn.to_linen(model)
    assert "head" not in variables["params"]
    assert jax.eval_shape(module.apply, variables, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)).shape == (1, 512)


# ----------------------------------------------------------------------------- the compile cache

def test_import_turns_the_compile_cache_on_unless_told_or_set(tmp_path, monkeypatch):
    from resnets_jax import xla
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    suite = {n: getattr(jax.config, n) for n in names}  # the suite's own cache (conftest)
    jax.config.update("jax_compilation_cache_dir", None)  # as in a process with none set
    before = {n: getattr(jax.config, n) for n in names}
    monkeypatch.delenv(xla.NO_COMPILE_CACHE_ENV, raising=False)
    monkeypatch.delenv(xla.MIN_COMPILE_TIME_ENV, raising=False)
    monkeypatch.setenv("RESNETS_JAX_CACHE_DIR", str(tmp_path))
    try:
        assert xla.default_compilation_cache() == str(tmp_path / "xla")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == xla.MIN_CACHED_COMPILE_SECS
        xla.disable_default_compilation_cache()  # resnets-jax --no-compile-cache
        assert {n: getattr(jax.config, n) for n in names} == before
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))  # the user's own: left alone
        assert xla.default_compilation_cache() is None
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
        jax.config.update("jax_compilation_cache_dir", before["jax_compilation_cache_dir"])
        for off in [{xla.NO_COMPILE_CACHE_ENV: "1"}, {"RESNETS_JAX_CACHE_DIR": ""}]:
            with monkeypatch.context() as m:
                for k, v in off.items():
                    m.setenv(k, v)
                assert xla.default_compilation_cache() is None
                assert jax.config.jax_compilation_cache_dir == before["jax_compilation_cache_dir"]
    finally:
        for n, v in suite.items():
            jax.config.update(n, v)


@pytest.mark.parametrize("name", ["seresnext26d_32x4d", "resnest14d"])
def test_each_variable_has_timms_init_distribution(name):
    """A fresh model's every variable against timm's own init of it, on the blocks with biased
    convs (SE's and split attention's fc1/fc2, which timm leaves at torch's default uniform), at
    depth (1, 1, 1, 1) on both sides: the same distribution by the KS test above (a constant must
    be equal). The other initializers are held to model.init's above."""
    timm = pytest.importorskip("timm")  # the reference (the [dev] extra; make test installs it)
    theirs = {k: v.numpy() for k, v in timm.create_model(name, layers=[1, 1, 1, 1]).state_dict().items()
              if v.is_floating_point()}
    model, variables = rj.create_model(name, layers=(1, 1, 1, 1), rng=jax.random.PRNGKey(1))
    ours = rj.export_timm_state_dict(model, variables)
    for key, t in theirs.items():
        o = np.asarray(ours[key], np.float32)
        if t.std() == 0 or o.std() == 0:
            np.testing.assert_array_equal(o, t, err_msg=key)
            continue
        bound = KS_C * np.sqrt(2 / t.size)
        assert _ks_statistic(o, t) <= bound, key
