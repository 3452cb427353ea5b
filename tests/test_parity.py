"""Logits parity with timm for every registered architecture, on perturbed weights.

Each test builds timm's model, perturbs every parameter and buffer, converts its state dict,
and compares logits at a standard and an odd input size (batch 2), plus the conversion round
trip. Tolerance: ``PARITY_TOL`` (max |Δlogit| / max |logit|), stated per backend in timm_ref.
"""
import numpy as np
import pytest

import resnets_jax as rj
from resnets_jax.xla import jit_with  # each option set jitted as users get it (traced for its options)
from timm_ref import (OPTION_SETS, PARITY_TOL, compiler_options_for, perturb_, rel_err, timm_forward,
                      timm_state_dict)

# Sizes: the tag's input size (capped at 256 for CPU time: BiT's 448/480 and ResNeSt-200e/269e's
# 320/416 run at 256), and an odd size, not a multiple of 32, that exercises padding, ceil-mode
# pools and the 'fixed' stem. The widest BiT models run reduced sizes to fit the CI budget
# (2 CPU cores); the largest is marked slow.
MAX_STANDARD_SIZE = 256
ODD_SIZE = 97
REDUCED_SIZES = {
    "resnetv2_50x3_bit": (128, 97),
    "resnetv2_101x3_bit": (128, 97),
    "resnetv2_152x2_bit": (128, 97),
    "resnetv2_152x4_bit": (128, 97),
}
SLOW = {"resnetv2_152x4_bit"}  # 936M parameters: ~15 GB with timm beside it, minutes on CPU
# The widest and deepest of the others, for the 20-minute budget on 2 cores (Intel Xeon: 49, 38 and 55 s
# each; AMD EPYC: resnetv2_101x1_bit 47 s, resnetv2_50x3_bit 43 s): their blocks and options run by
# default in resnetv2_50x1_bit (timm's BiT models take no `layers` override; a width factor multiplies
# every stage's channels; test_registry.py holds every model's parameter count to timm's)
SLOW |= {"resnetv2_50x3_bit", "resnetv2_101x3_bit", "resnetv2_152x2_bit", "resnest269e", "resnetv2_101x1_bit"}
# sknet.py and the pruned ECA-ResNets: skresnet18 and ecaresnet50d_pruned in the default run, the rest
# on request (same blocks at other depths and widths; run with -m slow)
SLOW |= {"skresnet34", "skresnet50", "skresnet50d", "skresnext50_32x4d", "ecaresnet101d_pruned"}
# timm's resnet.py (79 architectures): the default run holds one representative of each option,
# at reduced depth (timm's `layers` override, on both sides) where the depth is not the point;
# every architecture runs at full depth under `-m slow` (`make test-slow`).
ONE_EACH = (1, 1, 1, 1)
RESNET_DEFAULT_CASES = {
    "resnet18": None,                   # BasicBlock, 7x7 stem
    "resnet26d": None,                  # Bottleneck, 'd' deep stem + avg-pool shortcuts
    "resnet14t": None,                  # 't' tiered deep stem
    "resnet50s": ONE_EACH,              # 's' deep stem (64-64-128)
    "resnext50_32x4d": ONE_EACH,        # grouped 3x3 (ResNeXt)
    "wide_resnet50_2": ONE_EACH,        # wide bottleneck
    "seresnet18": None,                 # SE in BasicBlock
    "seresnet50": ONE_EACH,             # SE in Bottleneck
    "ecaresnet26t": None,               # ECA (1-d conv across channels)
    "resnetaa34d": ONE_EACH,            # avg-pool anti-aliasing in BasicBlock, no stem max-pool
    "resnetaa50": ONE_EACH,             # avg-pool anti-aliasing in Bottleneck, 7x7 stem
    "resnetblur18": None,               # BlurPool (reflect padding) in BasicBlock and the stem
    "resnetblur50": ONE_EACH,           # BlurPool in Bottleneck
    "resnetrs50": ONE_EACH,             # conv stem pool (replace_stem_pool), SE at ratio 1/4
    "senet154": ONE_EACH,               # block_reduce_first 2, 3x3 shortcut convs, 64 groups, SE
    "resnet50_gn": ONE_EACH,            # GroupNorm trunk
    "test_resnet": None,                # per-stage block types
}
# resnest.py, res2net.py and resnetv2.py: every model by default. The seeds (resnest101e,
# res2net101_26w_4s, resnetv2_50) and the models no deeper than (2, 2, 2, 2) at full depth; the
# other siblings, and the pruned ECA-ResNet (whose per-block widths timm cuts to the depth), at
# reduced depth (timm's `layers` override, on both sides: a stage's first block and a later one,
# which hold their stems, shortcuts and options: radix, scales, width, cardinality, norms) and at
# full depth under `-m slow`. 6-47 s each at full depth (AMD EPYC, avx512f, 2 cores).
FIRST_AND_LATER = (2, 1, 1, 1)
REDUCED_BY_DEFAULT = {name: FIRST_AND_LATER for name in (
    "resnetv2_34", "resnetv2_34d", "resnetv2_50d", "resnetv2_50t", "resnetv2_50d_gn", "resnetv2_50d_evos",
    "resnetv2_50d_frn", "resnetv2_101", "resnetv2_101d", "resnetv2_152", "resnetv2_152d",
    "resnest50d", "resnest200e", "resnest50d_4s2x40d", "resnest50d_1s4x24d",
    "res2net50_26w_4s", "res2net50d", "res2net101d", "res2next50", "res2net50_26w_6s", "res2net50_26w_8s",
    "res2net50_14w_8s", "res2net50_48w_2s", "ecaresnet50d_pruned")}
# Every model under the options we recommend (rj.jit); under XLA's defaults (plain jax.jit) one
# model per family and norm kind, which covers every kind of layer at a fraction of the time: at
# depths (2, 1, 1, 1) where the model is deeper (its full depth under `-m slow`; BiT takes no override)
XLA_DEFAULTS_CASES = {"res2net50_26w_4s": FIRST_AND_LATER, "resnest14d": None, "resnetv2_18d": None,
                      "resnetv2_50d_evos": FIRST_AND_LATER, "resnetv2_50d_frn": FIRST_AND_LATER,
                      "resnetv2_50x1_bit": None, "resnet18": None, "ecaresnet26t": FIRST_AND_LATER}
FULL = "full"


def _default_depth(name, option_set):
    """The depth a case runs at by default: FULL, a ``layers`` override, or None (only under ``-m slow``)."""
    from resnets_jax.models.resnet_variants import VARIANTS
    if option_set == "xla-defaults" and XLA_DEFAULTS_CASES[name]:
        return XLA_DEFAULTS_CASES[name]
    if name in VARIANTS:  # a representative runs by default (maybe reduced), the others only at full depth, slow
        return (RESNET_DEFAULT_CASES[name] or FULL) if name in RESNET_DEFAULT_CASES else None
    if name in REDUCED_BY_DEFAULT:
        return REDUCED_BY_DEFAULT[name]
    return None if name in SLOW else FULL


def _params(names):
    """(name, option set, depths or None) cases, ids ``name-options`` (``-depth2111`` when reduced):
    each at its default depth, and at full depth under ``-m slow`` where that is not the default."""
    params = []
    for name in names:
        for option_set in ("rj-options",) + (("xla-defaults",) if name in XLA_DEFAULTS_CASES else ()):
            depth = _default_depth(name, option_set)
            if depth is not None:
                layers = None if depth == FULL else depth
                params.append(pytest.param(name, option_set, layers, id=_id(name, option_set, layers)))
            if depth != FULL:
                params.append(pytest.param(name, option_set, None, id=_id(name, option_set, None),
                                           marks=pytest.mark.slow))
    return params


def _id(name, option_set, layers):
    return f"{name}-{option_set}" + (f"-depth{''.join(map(str, layers))}" if layers else "")


@pytest.mark.parametrize("name, option_set, layers", _params(rj.list_models()))
def test_logits_match_timm(name, option_set, layers, torch_device):
    import jax
    import timm
    import torch
    depth = {"layers": layers} if layers else {}
    torch.manual_seed(0)
    tmodel = perturb_(timm.create_model(name, **depth), seed=1).eval()
    sd = timm_state_dict(tmodel)
    model = rj.build_model(name, **depth)
    variables = rj.convert_timm_state_dict(model, sd)

    back = rj.export_timm_state_dict(model, variables)
    assert sorted(back) == sorted(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and back[k].shape == sd[k].shape, k
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)

    assert option_set in OPTION_SETS
    apply = jit_with(compiler_options_for(option_set), model.apply)
    rng = np.random.default_rng(0)
    standard = min(rj.get_pretrained_cfg(name)["input_size"][-1], MAX_STANDARD_SIZE)
    for size in REDUCED_SIZES.get(name, (standard, ODD_SIZE)):
        x = rng.standard_normal((2, size, size, 3)).astype(np.float32)
        ref = timm_forward(tmodel, x, torch_device)
        out = np.asarray(apply(variables, x))
        assert out.shape == ref.shape
        # the comparison means something only if the logits differ between classes and samples
        assert ref.std() > 1e-3 * np.abs(ref).max()
        assert not np.allclose(ref[0], ref[1])
        err = rel_err(out, ref)
        print(f"{name}{' layers=' + str(layers) if layers else ''} {size}x{size} ({option_set}): "
              f"max|Δlogit|/max|logit| = {err:.2e}")
        assert err <= PARITY_TOL, f"{name} at {size}: {err:.2e} > {PARITY_TOL}"

