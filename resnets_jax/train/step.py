"""One training step in timm's ``model.train()`` mode: batch statistics (running stats updated
with torch's momentum and unbiased variance), dropout and drop path from the ``'dropout'`` RNG,
a label-smoothed cross-entropy, and an optax update; and the optimizers timm fine-tunes with
(SGD with momentum, AdamW) behind a warmup + cosine schedule, with weight decay on conv/linear
kernels only (timm's ``param_groups_weight_decay``).

    tx = make_optimizer("adamw", lr=1e-3, weight_decay=0.05, total_steps=1000, warmup_steps=100)
    state = TrainState.create(variables, tx)
    step = DataParallel().jit_step(make_train_step(model, tx, label_smoothing=0.1))
    state, metrics = step(state, {"image": x, "label": y}, rng)
"""
from typing import Any, Callable, Dict, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from .freeze import frozen_mask, frozen_norms

OPTIMIZERS = ("sgd", "momentum", "adamw")  # timm's names: 'sgd' is SGD with Nesterov momentum
ADAMW_BETAS = (0.9, 0.999)  # torch.optim.AdamW's (and timm's) defaults
ADAMW_EPS = 1e-8


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: parameters, running statistics (empty for GroupNorm, EvoNorm
    and FRN models) and the optimizer state, with the step count."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    @classmethod
    def create(cls, variables: Dict[str, Any], tx: optax.GradientTransformation) -> "TrainState":
        params = variables["params"]
        return cls(step=jnp.zeros((), jnp.int32), params=params,
                   batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))

    @property
    def variables(self) -> Dict[str, Any]:
        """The model's variables, for ``model.apply`` or ``export_timm_state_dict``."""
        return {"params": self.params, "batch_stats": self.batch_stats} if self.batch_stats else {"params": self.params}


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean cross-entropy against integer ``labels`` smoothed as timm's
    ``LabelSmoothingCrossEntropy``: ``(1 - s) * nll + s * mean(-log p)`` over the classes."""
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()


def make_loss_fn(model, label_smoothing: float = 0.0, frozen: Sequence[str] = ()) -> Callable:
    """``loss_fn(params, batch_stats, batch, rng) -> (loss, (logits, updated batch_stats))``:
    the training-mode forward and loss a train step differentiates; BatchNorm under the
    ``frozen`` submodules runs on its running statistics (``freeze.frozen_norms``)."""

    def loss_fn(params, batch_stats, batch: Dict[str, jax.Array], rng: jax.Array):
        with frozen_norms(frozen):
            logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"],
                                          train=True, mutable=["batch_stats"], rngs={"dropout": rng})
        loss = cross_entropy(logits, batch["label"], label_smoothing)
        return loss, (logits, updates.get("batch_stats", batch_stats))

    return loss_fn


def make_train_step(model, tx: optax.GradientTransformation, label_smoothing: float = 0.0,
                    frozen: Sequence[str] = ()) -> Callable:
    """``train_step(state, batch, rng) -> (state, metrics)`` for ``batch = {"image": (B, H, W, C)
    float, "label": (B,) int}``; the RNG is folded with the step so each step draws anew.
    Metrics: ``loss`` and ``accuracy`` (top-1) over the batch. Jit it, or shard it with
    ``DataParallel.jit_step``.

    ``frozen``: submodules kept exactly, as ``timm.utils.freeze`` (``freeze.trunk(variables)``: all
    but the classifier): no gradient, their parameters and BatchNorm statistics come out
    bit-identical (the optimizer's proposed updates for them are dropped, weight decay included),
    and their BatchNorm normalizes with the running statistics. Raises ``ValueError`` naming a
    submodule the model lacks (when traced)."""
    grad_fn = jax.value_and_grad(make_loss_fn(model, label_smoothing, frozen), has_aux=True)

    def train_step(state: TrainState, batch: Dict[str, jax.Array], rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        keep = frozen_mask(state.params, frozen) if frozen else None
        params = state.params if keep is None else jax.tree_util.tree_map(
            lambda p, k: jax.lax.stop_gradient(p) if k else p, state.params, keep)
        (loss, (logits, batch_stats)), grads = grad_fn(params, state.batch_stats, batch, rng)
        steps, opt_state = tx.update(grads, state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, steps)
        if keep is not None:  # the frozen leaves as they were (p + 0 would turn -0.0 into 0.0)
            new_params = jax.tree_util.tree_map(lambda p, n, k: p if k else n, state.params, new_params, keep)
        metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}
        return state.replace(step=state.step + 1, params=new_params, batch_stats=batch_stats,
                             opt_state=opt_state), metrics

    return train_step


def weight_decay_mask(params: Any) -> Any:
    """True for the parameters weight decay applies to: conv and linear kernels. Norm scales
    and biases, biases, EvoNorm's ``v`` and FRN's ``tau`` (every parameter of at most one
    dimension) are left alone, as timm's ``param_groups_weight_decay``."""
    return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def warmup_cosine_schedule(lr: float, total_steps: int, warmup_steps: int = 0, warmup_lr: float = 1e-5,
                           min_lr: float = 0.0) -> optax.Schedule:
    """A linear warmup from ``warmup_lr`` to ``lr`` over ``warmup_steps`` optimizer updates, then
    a cosine decay to ``min_lr`` at ``total_steps`` (timm's ``CosineLRScheduler`` per update,
    without restarts)."""
    if total_steps < 1 or not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must be in [0, total_steps) = [0, {total_steps})")
    return optax.warmup_cosine_decay_schedule(warmup_lr if warmup_steps else lr, lr, warmup_steps, total_steps,
                                              end_value=min_lr)


def make_optimizer(opt: str, lr: float, total_steps: int, *, warmup_steps: int = 0, warmup_lr: float = 1e-5,
                   min_lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                   accum_steps: int = 1) -> optax.GradientTransformation:
    """An optax optimizer as timm builds it: ``opt`` is ``'sgd'`` (Nesterov momentum; torch's
    SGD adds ``weight_decay * param`` to the gradient before the momentum), ``'momentum'`` (the
    same without Nesterov) or ``'adamw'`` (decoupled decay), on ``warmup_cosine_schedule``;
    decay only where ``weight_decay_mask`` says. ``total_steps`` and ``warmup_steps`` count
    optimizer updates. ``accum_steps > 1`` averages the gradients of that many train steps
    into one update (``optax.MultiSteps``)."""
    if opt not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {opt!r}: expected one of {', '.join(OPTIMIZERS)}")
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be at least 1, got {accum_steps}")
    schedule = warmup_cosine_schedule(lr, total_steps, warmup_steps, warmup_lr, min_lr)
    if opt == "adamw":
        tx = optax.adamw(schedule, *ADAMW_BETAS, eps=ADAMW_EPS, weight_decay=weight_decay, mask=weight_decay_mask)
    else:
        tx = optax.chain(optax.add_decayed_weights(weight_decay, weight_decay_mask),
                         optax.sgd(schedule, momentum=momentum, nesterov=opt == "sgd"))
    if accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accum_steps).gradient_transformation()
    return tx
