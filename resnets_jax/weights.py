"""timm <-> Flax weights: structural key mapping, checkpoint files and the hub.

The mapping is a handful of rules, the same in both directions, because every Flax submodule
is named after the timm attribute it mirrors:

* module path: ``stages.2.blocks.5.norm2`` <-> ``stages_2/blocks_5/norm2`` (an integer
  segment joins its parent with ``_``);
* leaf: a conv ``weight`` (4-D, OIHW) <-> ``kernel`` (HWIO), a linear ``weight`` (2-D) <->
  ``kernel`` transposed, a norm ``weight`` (1-D) <-> ``scale``; ``running_mean`` /
  ``running_var`` / ``num_batches_tracked`` <-> ``batch_stats`` ``mean`` / ``var`` /
  ``num_batches_tracked``; any other leaf (``bias``, EvoNorm's ``v``, FRN's ``tau``) keeps its
  name.

The result is checked against ``jax.eval_shape(model.init, ...)``: missing keys, unexpected
keys and shape mismatches are all reported at once, in timm's names.
"""
import json
import os
import re
import struct
from typing import Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

StateDict = Dict[str, np.ndarray]

# OIHW -> HWIO and (out, in) -> (in, out); the inverse permutations give the way back.
_TO_FLAX_PERM = {4: (2, 3, 1, 0), 2: (1, 0)}
_TO_TIMM_PERM = {4: (3, 2, 0, 1), 2: (1, 0)}
_STATS = {"running_mean": "mean", "running_var": "var", "num_batches_tracked": "num_batches_tracked"}
_STATS_BACK = {v: k for k, v in _STATS.items()}
_INDEXED = re.compile(r"^(.*)_(\d+)$")


class CheckpointError(ValueError):
    """A file that is not a checkpoint, or a checkpoint that does not fit the model."""


# --------------------------------------------------------------------------- key mapping

def timm_to_flax_key(key: str, ndim: int) -> Tuple[str, Tuple[str, ...]]:
    """``'stages.0.blocks.1.conv2.weight'`` (4-D) -> ``('params', ('stages_0', 'blocks_1', 'conv2', 'kernel'))``."""
    *mods, leaf = key.split(".")
    path = []
    for m in mods:
        if m.isdigit() and path:
            path[-1] = f"{path[-1]}_{m}"
        else:
            path.append(m)
    if leaf in _STATS:
        return "batch_stats", (*path, _STATS[leaf])
    if leaf == "weight":
        leaf = "kernel" if ndim in _TO_FLAX_PERM else "scale"
    return "params", (*path, leaf)


def flax_to_timm_key(collection: str, path: Tuple[str, ...]) -> str:
    *mods, leaf = path
    if collection == "batch_stats":
        leaf = _STATS_BACK[leaf]
    elif leaf in ("kernel", "scale"):
        leaf = "weight"
    out = []
    for m in mods:
        match = _INDEXED.match(m)
        out.extend(match.groups() if match else (m,))
    return ".".join((*out, leaf))


def _flat_variables(tree: Mapping) -> Dict[Tuple[str, Tuple[str, ...]], object]:
    return {(col, path): v for col in tree for path, v in traverse_util.flatten_dict(dict(tree[col])).items()}


def _example_input(model, input_size: int = 64):
    return jax.ShapeDtypeStruct((1, input_size, input_size, model.in_chans), jnp.float32)


def _expected_variables(model, example_input=None):
    """Shapes and dtypes of the model's variables, without computing anything."""
    x = _example_input(model) if example_input is None else example_input
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}
    return _flat_variables(jax.eval_shape(model.init, rngs, x))


def _fmt(keys, limit=12):
    keys = sorted(keys)
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def convert_timm_state_dict(model, state_dict: Mapping[str, np.ndarray], *,
                            skip_missing: Tuple[str, ...] = (), example_input=None) -> dict:
    """timm state dict (numpy arrays, NCHW) -> Flax variables ``{'params', 'batch_stats'}``.

    Raises ``CheckpointError`` naming every missing key, unexpected key and shape mismatch.
    ``skip_missing``: timm key prefixes (e.g. the classifier) allowed to be absent; they keep
    a fresh initialisation. ``example_input`` (an array or ``jax.ShapeDtypeStruct``) lets any
    Flax module named after its timm counterpart be converted, not only registered models."""
    expected = _expected_variables(model, example_input)
    timm_names = {flax_to_timm_key(*k): k for k in expected}
    out, unexpected, mismatched = {}, [], []
    for key, value in state_dict.items():
        value = np.asarray(value)
        flax_key = timm_to_flax_key(key, value.ndim)
        if flax_key not in expected:
            unexpected.append(key)
            continue
        value = value.transpose(_TO_FLAX_PERM[value.ndim]) if flax_key[1][-1] == "kernel" else value
        want = expected[flax_key]
        if value.shape != want.shape:
            mismatched.append(f"{key}: checkpoint {np.shape(state_dict[key])} vs model "
                              f"{_timm_shape(flax_key, want.shape)}")
            continue
        # a copy: never alias the caller's buffers (torch trains in place; files are memory-mapped)
        out[flax_key] = jnp.array(value, dtype=want.dtype, copy=True)
    for n, k in timm_names.items():
        if k not in out and n.endswith(".num_batches_tracked"):  # optional, as torch's BatchNorm loads it
            out[k] = jnp.zeros(expected[k].shape, expected[k].dtype)
    missing = [n for n, k in timm_names.items() if k not in out and not n.startswith(skip_missing)]
    if missing or unexpected or mismatched:
        name = getattr(model, "variant", "") or type(model).__name__
        lines = [f"Checkpoint does not match {name}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}), in the model but not the checkpoint: {_fmt(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}), in the checkpoint but not the model: "
                         f"{_fmt(unexpected)}")
        if mismatched:
            lines.append(f"  shape mismatches ({len(mismatched)}): {_fmt(mismatched, 6)}")
        raise CheckpointError("\n".join(lines))
    if len(out) < len(expected):  # skipped keys: fill from a fresh init
        fresh = _flat_variables(init_variables(model, example_input=example_input))
        out.update({k: v for k, v in fresh.items() if k not in out})
    return _unflatten(out)


def _timm_shape(flax_key, shape) -> tuple:
    """A Flax variable's shape in timm's layout."""
    if flax_key[1][-1] != "kernel":
        return tuple(shape)
    return tuple(shape[i] for i in _TO_TIMM_PERM[len(shape)])


def _unflatten(flat: Mapping) -> dict:
    cols = {}
    for (col, path), v in flat.items():
        cols.setdefault(col, {})[path] = v
    return {col: traverse_util.unflatten_dict(d) for col, d in cols.items()}


def init_variables(model, rng=None, example_input=None) -> dict:
    """A random init of the model's variables (a forward pass at a small size fixes shapes)."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    spec = _example_input(model) if example_input is None else example_input
    x = jnp.zeros(spec.shape, spec.dtype)
    return jax.jit(model.init)({"params": rng, "dropout": rng}, x)


def export_timm_state_dict(model, variables: Mapping) -> StateDict:
    """Flax variables -> timm state dict (numpy, timm's keys and NCHW layout)."""
    out = {}
    for (col, path), v in _flat_variables(variables).items():
        v = np.asarray(v)
        if path[-1] == "kernel":
            v = v.transpose(_TO_TIMM_PERM[v.ndim])
        if path[-1] == "num_batches_tracked":
            v = v.astype(np.int64)
        out[flax_to_timm_key(col, path)] = np.array(v, order="C")  # a copy, 0-d stays 0-d
    return out


# --------------------------------------------------------------------------- checkpoint files

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def read_safetensors(path: str) -> StateDict:
    """Read a ``.safetensors`` file into numpy arrays (memory-mapped, no torch), checking
    the header against the file size so a truncated file fails clearly."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: {size} bytes is too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CheckpointError(f"{path}: not a safetensors file (header claims {n} bytes, file has {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: not a safetensors file (bad header: {e})") from None
    header.pop("__metadata__", None)
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
    out = {}
    for key, info in header.items():
        start, end = info["data_offsets"]
        if end > data.size:
            raise CheckpointError(f"{path}: truncated ({key} needs bytes up to {end + 8 + n}, file has {size})")
        dtype = _safetensors_dtype(info["dtype"])
        out[key] = data[start:end].view(dtype).reshape(info["shape"])
    return out


def _safetensors_dtype(name: str):
    if name == "BF16":
        import ml_dtypes
        return ml_dtypes.bfloat16
    if name not in _SAFETENSORS_DTYPES:
        raise CheckpointError(f"unsupported safetensors dtype {name}")
    return _SAFETENSORS_DTYPES[name]


def read_torch_checkpoint(path: str, use_ema: bool = False) -> StateDict:
    """``pytorch_model.bin`` / ``.pth`` / timm training checkpoints (``state_dict`` or
    ``state_dict_ema``, ``module.`` prefixes), loaded with ``weights_only=True``."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{path} is a PyTorch pickle: reading it needs torch "
                              "(pip install 'resnets-jax[torch]'), or convert it to .safetensors") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files; one clear error
        raise CheckpointError(f"{path}: could not be read as a PyTorch checkpoint with weights_only=True "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(obj, dict):
        for k in (("state_dict_ema", "model_ema") if use_ema else ()) + ("state_dict", "model"):
            if isinstance(obj.get(k), dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state dict), found {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        k = k[len("module."):] if k.startswith("module.") else k
        v = v.detach().cpu()
        if v.dtype == torch.bfloat16:
            import ml_dtypes
            out[k] = v.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            out[k] = v.numpy()
    return out


def load_state_dict(path: str, use_ema: bool = False) -> StateDict:
    """Any timm checkpoint file -> numpy state dict, telling formats apart by content."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file, expected a .safetensors or PyTorch checkpoint")
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic[:4] == b"PK\x03\x04" or magic[:1] == b"\x80":  # torch zip archive / legacy pickle
        return read_torch_checkpoint(path, use_ema=use_ema)
    return read_safetensors(path)


# --------------------------------------------------------------------------- the hub

def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub endpoint (``HF_ENDPOINT``) opens within ``timeout``."""
    import socket
    from urllib.parse import urlparse
    from huggingface_hub import constants
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def download_pretrained(cfg: dict, cache_dir: Optional[str] = None) -> str:
    """Fetch ``model.safetensors`` (else ``pytorch_model.bin``) of a pretrained tag with
    huggingface_hub, honouring its cache, ``cache_dir`` and ``HF_HUB_OFFLINE``."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo = cfg.get("hf_hub_id")
    name = f"{cfg['architecture']}.{cfg['tag']}"
    if not repo:
        raise CheckpointError(f"{name} has no pretrained weights; pass checkpoint_path= instead")
    # read at call time: huggingface_hub reads HF_HUB_OFFLINE once, when it is imported. An
    # unreachable hub also means cache-only, instead of huggingface_hub's minute of retries.
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        offline = "HF_HUB_OFFLINE is set and there is no cached copy"
    elif not hub_reachable():
        offline = "the hub cannot be reached and there is no cached copy"
    else:
        offline = ""
    errors = []
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            return hf_hub_download(repo, filename, cache_dir=cache_dir, local_files_only=bool(offline))
        except (EntryNotFoundError, LocalEntryNotFoundError) as e:
            errors.append(f"{filename}: {type(e).__name__}")
        except OSError as e:
            errors.append(f"{filename}: {type(e).__name__}: {e}")
    raise CheckpointError(
        f"Could not get weights for {name} from the Hugging Face hub ({repo}): "
        f"{offline or '; '.join(errors)}. "
        f"Without network access, download the file elsewhere and pass it as "
        f"create_model('{cfg['architecture']}', checkpoint_path='model.safetensors').")
