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
