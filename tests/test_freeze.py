"""Freezing the trunk as ``timm.utils.freeze`` does, in linen (``make_train_step(frozen=...)``,
``frozen_norms``) and NNX (``resnets_jax.nnx.freeze``): the training-mode forward equals timm's
after its freeze (BatchNorm on running statistics, ``FrozenBatchNorm2d``), and after two training
steps the trunk's parameters and running statistics are bit-identical, its features unchanged,
while the head has moved."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import resnets_jax as rj
import resnets_jax.nnx as rjn
from resnets_jax.train import TrainState, frozen_mask, frozen_norms, make_optimizer, make_train_step, trunk
from timm_ref import PARITY_TOL, jit_apply, perturb_, rel_err, timm_state_dict

timm = pytest.importorskip("timm")  # the reference (the [dev] extra)
torch = pytest.importorskip("torch")

MODEL = "resnetv2_18d"  # pre-activation BatchNorm everywhere, a final norm in the trunk, a conv head
NUM_CLASSES = 3
SIZE = 32
BATCH = 4
STEPS = 2


@pytest.fixture(scope="module")
def perturbed():
    """timm's model with every parameter and running statistic perturbed, and ours with its weights."""
    torch.manual_seed(0)
    tm = perturb_(timm.create_model(MODEL, num_classes=NUM_CLASSES))
    model = rj.build_model(MODEL, num_classes=NUM_CLASSES)  # the weights come from timm: no init
    return tm, model, rj.convert_timm_state_dict(model, timm_state_dict(tm))


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((BATCH, SIZE, SIZE, 3)).astype(np.float32),
            (np.arange(BATCH) % NUM_CLASSES).astype(np.int32))


def _trunk_unchanged_head_moved(model, before, after, x):
    names = trunk(before)
    for col in ("params", "batch_stats"):
        keep = frozen_mask(before[col], names, strict=col == "params")
        for k, a, b in zip(jax.tree_util.tree_leaves(keep), jax.tree_util.tree_leaves(before[col]),
                           jax.tree_util.tree_leaves(after[col])):
            if k:
                np.testing.assert_array_equal(np.asarray(b), np.asarray(a))  # bit for bit
    head = [(a, after["params"]["head"][k]) for k, a in before["params"]["head"].items()]
    assert any(not np.array_equal(a["kernel"], b["kernel"]) for a, b in head), "the head did not train"
    features = [np.asarray(jit_apply(model, v, x, method="forward_features")) for v in (before, after)]
    np.testing.assert_array_equal(features[1], features[0])


def test_frozen_forward_matches_timm_freeze(perturbed):
    """timm's ``freeze`` of every child but the head, then ``model.train()``: the same logits as ours
    under ``frozen_norms(trunk)``; and without the freeze the two differ (the check can fail)."""
    tm, model, variables = perturbed
    x, _ = _batch()
    with frozen_norms(trunk(variables)):
        ours, updates = jit_apply(model, variables, x, train=True, mutable=["batch_stats"])
    plain, _ = jit_apply(model, variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(  # running statistics untouched
        np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(updates["batch_stats"])]),
        np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(variables["batch_stats"])]))
    from timm.utils import freeze
    freeze(tm, [n for n, _ in tm.named_children() if n != "head"])
    tm.train()
    with torch.no_grad():
        theirs = tm(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    assert rel_err(np.asarray(ours), theirs) <= PARITY_TOL
    assert rel_err(np.asarray(plain), theirs) > 100 * PARITY_TOL


def test_linen_train_step_keeps_frozen_trunk(perturbed):
    _, model, variables = perturbed
    x, y = _batch()
    # SGD with momentum and weight decay: a frozen parameter would move by the decay alone
    tx = make_optimizer("sgd", lr=0.1, total_steps=10, weight_decay=1e-2)
    step = jax.jit(make_train_step(model, tx, frozen=trunk(variables)))
    state = TrainState.create(variables, tx)
    for i in range(STEPS):
        state, _ = step(state, {"image": x, "label": y}, jax.random.PRNGKey(i))
    _trunk_unchanged_head_moved(model, variables, jax.device_get(state.variables), x)
    with pytest.raises(ValueError, match="no submodule stages_9"):
        make_train_step(model, tx, frozen=["stages_9"])(state, {"image": x, "label": y}, jax.random.PRNGKey(0))


def test_nnx_freeze_keeps_trunk(perturbed):
    """The recipe of docs/nnx.md: ``wrt = rjn.freeze(model)`` for the optimizer and the gradient."""
    _, module, variables = perturbed
    model = rjn.from_linen(module, variables)
    wrt = rjn.freeze(model)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=wrt)
    x, y = _batch()

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model)
        optimizer.update(model, grads)
        return loss

    model.train()
    for _ in range(STEPS):
        train_step(model, optimizer, jnp.asarray(x), jnp.asarray(y))
    model.eval()
    _trunk_unchanged_head_moved(module, variables, jax.device_get(rjn.to_linen(model)[1]), x)
    with pytest.raises(ValueError, match="no submodule nope"):
        rjn.freeze(model, ["nope"])
    assert trunk({"conv1_0": {}, "bn1": {}, "layer1_0": {}, "fc": {}}) == ("conv1_0", "bn1", "layer1_0")  # ResNet v1
    with pytest.raises(ValueError, match="no classifier"):
        trunk({"params": {"stem_conv": {}, "stages_0": {}}})
