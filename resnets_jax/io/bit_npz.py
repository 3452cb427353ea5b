"""Google's original BiT ``.npz`` checkpoints (``BiT-M-R50x1.npz`` ...) as timm state dicts.

Mirrors timm's ``ResNetV2.load_pretrained`` -> ``_load_weights`` in ``timm/models/resnetv2.py``
for every BiT architecture timm registers (``resnetv2_{50x1,50x3,101x1,101x3,152x2,152x4}_bit``):
same keys read, same HWIO -> OIHW transpose, same stem adaptation to ``in_chans``
(``adapt_input_conv``, ``timm/models/_manipulate.py``), and the head loaded only when the model
has a conv head with as many outputs as the file (otherwise the model keeps its own head init,
as in timm). Depth and width come from the file's own keys, so any BiT depth/width reads.
"""

from __future__ import annotations

import math
import os
import re
import zipfile

import numpy as np

from .errors import CheckpointError

__all__ = ["BitNpzError", "bit_npz_head_width", "read_bit_npz"]

_PREFIX = "resnet/"
_STEM = "root_block/standardized_conv2d/kernel"
_UNIT = re.compile(r"block(\d+)/unit(\d+)/")


class BitNpzError(CheckpointError):
    """Not a BiT ``.npz`` checkpoint, or one missing an array the model needs."""


def _t2p(w):
    """timm's ``t2p``: HWIO -> OIHW for 4-D arrays, others as they are."""
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1) if w.ndim == 4 else w)


def _adapt_input_conv(in_chans, w, base_chans=3):
    """timm's ``adapt_input_conv`` on an OIHW float array (computed in float32 as timm does)."""
    if in_chans < 1:
        raise BitNpzError(f"in_chans must be positive, got {in_chans}")
    if in_chans == base_chans:
        return w
    dtype, w = w.dtype, w.astype(np.float32)
    o, i, kh, kw = w.shape
    if in_chans == 1:
        if i > base_chans:  # space-to-depth stems
            w = w.reshape(o, i // base_chans, base_chans, kh, kw).sum(axis=2)
        else:
            w = w.sum(axis=1, keepdims=True)
    else:
        if i != base_chans:
            raise BitNpzError(f"cannot adapt a stem conv with {i} input channels to {in_chans}")
        w = np.tile(w, (1, math.ceil(in_chans / base_chans), 1, 1))[:, :in_chans]
        w = w * np.float32(base_chans / float(in_chans))
    return w.astype(dtype)


def bit_npz_head_width(path) -> int | None:
    """The class count of a BiT ``.npz``'s head (``None`` without one); reads that array only."""
    with np.load(os.fspath(path), allow_pickle=False) as npz:
        key = _PREFIX + "head/conv2d/bias"
        return int(_array(npz, path, key).shape[0]) if key in npz.files else None


def _array(npz, path, key: str) -> np.ndarray:
    """``npz[key]``, read now: an object array (which only a pickle could load) or a damaged
    member is a ``BitNpzError`` naming the file and the key."""
    try:
        return npz[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise BitNpzError(f"{path}: {key!r} is not a numeric array ({e}); a BiT .npz holds only numeric "
                          "arrays") from None


def read_bit_npz(path, model_args=None) -> dict[str, np.ndarray]:
    """Read a BiT ``.npz`` into timm ``resnetv2_*_bit`` state-dict keys and torch layout.

    Args:
      path: the ``.npz`` (read with ``allow_pickle=False``).
      model_args: the model's constructor arguments; reads ``num_classes`` (default 1000, timm's
        default; ``None``: the file's head whatever its width) and ``in_chans`` (default 3).
        Other entries are ignored.

    Returns:
      ``{timm key: float32 array}`` in timm's state-dict order, with convs in OIHW (torch layout, as in a timm state dict):
      ``stem.conv.weight``, ``stages.{i}.blocks.{j}.{conv1,conv2,conv3}.weight``,
      ``...norm{1,2,3}.{weight,bias}``, ``...downsample.conv.weight`` (units with a ``proj``),
      ``norm.{weight,bias}``, and ``head.fc.{weight,bias}`` (weight ``(num_classes, C, 1, 1)``)
      only when ``num_classes`` equals the file's head width, as in timm's ``_load_weights``;
      otherwise no head keys (the model keeps its own head init).

    Raises:
      BitNpzError: not an npz / not a BiT file (names the key expected), or a unit missing an
        array (names it).
    """
    model_args = dict(model_args or {})
    num_classes = model_args.get("num_classes", 1000)
    in_chans = model_args.get("in_chans", 3)
    try:
        npz = np.load(os.fspath(path), allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise BitNpzError(f"{path}: not a readable .npz ({e})") from e
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise BitNpzError(f"{path}: a single .npy array, not a BiT .npz checkpoint")
    with npz:
        files = set(npz.files)
        if _PREFIX + _STEM not in files:
            raise BitNpzError(f"{path}: not a BiT checkpoint: no {_PREFIX + _STEM!r} (found "
                              f"{sorted(files)[:5]})")

        def get(key):
            if _PREFIX + key not in files:
                raise BitNpzError(f"{path}: BiT checkpoint without {_PREFIX + key!r}")
            return _array(npz, path, _PREFIX + key)

        stem = _t2p(get(_STEM))
        out = {"stem.conv.weight": _adapt_input_conv(in_chans, stem)}
        units = sorted({(int(m[1]), int(m[2])) for k in files
                        if (m := _UNIT.match(k.removeprefix(_PREFIX))) and k.startswith(_PREFIX)})
        stages = sorted({s for s, _ in units})
        if stages != list(range(1, len(stages) + 1)):
            raise BitNpzError(f"{path}: BiT blocks must be numbered 1..n, found {stages}")
        for s in stages:
            count = sum(1 for si, _ in units if si == s)
            if sorted(u for si, u in units if si == s) != list(range(1, count + 1)):
                raise BitNpzError(f"{path}: block{s} units must be numbered 1..{count}")
            for u in range(1, count + 1):
                src, dst = f"block{s}/unit{u:02d}/", f"stages.{s - 1}.blocks.{u - 1}."
                if f"{_PREFIX}{src}a/proj/standardized_conv2d/kernel" in files:
                    out[f"{dst}downsample.conv.weight"] = _t2p(
                        get(f"{src}a/proj/standardized_conv2d/kernel"))
                for letter, n in (("a", 1), ("b", 2), ("c", 3)):  # timm's PreActBottleneck order
                    out[f"{dst}norm{n}.weight"] = _t2p(get(f"{src}{letter}/group_norm/gamma"))
                    out[f"{dst}norm{n}.bias"] = _t2p(get(f"{src}{letter}/group_norm/beta"))
                    out[f"{dst}conv{n}.weight"] = _t2p(get(f"{src}{letter}/standardized_conv2d/kernel"))
        out["norm.weight"] = _t2p(get("group_norm/gamma"))
        out["norm.bias"] = _t2p(get("group_norm/beta"))
        head = get("head/conv2d/kernel")
        if num_classes is None or num_classes and head.shape[-1] == num_classes:  # timm: Conv2d head of the same width
            out["head.fc.weight"] = _t2p(head)
            out["head.fc.bias"] = _t2p(get("head/conv2d/bias"))
    return out
