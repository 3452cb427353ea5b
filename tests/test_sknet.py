"""Selective Kernel (timm ``sknet.py`` / ``timm.layers.SelectiveKernel``) against timm, on
perturbed weights: the layer at odd sizes over its options, in eval and training mode."""
import numpy as np
import pytest

from resnets_jax import convert_timm_state_dict, layers
from timm_ref import PARITY_TOL, perturb_, rel_err, timm_state_dict

torch = pytest.importorskip("torch")  # the reference (the [dev] extra; make test installs it)
timm_layers = pytest.importorskip("timm.layers")

# (in_chs, out_chs, kwargs): every option of timm's SelectiveKernel the sknet models use and the
# others: split input or not, grouped branches (skresnext: groups capped at out_chs), stride 2,
# dilation (the dilated 5x5 stands in for its 3x3 at a higher dilation), keep_3x3 off (a real
# 5x5), three branches, an explicit attention width.
SK_CASES = [
    (16, 24, dict(rd_ratio=1 / 8, rd_divisor=16, split_input=True)),                   # skresnet18/34
    (32, 32, dict(stride=2, split_input=True)),                                        # skresnet50
    (32, 64, dict(stride=2, groups=8, rd_ratio=1 / 16, rd_divisor=32, split_input=False)),  # skresnext
    (12, 16, dict(dilation=2, split_input=True)),                                      # output_stride 16
    (12, 16, dict(stride=2, keep_3x3=False, split_input=False)),
    (12, 20, dict(kernel_size=[3, 5, 7], rd_channels=8, split_input=True)),
]


def _timm_sk(in_chs, out_chs, kwargs, seed):
    return perturb_(timm_layers.SelectiveKernel(in_chs, out_chs, **kwargs), seed=seed)


def _ours_sk(out_chs, kwargs):
    kw = dict(kwargs)
    if isinstance(kw.get("kernel_size"), list):
        kw["kernel_size"] = tuple(kw["kernel_size"])  # a hashable module field
    return layers.SelectiveKernel(out_chs, **kw)


@pytest.mark.parametrize("case", range(len(SK_CASES)))
@pytest.mark.parametrize("train", [False, True])
def test_selective_kernel_matches_timm(case, train):
    in_chs, out_chs, kwargs = SK_CASES[case]
    theirs = _timm_sk(in_chs, out_chs, kwargs, seed=case).train(train)
    ours = _ours_sk(out_chs, kwargs)
    x = np.random.default_rng(case).standard_normal((3, 13, 11, in_chs)).astype(np.float32)  # odd sizes
    sd = {k: t.copy() for k, t in timm_state_dict(theirs).items()}  # numpy() shares torch's memory
    v = convert_timm_state_dict(ours, sd, example_input=x)
    with torch.no_grad():
        ref = theirs(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy().transpose(0, 2, 3, 1)
    out, upd = ours.apply(v, x, train=train, mutable=["batch_stats"])
    assert out.shape == ref.shape
    assert ref.std() > 1e-3 * np.abs(ref).max()
    # one layer: fp32 rounding of a few sums; the model-level bound is ample here
    assert rel_err(out, ref) <= PARITY_TOL
    if train:  # every running statistic moved as torch's (momentum 0.1, unbiased variance)
        from resnets_jax.convert.keys import flat_variables, flax_to_timm_key
        stats = {flax_to_timm_key(col, path): val for (col, path), val in flat_variables(upd).items()}
        after = timm_state_dict(theirs)
        assert {k for k in after if "running" in k} <= set(stats)
        for k, val in stats.items():
            if "running" in k:
                np.testing.assert_allclose(np.asarray(val), after[k], rtol=1e-5, atol=1e-6, err_msg=k)
                assert not np.allclose(after[k], sd[k]), k  # the statistic did move


def test_selective_kernel_attention_width_matches_timm():
    for out_chs in (16, 64, 128, 256, 512, 1024):
        for rd_ratio, rd_divisor in ((1 / 16, 8), (1 / 8, 16), (1 / 16, 32)):
            theirs = timm_layers.SelectiveKernel(out_chs, out_chs, rd_ratio=rd_ratio, rd_divisor=rd_divisor)
            assert layers.sk_attn_channels(out_chs, rd_ratio, rd_divisor) == theirs.attn.fc_reduce.out_channels


def test_selective_kernel_rejects_bad_arguments():
    x = np.zeros((1, 8, 8, 15), np.float32)
    with pytest.raises(ValueError, match="divisible by the 2 branches, got 15"):
        layers.SelectiveKernel(16, split_input=True).init(__import__("jax").random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="expected odd sizes >= 3, got \\(3, 4\\)"):
        layers.sk_kernel_plan((3, 4), 1, True)
    with pytest.raises(ValueError, match="expected odd sizes >= 3, got 1"):
        layers.sk_kernel_plan(1, 1, True)


def test_sknet_and_pruned_names_and_tags_equal_timms():
    """Every architecture of timm's sknet.py and the pruned ECA-ResNets of its resnet.py, with
    every pretrained tag, registered under timm's names."""
    import resnets_jax as rj
    timm = pytest.importorskip("timm")
    sk = timm.list_models(module="sknet")
    pruned = [n for n in timm.list_models(module="resnet") if n.endswith("_pruned")]
    assert len(sk) == 5 and len(pruned) == 2
    assert rj.list_models("sk*") == sk and rj.list_models("*_pruned") == pruned
    for name in sk + pruned:
        assert rj.list_pretrained(f"{name}.*") == timm.list_pretrained(f"{name}.*"), name
