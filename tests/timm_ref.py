"""Shared test helpers: perturbed timm models, their outputs, and the tolerances we hold
ours to. Test modules import this module by name (pytest puts tests/ on sys.path), never
``conftest``."""
import jax
import numpy as np

# max |Δlogit| / max |logit| allowed for fp32 logits against timm's, per backend. Eval-mode
# logits are continuous in every rounding (ReLU and max are continuous; only their derivatives
# jump, which is what makes training steps ill-conditioned: docs/exactness.md), so fp32 logits
# carry fp32 rounding grown over the depth, well under this bound.
PARITY_TOL = {"cpu": 1e-4, "gpu": 1e-4, "tpu": 1e-4}[jax.default_backend()]

# The numerics-sensitive tests run under both: XLA's defaults (plain jax.jit) and the options
# we recommend (rj.jit / rj.compiler_options(); the same as the defaults off CPU).
OPTION_SETS = ("xla-defaults", "rj-options")


def compiler_options_for(option_set: str) -> dict:
    import resnets_jax as rj
    return {"xla-defaults": {}, "rj-options": rj.compiler_options()}[option_set]


def perturb_(model, seed: int = 0):
    """Perturb every parameter and buffer in place. timm's init makes norms an identity
    (weight 1, bias 0, mean 0, var 1), which would hide a mis-mapped norm."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                t.copy_(torch.randint(1, 1000, t.shape, generator=g))
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.ndim <= 1:  # norm weight/bias, running_mean, conv/fc bias, EvoNorm v, FRN tau
                t.add_(0.2 * torch.randn(t.shape, generator=g))
            else:  # conv/linear weights: keep the init's scale, break its symmetry
                t.mul_(1 + 0.2 * torch.randn(t.shape, generator=g)).add_(0.01 * torch.randn(t.shape, generator=g))
    return model


def timm_state_dict(model) -> dict:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def timm_forward(model, x_nhwc: np.ndarray, device: str = "cpu", method: str = "forward") -> np.ndarray:
    import torch
    model = model.to(device).eval()
    x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))).to(device)
    with torch.no_grad():
        y = getattr(model, method)(x)
    y = y.detach().cpu().numpy()
    return y.transpose(0, 2, 3, 1) if y.ndim == 4 else y


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


# Training steps with their ReLU decisions held (docs/exactness.md): an fp32 step is only as exact
# as its ReLU decisions, so comparisons that should be tight hold them, the same on both sides.

def relu_inputs(model, variables, x, rng=None) -> dict:
    """Every BatchNormAct2d's input to its ReLU in a training-mode forward (``rng``: the
    ``'dropout'`` key), by module path ("stages_3/blocks_1/norm2"); and under "drop/<path>"
    every DropPath's per-sample keep decisions, (B,) bool."""
    from flax import linen as nn
    from resnets_jax.layers import DropPath
    from resnets_jax.layers.norm import BatchNormAct2d
    found = {}

    def grab(next_fun, args, kwargs, context):
        m, y = context.module, next_fun(*args, **kwargs)
        if context.method_name == "__call__" and isinstance(m, BatchNormAct2d) and m.apply_act:
            found["/".join(m.path)] = _norm_only(m, args, kwargs)
        if context.method_name == "__call__" and isinstance(m, DropPath) and args[1:2] == (True,) and m.rate:
            found["drop/" + "/".join(m.path)] = (y != 0).reshape(y.shape[0], -1).any(axis=1)
        return y

    def f(v, x):
        with nn.intercept_methods(grab):
            model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": rng} if rng is not None else {})
        return dict(found)
    return jax.jit(f)(variables, x)


def _norm_only(m, args, kwargs):
    return m.clone(parent=None, apply_act=False).apply(m.variables, *args, mutable=["batch_stats"], **kwargs)[0]


def with_decisions(step_fn, decisions: dict):
    """``step_fn(state, batch, rng)`` with every BatchNormAct2d's ReLU replaced by its input
    times ``decisions`` (0/1 arrays by module path, as ``relu_inputs(...) > 0``): a step that is
    smooth in its inputs. Running statistics update as usual."""
    from flax import linen as nn
    from resnets_jax.layers.norm import BatchNormAct2d

    def held(next_fun, args, kwargs, context):
        m = context.module
        if context.method_name == "__call__" and isinstance(m, BatchNormAct2d) and m.apply_act:
            next_fun(*args, **kwargs)  # the running statistics' update
            pre = _norm_only(m, args, kwargs)
            return pre * jax.numpy.asarray(decisions["/".join(m.path)]).astype(pre.dtype)
        return next_fun(*args, **kwargs)

    def step(state, batch, rng):
        with nn.intercept_methods(held):
            return step_fn(state, batch, rng)
    return step
