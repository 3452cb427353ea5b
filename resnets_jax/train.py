"""One training step in timm's ``model.train()`` mode: batch statistics (running stats updated
with torch's momentum and unbiased variance), dropout and drop path from the ``'dropout'`` RNG,
a label-smoothed cross-entropy, and an optax update.

    state = TrainState.create(variables, tx)
    step = DataParallel().jit_step(make_train_step(model, tx, label_smoothing=0.1))
    state, metrics = step(state, {"image": x, "label": y}, rng)
"""
from typing import Any, Callable, Dict

import flax
import jax
import jax.numpy as jnp
import optax


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


def make_train_step(model, tx: optax.GradientTransformation, label_smoothing: float = 0.0) -> Callable:
    """``train_step(state, batch, rng) -> (state, metrics)`` for ``batch = {"image": (B, H, W, C)
    float, "label": (B,) int}``; the RNG is folded with the step so each step draws anew.
    Metrics: ``loss`` and ``accuracy`` (top-1) over the batch. Jit it, or shard it with
    ``DataParallel.jit_step``."""

    def train_step(state: TrainState, batch: Dict[str, jax.Array], rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            logits, updates = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"],
                                          rngs={"dropout": rng})
            return cross_entropy(logits, batch["label"], label_smoothing), (logits, updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        steps, opt_state = tx.update(grads, state.opt_state, state.params)
        metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}
        return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, steps),
                             batch_stats=updates.get("batch_stats", state.batch_stats), opt_state=opt_state), metrics

    return train_step
