"""The NNX front door (``resnets_jax.nnx``): the same numbers as the linen model it wraps, in eval
and training mode, trainable with ``nnx.jit`` / ``nnx.value_and_grad`` / ``nnx.Optimizer``, and
exported back to linen variables and timm's state dict."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import resnets_jax as rj
import resnets_jax.nnx as rjn

# one small architecture per family; Res2Net at depths (2, 1, 1, 1) (timm's `layers` override):
# every kind of block at a fraction of the compile time. resnetv2_50d_gn: no running statistics.
CASES = {"resnetv2_18d": {}, "resnest14d": {}, "res2net50_26w_4s": dict(layers=(2, 1, 1, 1)),
         "resnetv2_50d_gn": dict(layers=(1, 1, 1, 1)),
         "resnet10t": {}}  # timm's resnet.py (BasicBlocks, tiered stem; at its own depths (1, 1, 1, 1))
BN_CASES = ["resnetv2_18d", "resnest14d", "res2net50_26w_4s"]
NUM_CLASSES = 5
SIZE = 45  # not a multiple of 32: odd maps at every stride


def _perturbed(name, **kwargs):
    """A linen model and its variables with every leaf moved off timm's init (norms at identity
    would hide running statistics routed to the wrong place); running variances stay positive."""
    module, variables = rj.create_model(name, num_classes=NUM_CLASSES, rng=jax.random.PRNGKey(0),
                                        **CASES[name], **kwargs)
    return module, _perturb(variables)


def _perturb(variables):
    """Host-side draws (numpy): op by op, JAX compiles a random draw per leaf shape (12 s for
    resnet10t), and jitted, the unrolled draws compile as slowly."""
    rng = np.random.default_rng(1)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    out = []
    for path, v in leaves:
        if not jnp.issubdtype(v.dtype, jnp.floating):  # a step count
            out.append(v)
            continue
        v, noise = np.asarray(v), 0.2 * rng.standard_normal(v.shape).astype(v.dtype)
        out.append(jnp.asarray(v * np.exp(noise) if jax.tree_util.keystr(path).endswith("['var']") else v + noise))
    return jax.tree_util.tree_unflatten(treedef, out)


def _x(batch=2, seed=2):
    return jax.random.normal(jax.random.PRNGKey(seed), (batch, SIZE, SIZE, 3), jnp.float32)


# The wrapper is the same whatever the blocks (running statistics or none, either trunk): those
# three by default, ResNeSt and Res2Net under `-m slow` (13-17 s each, AMD EPYC)
MODE_CASES = [pytest.param(n, marks=pytest.mark.slow) if n in ("resnest14d", "res2net50_26w_4s") else n for n in CASES]


# Both sides jitted (op by op, each call compiled its ops afresh: 30 s a model): the same linen
# function on the same arrays compiles to the same program, so the numbers are equal, not close
_call = nnx.jit(lambda m, x: m(x))
_features = nnx.jit(lambda m, x: m.forward_features(x))
_linen = jax.jit(lambda module, *a, **kw: module.apply(*a, **kw), static_argnums=0,
                 static_argnames=("method", "train", "mutable"))


@pytest.mark.parametrize("name", MODE_CASES)
def test_eval_and_train_mode_match_linen(name):
    module, variables = _perturbed(name)
    model = rjn.from_linen(module, variables)
    x = _x()
    np.testing.assert_array_equal(_call(model, x), _linen(module, variables, x))
    np.testing.assert_array_equal(_features(model, x), _linen(module, variables, x, method="forward_features"))

    model.train()
    assert not model.use_running_average and not model.deterministic
    logits, updates = _linen(module, variables, x, train=True, mutable=("batch_stats",))
    np.testing.assert_array_equal(_call(model, x), logits)
    _, after = rjn.to_linen(model)
    assert jax.tree_util.tree_structure(after) == jax.tree_util.tree_structure(variables)
    if "batch_stats" in variables:  # the running statistics moved, and to where linen moved them
        jax.tree_util.tree_map(np.testing.assert_array_equal, after["batch_stats"], updates["batch_stats"])
        assert not np.allclose(jax.tree_util.tree_leaves(after["batch_stats"])[0],
                               jax.tree_util.tree_leaves(variables["batch_stats"])[0])
    jax.tree_util.tree_map(np.testing.assert_array_equal, after["params"], variables["params"])

    model.eval()  # back to running statistics: the updated ones
    np.testing.assert_array_equal(_call(model, x), _linen(module, after, x))
    view = nnx.view(model, use_running_average=False, deterministic=False)  # a training-mode view
    assert model.use_running_average and not view.use_running_average


def test_create_model_loads_as_linen(tmp_path):
    module, variables = _perturbed("resnetv2_18d")
    path = rj.save_checkpoint(module, variables, str(tmp_path / "m.safetensors"))
    model = rjn.create_model("resnetv2_18d", checkpoint_path=path, num_classes=NUM_CLASSES)
    jax.tree_util.tree_map(np.testing.assert_array_equal, rjn.to_linen(model)[1], variables)
    # a random init draws from rngs.params(), as linen's from its rng
    a = rjn.create_model("resnetv2_18d", num_classes=NUM_CLASSES, rngs=nnx.Rngs(params=3))
    _, b = rj.create_model("resnetv2_18d", num_classes=NUM_CLASSES, rng=nnx.Rngs(params=3).params())
    jax.tree_util.tree_map(np.testing.assert_array_equal, rjn.to_linen(a)[1], b)


def test_dropout_keys_come_from_rngs():
    def model(seed):
        return rjn.create_model("resnetv2_18d", num_classes=NUM_CLASSES, drop_path_rate=0.5,
                                rngs=nnx.Rngs(params=0, dropout=seed))
    m, x = model(0), _x()
    m.train()
    first, second = _call(m, x), _call(m, x)
    assert not np.allclose(first, second)  # a new drop path draw each call (the key state moves under nnx.jit)
    m2 = model(0)
    m2.train()
    np.testing.assert_array_equal(_call(m2, x), first)  # the same stream, the same draws
    m.eval()
    np.testing.assert_array_equal(_call(m, x), _call(m, x))  # eval: no dropout, nothing drawn


def test_jitted_train_step_lowers_loss_and_exports():
    module, variables = _perturbed("resnetv2_18d")
    model = rjn.from_linen(module, variables)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
    x, y = _x(batch=4), jnp.arange(4) % NUM_CLASSES

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    model.train()
    losses = [float(train_step(model, optimizer, x, y)) for _ in range(4)]
    assert losses[-1] < losses[0], losses
    _, trained = rjn.to_linen(model)
    for col in ("params", "batch_stats"):  # both moved: parameters by the optimizer, statistics by the step
        moved = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), trained[col], variables[col])
        assert all(jax.tree_util.tree_leaves(moved)), col

    model.eval()
    np.testing.assert_array_equal(_call(model, x), _linen(module, trained, x))
    sd = rjn.export_timm_state_dict(model)
    ref = rj.export_timm_state_dict(module, trained)
    assert sd.keys() == ref.keys()
    for k in sd:
        np.testing.assert_array_equal(sd[k], ref[k])


@pytest.mark.parametrize("name", list(CASES))
def test_parameter_count_and_timm_export(name):
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    model = rjn.create_model(name, num_classes=NUM_CLASSES, **CASES[name])
    ref = timm.create_model(name, num_classes=NUM_CLASSES, **CASES[name])
    count = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
    assert count == sum(p.numel() for p in ref.parameters())
    ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in rjn.export_timm_state_dict(model).items()})
