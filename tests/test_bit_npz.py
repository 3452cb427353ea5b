"""resnets_jax.io.bit_npz: Google's BiT .npz read exactly as timm's ResNetV2.load_pretrained reads it.

The proof: a timm BiT model with every parameter perturbed is written as a BiT .npz (the inverse
of timm's `_load_weights`, below); timm's own `load_pretrained` on a fresh model then gives back
exactly the perturbed state dict (so the inverse is right and complete), and `read_bit_npz` gives
exactly the same arrays under the same keys.
"""
import re
from functools import partial

import numpy as np
import pytest

from resnets_jax.io.bit_npz import BitNpzError, read_bit_npz

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
from timm.layers import StdConv2d
from timm.models.resnetv2 import ResNetV2


def to_bit_npz(state_dict, path):
    """timm BiT state dict -> Google's .npz layout (HWIO kernels), inverting `_load_weights`."""
    letters = {"1": "a", "2": "b", "3": "c"}
    norm = {"weight": "gamma", "bias": "beta"}
    out = {}
    for k, v in state_dict.items():
        v = v.detach().numpy()
        if m := re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)\.(.+)", k):
            unit = f"block{int(m[1]) + 1}/unit{int(m[2]) + 1:02d}/"
            rest = m[3]
            if c := re.fullmatch(r"conv(\d)\.weight", rest):
                name = f"{unit}{letters[c[1]]}/standardized_conv2d/kernel"
            elif n := re.fullmatch(r"norm(\d)\.(weight|bias)", rest):
                name = f"{unit}{letters[n[1]]}/group_norm/{norm[n[2]]}"
            elif rest == "downsample.conv.weight":
                name = f"{unit}a/proj/standardized_conv2d/kernel"
            else:
                raise KeyError(k)
        else:
            name = {"stem.conv.weight": "root_block/standardized_conv2d/kernel",
                    "norm.weight": "group_norm/gamma", "norm.bias": "group_norm/beta",
                    "head.fc.weight": "head/conv2d/kernel", "head.fc.bias": "head/conv2d/bias"}[k]
        out["resnet/" + name] = v.transpose(2, 3, 1, 0) if v.ndim == 4 else v
    np.savez(path, **out)


def _perturbed(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in model.state_dict().values():  # every parameter (BiT has no buffers)
            v.copy_(torch.randn(v.shape, generator=g))
    return {k: v.clone() for k, v in model.state_dict().items()}


def _tiny_bit(**kw):
    """A BiT-style ResNetV2 (fixed stem, StdConv2d eps 1e-8) of another depth and width."""
    return ResNetV2(layers=[1, 2, 1, 1], channels=(128, 256, 512, 1024), stem_type="fixed",
                    conv_layer=partial(StdConv2d, eps=1e-8), **kw)


def _assert_exact(got, ref):
    assert list(got) == list(ref)  # same keys, in timm's order
    for k, v in ref.items():
        assert got[k].dtype == np.float32 and got[k].flags.c_contiguous, k
        np.testing.assert_array_equal(got[k], v.numpy(), err_msg=k)  # exact: only transposes


@pytest.fixture(scope="module")
def bit50(tmp_path_factory):
    model = timm.create_model("resnetv2_50x1_bit")
    ref = _perturbed(model)
    path = tmp_path_factory.mktemp("bit") / "BiT-M-R50x1.npz"
    to_bit_npz(ref, path)
    return path, ref


def test_resnetv2_50x1_bit_as_timm(bit50):
    path, ref = bit50
    fresh = timm.create_model("resnetv2_50x1_bit")
    fresh.load_pretrained(str(path))  # timm's own reader
    _assert_exact({k: v.numpy() for k, v in fresh.state_dict().items()}, ref)
    _assert_exact(read_bit_npz(path, {}), ref)


def test_other_head_width_keeps_model_head(bit50):
    """timm copies the head only into a conv head of the file's width; else keeps its own."""
    path, ref = bit50
    fresh = timm.create_model("resnetv2_50x1_bit", num_classes=10)
    init_head = fresh.head.fc.weight.clone()
    fresh.load_pretrained(str(path))
    assert torch.equal(fresh.head.fc.weight, init_head)
    got = read_bit_npz(path, {"num_classes": 10})
    assert "head.fc.weight" not in got and "head.fc.bias" not in got
    _assert_exact(got, {k: v for k, v in ref.items() if not k.startswith("head.")})
    assert "head.fc.weight" not in read_bit_npz(path, {"num_classes": 0})


@pytest.mark.parametrize("in_chans", [1, 3, 5])
def test_depth_width_and_in_chans_from_the_file(tmp_path, in_chans):
    """Another depth/width (block counts read from the keys) and timm's stem adaptation."""
    ref = _perturbed(_tiny_bit(num_classes=7), seed=1)
    path = tmp_path / "tiny.npz"
    to_bit_npz(ref, path)
    fresh = _tiny_bit(num_classes=7, in_chans=in_chans)
    fresh.load_pretrained(str(path))
    want = {k: v for k, v in fresh.state_dict().items()}
    # timm computes the adapted stem in float32: sum (1 channel) or tile and scale by 3/in_chans.
    _assert_exact(read_bit_npz(path, {"num_classes": 7, "in_chans": in_chans}), want)
    if in_chans == 3:
        _assert_exact(read_bit_npz(path, {"num_classes": 7}), ref)


@pytest.mark.parametrize("name", timm.list_models("resnetv2_*_bit"))
def test_keys_for_every_registered_bit(tmp_path, name):
    """For every BiT timm registers, the keys read are exactly the model's state-dict keys."""
    with torch.device("meta"):
        keys = list(timm.create_model(name).state_dict())
    # Tiny stand-in arrays with the right rank: keys and layout mapping only (no 900M params).
    stand_in = {k: torch.zeros((1, 1, 1, 1) if k.endswith("conv.weight") or ".conv" in k
                               or k == "head.fc.weight" else (1,)) for k in keys}
    to_bit_npz(stand_in, tmp_path / "bit.npz")
    got = read_bit_npz(tmp_path / "bit.npz", {"num_classes": 1})
    assert list(got) == keys


def test_not_bit(tmp_path, bit50):
    np.savez(tmp_path / "other.npz", weights=np.zeros(2))
    with pytest.raises(BitNpzError, match="not a BiT checkpoint: no 'resnet/root_block/"):
        read_bit_npz(tmp_path / "other.npz", {})
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(BitNpzError, match="not a readable .npz"):
        read_bit_npz(tmp_path / "junk.npz", {})
    path, _ = bit50
    with np.load(path) as full:
        whole = {k: full[k] for k in full.files}
    part = {k: v for k, v in whole.items() if k != "resnet/block2/unit03/b/group_norm/beta"}
    np.savez(tmp_path / "partial.npz", **part)
    with pytest.raises(BitNpzError, match="without 'resnet/block2/unit03/b/group_norm/beta'"):
        read_bit_npz(tmp_path / "partial.npz", {})
    for key in ("resnet/root_block/standardized_conv2d/kernel", "resnet/block2/unit03/b/group_norm/beta",
                "resnet/head/conv2d/bias"):  # an object array, which only a pickle could load: refused
        np.savez(tmp_path / "objects.npz", **{**whole, key: np.array([{"a": 1}], dtype=object)})
        with pytest.raises(BitNpzError, match=f"{key}' is not a numeric array"):
            read_bit_npz(tmp_path / "objects.npz", {"num_classes": None})
