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


def jit_apply(module, variables, *args, **kwargs):
    """``module.apply(variables, *args, **kwargs)``, jitted: op by op, each of a network's few
    hundred small ops compiles on first use, slower than compiling the network once (tens of
    seconds against a few for a ResNet-50 on 2 CPU cores)."""
    return jax.jit(lambda v, *a: module.apply(v, *a, **kwargs))(variables, *args)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def norm_err(ours: dict, ref: dict) -> float:
    """||ours - ref|| / ||ref|| over every entry of ``ref`` (e.g. every parameter's gradient)."""
    keys = sorted(ref)
    return float(np.sqrt(sum(np.sum((np.asarray(ours[k], np.float64) - ref[k]) ** 2) for k in keys)
                         / sum(np.sum(np.asarray(ref[k], np.float64) ** 2) for k in keys)))


def timm_train_step(model, x_nhwc: np.ndarray, labels: np.ndarray, smoothing: float, device: str = "cpu"):
    """timm's training forward and backward (``LabelSmoothingCrossEntropy(smoothing)``, in the
    model's dtype, on ``device``): logits, the state dict afterwards (running statistics updated)
    and every parameter's gradient, as numpy."""
    import torch
    from timm.loss import LabelSmoothingCrossEntropy
    model = model.to(device).train()
    dtype = next(model.parameters()).dtype
    with torch.enable_grad():  # whatever grad mode an earlier caller left
        logits = model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))).to(device, dtype))
        LabelSmoothingCrossEntropy(smoothing)(logits, torch.from_numpy(labels).to(device)).backward()
    grads = {k: p.grad.detach().cpu().numpy() for k, p in model.named_parameters()}
    return logits.detach().cpu().numpy(), timm_state_dict(model), grads


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


# Every ReLU held, on both sides (issue 20): ``with_decisions`` above holds BatchNormAct2d's only;
# ResNeSt and Res2Net also have ReLUs after the residual sum and in split attention. These hold
# every ``jax.nn.relu`` of a function (rewriting its jaxpr) and every ``F.relu`` of a torch model.

# jaxpr internals are outside JAX's compatibility policy: the helpers below read them defensively
# (a ClosedJaxpr or a Jaxpr in params; get_bind_params giving params or (subfuns, params); eqn.ctx
# present or not), and a form they do not recognise shows as a ReLU count that does not match
# (holding_relus raises; test_train compares the count with timm's).

def _open(jaxpr):
    """(jaxpr, consts) of a ClosedJaxpr or a Jaxpr."""
    return (jaxpr.jaxpr, jaxpr.consts) if hasattr(jaxpr, "consts") else (jaxpr, ())


RELU_NAMES = ("relu", "select_relu")  # jax.nn.relu; resnets_jax.layers.select_relu (its values, as a select)


def _is_relu(eqn) -> bool:
    """``jax.nn.relu`` or our ``select_relu``: a custom_jvp call around a jit of that name."""
    if eqn.primitive.name != "custom_jvp_call" or "call_jaxpr" not in eqn.params:
        return False
    inner = _open(eqn.params["call_jaxpr"])[0].eqns
    return len(inner) == 1 and inner[0].params.get("name") in RELU_NAMES


def _bind(eqn, ins):
    """``eqn`` applied to ``ins``, as ``jax.core.eval_jaxpr`` does."""
    import contextlib
    prim = eqn.primitive
    bind = prim.get_bind_params(eqn.params) if hasattr(prim, "get_bind_params") else eqn.params
    subfuns, params = bind if isinstance(bind, tuple) else ((), bind)
    ctx = getattr(eqn, "ctx", None)
    with (ctx.manager if ctx is not None and hasattr(ctx, "manager") else contextlib.nullcontext()):
        outs = prim.bind(*subfuns, *ins, **params)
    return outs if prim.multiple_results else [outs]


def _eval_holding(jaxpr, consts, args, masks, found):
    from jax.extend.core import Literal
    env = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    read = lambda v: v.val if isinstance(v, Literal) else env[v]  # noqa: E731
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        if _is_relu(eqn):
            x = ins[0]
            found.append(x)
            outs = [jax.nn.relu(x) if masks is None else x * jax.numpy.asarray(masks[len(found) - 1], x.dtype)]
        elif eqn.primitive.name in ("jit", "pjit") and "jaxpr" in eqn.params:  # relu inside a nested jit
            outs = _eval_holding(*_open(eqn.params["jaxpr"]), ins, masks, found)
        else:
            outs = _bind(eqn, ins)
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def holding_relus(fun, masks=None):
    """``fun(*args) -> (out, relu_inputs)``: ``fun`` with the output of its i-th ``jax.nn.relu``
    (in trace order) replaced by its input times ``masks[i]`` (0/1 arrays; None: ReLU as usual),
    and the list of every ReLU's input. With ``masks`` the float64 run's ``relu_inputs > 0``,
    the float64 result is unchanged and a float32 run takes float64's decisions: what is left
    of their difference is arithmetic."""
    def held(*args):
        closed, shape = jax.make_jaxpr(fun, return_shape=True)(*args)
        found = []
        out = _eval_holding(closed.jaxpr, closed.consts, jax.tree_util.tree_leaves(args), masks, found)
        if masks is not None and len(masks) != len(found):
            raise ValueError(f"{len(masks)} ReLU decisions given, the function has {len(found)} ReLUs")
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(shape), out), found
    return held


class TorchReluHeld:
    """Within ``with``: every ``torch.nn.functional.relu`` (timm's ``nn.ReLU``) records its input
    (``.inputs``, float64 numpy, NCHW) and, given ``masks``, returns input * ``masks[i]``."""

    def __init__(self, masks=None):
        self.masks, self.inputs = masks, []

    def __enter__(self):
        import torch
        import torch.nn.functional as F
        self._orig = F.relu

        def relu(x, inplace=False):
            self.inputs.append(x.detach().numpy().astype(np.float64))
            if self.masks is None:
                return self._orig(x)
            return x * torch.from_numpy(np.asarray(self.masks[len(self.inputs) - 1])).to(x.dtype)
        F.relu = relu
        return self

    def __exit__(self, *exc):
        import torch.nn.functional as F
        F.relu = self._orig
