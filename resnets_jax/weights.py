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
import collections.abc
import functools
import hashlib
import json
import mmap
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


def expected_variables(model, example_input=None):
    """Shapes and dtypes of the model's variables, without computing anything.

    Tracing ``model.init`` takes about half a second for a 100-layer network, more than
    converting its weights, so the result is remembered: per process (equal Flax modules are
    equal dataclasses) and on disk (``cache.cache_dir('shapes')``), keyed by the model's full
    configuration, the input and a fingerprint of this package's code and of jax/flax."""
    x = _example_input(model) if example_input is None else example_input
    try:
        return dict(_remembered_variables(model, tuple(x.shape), np.dtype(x.dtype)))
    except TypeError:  # an unhashable module (e.g. holding a list): trace every time
        return _trace_variables(model, tuple(x.shape), np.dtype(x.dtype))


def _trace_variables(model, shape, dtype):
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}
    return _flat_variables(jax.eval_shape(model.init, rngs, jax.ShapeDtypeStruct(shape, dtype)))


@functools.lru_cache(maxsize=64)
def _remembered_variables(model, shape, dtype):
    path = _shapes_cache_path(model, shape, dtype)
    if path:
        try:
            with open(path) as f:
                return {(col, tuple(p)): jax.ShapeDtypeStruct(tuple(s), np.dtype(d)) for col, p, s, d in json.load(f)}
        except (OSError, ValueError, TypeError):  # absent or unreadable: trace (and write it anew)
            pass
    expected = _trace_variables(model, shape, dtype)
    if path:
        rows = [[col, list(p), list(v.shape), np.dtype(v.dtype).name] for (col, p), v in expected.items()]
        try:
            _atomic_write_text(path, json.dumps(rows))
        except OSError:  # a read-only home: caching is an optimisation, never a failure
            pass
    return expected


def _shapes_cache_path(model, shape, dtype) -> Optional[str]:
    from .cache import cache_dir
    folder = cache_dir("shapes")
    if not folder or "0x" in repr(model):  # an object address in the config: no stable key
        return None
    key = "\n".join([repr(model), str(shape), str(dtype), _code_fingerprint()])
    return os.path.join(folder, f"{type(model).__name__}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json")


@functools.lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    """Changes whenever this package's code or the jax/flax versions do."""
    import flax
    digest = hashlib.sha256(f"{jax.__version__} {flax.__version__}".encode())
    root = os.path.dirname(os.path.abspath(__file__))
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()


def _atomic_write_text(path: str, text: str) -> None:
    from .files import write_atomic

    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, write)


def _fmt(keys, limit=12):
    keys = sorted(keys)
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


_ALIGN = 64  # XLA's CPU client adopts a numpy buffer without copying when it is 64-byte aligned


def _empty_aligned(shape, dtype) -> np.ndarray:
    """``np.empty`` on a 64-byte boundary, so that ``jax.device_put`` on CPU takes it as is
    (numpy's own allocations are 16-byte aligned, and JAX then copies every array)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(nbytes + _ALIGN, np.uint8)
    start = -buf.ctypes.data % _ALIGN
    return buf[start:start + nbytes].view(dtype).reshape(shape)


# Source rows per copy when a transpose moves axis 0 innermost (OIHW -> HWIO, (out, in) ->
# (in, out)): 64-element runs keep reads and writes in cache, 2.5x faster than one strided
# copy over resnest101e's kernels (and as fast as a plain memcpy).
_TRANSPOSE_BLOCK = 64


def _permuted_copy(value: np.ndarray, perm: Optional[tuple] = None, dtype=None) -> np.ndarray:
    """A C-contiguous, aligned copy of ``value.transpose(perm)``, cast to ``dtype``."""
    src = value if perm is None else value.transpose(perm)
    out = _empty_aligned(src.shape, value.dtype if dtype is None else dtype)
    if perm is None or perm[-1] != 0:
        np.copyto(out, src, casting="unsafe")
        return out
    for start in range(0, value.shape[0], _TRANSPOSE_BLOCK):
        np.copyto(out[..., start:start + _TRANSPOSE_BLOCK],
                  value[start:start + _TRANSPOSE_BLOCK].transpose(perm), casting="unsafe")
    return out


def _read(state_dict: Mapping[str, np.ndarray], key: str, perm: Optional[tuple] = None) -> np.ndarray:
    """A fresh, aligned array of ``state_dict[key]`` with axes ``perm``, that the caller does not
    hold (torch trains in place, and JAX on CPU may adopt a numpy buffer). Files that know how
    (``SafetensorsFile.read``) copy straight from the file into that layout."""
    reader = getattr(state_dict, "read", None)
    return reader(key, perm) if reader else _permuted_copy(np.asarray(state_dict[key]), perm)


def _shape(state_dict: Mapping[str, np.ndarray], key: str) -> tuple:
    shape = getattr(state_dict, "shape", None)
    return tuple(shape(key)) if callable(shape) else np.shape(state_dict[key])


def _timm_item(state_dict: Mapping[str, np.ndarray], key: str) -> Tuple[tuple, np.ndarray]:
    """timm key -> (Flax key, contiguous numpy array in Flax's layout). Structural only (no model
    needed)."""
    ndim = len(_shape(state_dict, key))
    flax_key = timm_to_flax_key(key, ndim)
    return flax_key, _read(state_dict, key, _TO_FLAX_PERM[ndim] if flax_key[1][-1] == "kernel" else None)


def _workers() -> int:
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # not on Linux
        return max(1, min(8, os.cpu_count() or 1))


def _expected_and_layout(model, example_input, item_fn, state_dict):
    """``(expected variables, {key: item_fn(state_dict, key)})``, computed at the same time:
    tracing the model is Python-bound (about 0.4 s for a 100-layer network, once per
    architecture) while reading and transposing tensors is file I/O and numpy copies, which
    release the GIL, so worker threads do those, several tensors at once."""
    from concurrent.futures import ThreadPoolExecutor
    keys = list(state_dict)
    with ThreadPoolExecutor(_workers()) as pool:
        items = pool.map(lambda k: item_fn(state_dict, k), keys)
        expected = expected_variables(model, example_input)
        return expected, dict(zip(keys, items))


def _to_device(arrays: Dict[tuple, np.ndarray], expected) -> Dict[tuple, jax.Array]:
    """numpy -> JAX arrays of the model's dtypes, in one ``device_put`` (one call, not one per
    array). On CPU, JAX adopts the fresh, aligned numpy buffers without copying them."""
    keys = list(arrays)
    values = [arrays[k] if arrays[k].dtype == expected[k].dtype else _permuted_copy(arrays[k], dtype=expected[k].dtype)
              for k in keys]
    arrays.clear()
    return dict(zip(keys, jax.device_put(values)))


def _mismatch_error(model, missing, unexpected, mismatched, note: str = "") -> "CheckpointError":
    name = getattr(model, "variant", "") or type(model).__name__
    lines = [f"Checkpoint does not match {name}{note}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}), in the model but not the checkpoint: {_fmt(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}), in the checkpoint but not the model: "
                     f"{_fmt(unexpected)}")
    if mismatched:
        lines.append(f"  shape mismatches ({len(mismatched)}): {_fmt(mismatched, 6)}")
    return CheckpointError("\n".join(lines))


def convert_timm_state_dict(model, state_dict: Mapping[str, np.ndarray], *,
                            skip_missing: Tuple[str, ...] = (), example_input=None) -> dict:
    """timm state dict (numpy arrays, NCHW) -> Flax variables ``{'params', 'batch_stats'}``.

    Raises ``CheckpointError`` naming every missing key, unexpected key and shape mismatch.
    ``skip_missing``: timm key prefixes (e.g. the classifier) allowed to be absent; they keep
    a fresh initialisation. ``example_input`` (an array or ``jax.ShapeDtypeStruct``) lets any
    Flax module named after its timm counterpart be converted, not only registered models.

    Memory: each tensor is read (from a lazy file mapping, see ``read_safetensors``), put in
    Flax's layout and handed to JAX one at a time, so the peak is about one copy of the
    weights, not a numpy and a JAX copy of everything."""
    expected, layout = _expected_and_layout(model, example_input, _timm_item, state_dict)
    timm_names = {flax_to_timm_key(*k): k for k in expected}
    out, unexpected, mismatched = {}, [], []
    for key, (flax_key, value) in layout.items():
        if flax_key not in expected:
            unexpected.append(key)
        elif value.shape != expected[flax_key].shape:
            mismatched.append(f"{key}: checkpoint {_timm_shape(flax_key, value.shape)} vs model "
                              f"{_timm_shape(flax_key, expected[flax_key].shape)}")
        else:
            out[flax_key] = value
    del layout
    out = _to_device(out, expected)
    for n, k in timm_names.items():
        if k not in out and n.endswith(".num_batches_tracked"):  # optional, as torch's BatchNorm loads it
            out[k] = jnp.zeros(expected[k].shape, expected[k].dtype)
    missing = [n for n, k in timm_names.items() if k not in out and not n.startswith(skip_missing)]
    if missing or unexpected or mismatched:
        raise _mismatch_error(model, missing, unexpected, mismatched)
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


class SafetensorsFile(collections.abc.Mapping):
    """A ``.safetensors`` file as a read-only mapping ``key -> numpy array``, without torch.

    The header is read and checked against the file size up front (a truncated file fails
    here, naming the first tensor that does not fit); each tensor is read from the file when it
    is looked up, into a fresh array the caller owns. So a conversion holds one tensor of the
    file at a time instead of the whole file (memory-mapped pages count as resident memory).
    ``metadata``: the header's ``__metadata__`` (strings)."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{self.path}: {size} bytes is too short to be a safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise CheckpointError(f"{self.path}: not a safetensors file (header claims {n} bytes, "
                                      f"file has {size})")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{self.path}: not a safetensors file (bad header: {e})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: not a safetensors file (header is not a JSON object)")
        self.metadata = dict(header.pop("__metadata__", None) or {})
        self._start = 8 + n
        self._entries = {}
        for key, info in header.items():
            try:
                dtype = _safetensors_dtype(info["dtype"])
                shape = tuple(int(d) for d in info["shape"])
                start, end = (int(o) for o in info["data_offsets"])
            except (TypeError, KeyError, ValueError) as e:
                raise CheckpointError(f"{self.path}: not a safetensors file (bad entry {key!r}: {e})") from None
            if self._start + end > size:
                raise CheckpointError(f"{self.path}: truncated ({key} needs bytes up to {self._start + end}, "
                                      f"file has {size})")
            if end - start != int(np.prod(shape)) * np.dtype(dtype).itemsize:
                raise CheckpointError(f"{self.path}: corrupt header ({key}: {end - start} bytes for shape "
                                      f"{shape} of {info['dtype']})")
            self._entries[key] = (dtype, shape, start)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.read(key)

    def read(self, key: str, perm: Optional[tuple] = None) -> np.ndarray:
        """The tensor as a new aligned array with its axes permuted by ``perm``, copied in one
        pass from a memory map of the file (no intermediate copy in the file's layout)."""
        dtype, shape, start = self._entries[key]
        offset = self._start + start
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if not nbytes:
            return _permuted_copy(np.empty(shape, dtype), perm)
        page = offset - offset % mmap.ALLOCATIONGRANULARITY  # a map starts on a page boundary
        try:
            with open(self.path, "rb") as f, mmap.mmap(f.fileno(), offset + nbytes - page, offset=page,
                                                       access=mmap.ACCESS_READ) as mapped:
                src = np.frombuffer(mapped, np.uint8, nbytes, offset - page).view(dtype).reshape(shape)
                out = _permuted_copy(src, perm)
                del src  # the map closes only once no array points into it
                return out
        except ValueError as e:  # the file shrank since its header was read
            raise CheckpointError(f"{self.path}: truncated while reading {key} ({e})") from None

    def shape(self, key: str) -> tuple:
        return self._entries[key][1]

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"SafetensorsFile({self.path!r}, {len(self)} tensors)"


class _View(collections.abc.Mapping):
    def __init__(self, base: Mapping, drop: Tuple[str, ...], replace: Mapping[str, np.ndarray]):
        self._base, self._replace = base, dict(replace)
        self._keys = {k: None for k in base if not k.startswith(drop)}  # an ordered set
        self.metadata = getattr(base, "metadata", {})

    def __getitem__(self, key):
        if key not in self._keys:
            raise KeyError(key)
        return self._replace[key] if key in self._replace else self._base[key]

    def read(self, key: str, perm: Optional[tuple] = None) -> np.ndarray:
        if key not in self._keys:
            raise KeyError(key)
        return _permuted_copy(self._replace[key], perm) if key in self._replace else _read(self._base, key, perm)

    def shape(self, key: str) -> tuple:
        return np.shape(self._replace[key]) if key in self._replace else _shape(self._base, key)

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)


def view_state_dict(state_dict: Mapping, drop: Tuple[str, ...] = (),
                    replace: Optional[Mapping[str, np.ndarray]] = None) -> Mapping:
    """A lazy view of ``state_dict``: keys starting with ``drop`` left out, ``replace``'s
    values in place of the file's (nothing else is read until it is looked up)."""
    return _View(state_dict, tuple(drop), replace or {})


def adapt_input_conv(in_chans: int, weight: np.ndarray) -> np.ndarray:
    """timm's ``adapt_input_conv`` for a pretrained first conv (OIHW) trained on RGB: one
    channel sums the RGB filters; other counts tile them and scale by ``3 / in_chans``."""
    w = np.asarray(weight, np.float32)
    out_chs, chs = w.shape[:2]
    if in_chans == 1:
        w = w.reshape(out_chs, chs // 3, 3, *w.shape[2:]).sum(2) if chs > 3 else w.sum(1, keepdims=True)
    elif in_chans != chs:
        if chs != 3:
            raise CheckpointError(f"cannot adapt a first conv of {chs} input channels to in_chans={in_chans}")
        w = np.tile(w, (1, -(-in_chans // 3), 1, 1))[:, :in_chans] * (3 / in_chans)
    return w.astype(np.asarray(weight).dtype)


def read_safetensors(path: str) -> SafetensorsFile:
    """A ``.safetensors`` file as a lazy ``key -> numpy array`` mapping (see ``SafetensorsFile``)."""
    return SafetensorsFile(path)


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


def _is_msgpack_map(magic: bytes) -> bool:
    # a msgpack map: fixmap 0x81-0x8f, map16 0xde, map32 0xdf. (0x80, an empty fixmap, is also
    # pickle's PROTO opcode: every pickle since protocol 2 starts with it.)
    return 0x81 <= magic[0] <= 0x8F or magic[0] in (0xDE, 0xDF)


def _file_kind(path: str) -> str:
    """'torch', 'msgpack' or 'safetensors' (anything else), from the first bytes."""
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic[:4] == b"PK\x03\x04" or magic[:1] == b"\x80":  # torch zip archive / legacy pickle
        return "torch"
    return "msgpack" if magic and _is_msgpack_map(magic) else "safetensors"


def is_flax_checkpoint(path: str) -> bool:
    """Whether ``path`` holds Flax variables (as ``save_checkpoint`` writes) rather than timm's
    state dict; reads only a safetensors header, never a whole pickle."""
    kind = _file_kind(path)
    return kind == "msgpack" or kind == "safetensors" and is_flax_layout(read_safetensors(path))


def load_state_dict(path: str, use_ema: bool = False) -> Mapping[str, np.ndarray]:
    """Any checkpoint file -> a ``key -> numpy array`` mapping, telling formats apart by content:
    timm's ``.safetensors`` (a lazy ``SafetensorsFile``), PyTorch pickles (``.bin``/``.pth``,
    with torch) and the Flax checkpoints ``save_checkpoint`` writes (safetensors or msgpack,
    keys ``params/...`` and ``batch_stats/...``). ``load_variables`` turns either layout into
    a model's variables."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: " + ("a directory, expected a checkpoint file" if os.path.isdir(path)
                                             else "no such file"))
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file, expected a .safetensors, PyTorch or resnets_jax checkpoint")
    kind = _file_kind(path)
    if kind == "torch":
        return read_torch_checkpoint(path, use_ema=use_ema)
    if kind == "msgpack":
        return read_flax_msgpack(path)
    return read_safetensors(path)


# --------------------------------------------------------------------------- Flax checkpoints

FLAX_FORMAT = "resnets_jax"  # the ``format`` metadata of the checkpoints save_checkpoint writes
_FLAX_METADATA_KEY = "__resnets_jax__"  # where msgpack files keep the metadata
_FLAX_COLLECTIONS = ("params", "batch_stats")


class FlaxStateDict(dict):
    """A flattened Flax checkpoint read from msgpack: ``'params/stem/conv/kernel' -> array``."""
    metadata: Dict[str, str] = {}


def flatten_variables(variables: Mapping) -> Dict[str, np.ndarray]:
    """``{'params': {'stem': {'conv': {'kernel': x}}}}`` -> ``{'params/stem/conv/kernel': x}`` (numpy)."""
    return {"/".join((col, *path)): np.asarray(v) for (col, path), v in _flat_variables(variables).items()}


def is_flax_layout(state_dict: Mapping) -> bool:
    """Whether a checkpoint holds Flax variables (``params/...``) rather than timm's keys."""
    return len(state_dict) > 0 and all(k.split("/", 1)[0] in _FLAX_COLLECTIONS and "/" in k for k in state_dict)


def checkpoint_metadata(model) -> Dict[str, str]:
    """What ``save_checkpoint`` records beside the weights (all strings, as safetensors wants)."""
    from . import __version__
    from .registry import get_pretrained_cfg, parse_hf_hub_name
    meta = {"format": FLAX_FORMAT, "format_version": "1", "resnets_jax_version": __version__,
            "num_classes": str(model.num_classes), "in_chans": str(model.in_chans)}
    variant = getattr(model, "variant", "")
    if variant:
        if parse_hf_hub_name(variant):
            meta["architecture"] = get_pretrained_cfg(variant)["architecture"]
            meta["source"] = variant
        else:
            meta["architecture"] = variant
    return meta


_SAFETENSORS_NAMES = {np.dtype(v): k for k, v in _SAFETENSORS_DTYPES.items()}


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray], metadata: Optional[Mapping[str, str]] = None):
    """Write a ``.safetensors`` file streaming one tensor at a time (no second copy in memory),
    in the layout the ``safetensors`` library reads: sorted keys, an 8-byte-aligned header."""
    header, offset, order = {}, 0, sorted(tensors)
    for key in order:
        arr = tensors[key]
        header[key] = {"dtype": _safetensors_name(arr.dtype), "shape": list(arr.shape),
                       "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for key in order:
            f.write(np.ascontiguousarray(tensors[key]).reshape(-1).view(np.uint8).data)


def _safetensors_name(dtype) -> str:
    if dtype.name == "bfloat16":
        return "BF16"
    if np.dtype(dtype) not in _SAFETENSORS_NAMES:
        raise CheckpointError(f"cannot write dtype {dtype} to safetensors")
    return _SAFETENSORS_NAMES[np.dtype(dtype)]


def write_flax_checkpoint(path: str, model, variables: Mapping, format: str = "safetensors") -> None:
    """Write ``variables`` to ``path`` as is (no temp file: ``save_checkpoint`` is the atomic,
    no-clobber way). ``format``: ``'safetensors'`` (flattened keys ``params/stem/conv/kernel``,
    metadata in the header) or ``'msgpack'`` (``flax.serialization``, the nested tree plus a
    ``__resnets_jax__`` entry)."""
    meta = checkpoint_metadata(model)
    if format == "safetensors":
        write_safetensors(path, flatten_variables({c: variables[c] for c in variables}), meta)
    elif format == "msgpack":
        from flax import serialization
        tree = {col: jax.tree_util.tree_map(np.asarray, dict(variables[col])) for col in variables}
        tree[_FLAX_METADATA_KEY] = meta
        with open(path, "wb") as f:
            f.write(serialization.msgpack_serialize(tree))
    else:
        raise ValueError(f"Unknown checkpoint format {format!r}: expected 'safetensors' or 'msgpack'")


def read_flax_msgpack(path: str) -> FlaxStateDict:
    """A msgpack Flax checkpoint (``flax.serialization``) -> flattened ``params/...`` keys."""
    from flax import serialization
    with open(path, "rb") as f:
        data = f.read()
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises several types on bad input; one clear error
        raise CheckpointError(f"{path}: not a msgpack Flax checkpoint ({type(e).__name__}: {e})") from None
    del data
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: not a Flax checkpoint (a msgpack {type(tree).__name__}, expected a map)")
    meta = tree.pop(_FLAX_METADATA_KEY, None) or {}
    out = FlaxStateDict()
    out.metadata = {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
    for path_, v in traverse_util.flatten_dict(tree, sep="/").items():
        if not isinstance(v, np.ndarray) and not np.isscalar(v):
            raise CheckpointError(f"{path}: not a Flax checkpoint ({path_} is a {type(v).__name__}, not an array)")
        out[path_] = np.asarray(v)
    return out


def _flax_item(state_dict: Mapping[str, np.ndarray], key: str) -> Tuple[tuple, np.ndarray]:
    col, _, rest = key.partition("/")
    return (col, tuple(rest.split("/"))), _read(state_dict, key)


def _model_architecture(model) -> str:
    from .registry import get_pretrained_cfg
    variant = getattr(model, "variant", "")
    return get_pretrained_cfg(variant)["architecture"] if variant else ""


def load_flax_state_dict(model, state_dict: Mapping[str, np.ndarray], *, example_input=None) -> dict:
    """A flattened Flax checkpoint (``params/...``) -> the model's variables, checked against
    ``jax.eval_shape(model.init, ...)`` like ``convert_timm_state_dict`` (same errors, in the
    file's own key names), and against the architecture recorded in its metadata."""
    meta = getattr(state_dict, "metadata", None) or {}
    expected, layout = _expected_and_layout(model, example_input, _flax_item, state_dict)
    names = {"/".join((col, *path)): (col, path) for col, path in expected}
    out, unexpected, mismatched = {}, [], []
    for key, (flax_key, value) in layout.items():
        if flax_key not in expected:
            unexpected.append(key)
        elif value.shape != expected[flax_key].shape:
            mismatched.append(f"{key}: checkpoint {value.shape} vs model {tuple(expected[flax_key].shape)}")
        else:
            out[flax_key] = value
    del layout
    out = _to_device(out, expected)
    for n, k in names.items():
        if k not in out and n.endswith("/num_batches_tracked"):
            out[k] = jnp.zeros(expected[k].shape, expected[k].dtype)
    missing = [n for n, k in names.items() if k not in out]
    written_for = meta.get("architecture", "")
    if missing or unexpected or mismatched:
        note = f" (the checkpoint was written for {written_for})" if written_for else ""
        raise _mismatch_error(model, missing, unexpected, mismatched, note)
    arch = _model_architecture(model)
    if written_for and arch and written_for.partition(".")[0] != arch:
        raise CheckpointError(f"Checkpoint was written for {written_for}, not {arch}: the variables have the "
                              f"same names and shapes but the architectures differ. Load it with "
                              f"create_model('{written_for}', checkpoint_path=...).")
    return _unflatten(out)


def load_variables(model, state_dict: Mapping[str, np.ndarray], *, skip_missing: Tuple[str, ...] = (),
                   example_input=None) -> dict:
    """The variables of ``model`` from what ``load_state_dict`` read: a Flax checkpoint's
    ``params/...`` keys as they are, timm's keys through ``convert_timm_state_dict``."""
    if is_flax_layout(state_dict):
        return load_flax_state_dict(model, state_dict, example_input=example_input)
    return convert_timm_state_dict(model, state_dict, skip_missing=skip_missing, example_input=example_input)


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


def _offline_reason() -> str:
    # read at call time: huggingface_hub reads HF_HUB_OFFLINE once, when it is imported. An
    # unreachable hub also means cache-only, instead of huggingface_hub's minute of retries.
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set and there is no cached copy"
    if not hub_reachable():
        return "the hub cannot be reached and there is no cached copy"
    return ""


def _hub_download(repo: str, filenames: Tuple[str, ...], cache_dir: Optional[str], revision: Optional[str],
                  what: str, instead: str) -> str:
    """The first of ``filenames`` that ``repo`` has (cache first when offline); else one error
    saying why and what to do ``instead``."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = _offline_reason()
    errors = []
    for filename in filenames:
        try:
            return hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir,
                                   local_files_only=bool(offline))
        except RepositoryNotFoundError:
            errors.append(f"no repository {repo} (or it is private: log in with `hf auth login`)")
            break
        except (EntryNotFoundError, LocalEntryNotFoundError) as e:
            errors.append(f"{filename}: {type(e).__name__}")
        except OSError as e:
            errors.append(f"{filename}: {type(e).__name__}: {e}")
    raise CheckpointError(f"Could not get {what} from the Hugging Face hub ({repo}): "
                          f"{offline or '; '.join(errors)}. {instead}")


def download_pretrained(cfg: dict, cache_dir: Optional[str] = None) -> str:
    """Fetch ``model.safetensors`` (else ``pytorch_model.bin``) of a pretrained tag with
    huggingface_hub, honouring its cache, ``cache_dir`` and ``HF_HUB_OFFLINE``."""
    repo = cfg.get("hf_hub_id")
    source = cfg.get("source") or f"{cfg['architecture']}.{cfg['tag']}"
    if not repo:
        raise CheckpointError(f"{source} has no pretrained weights; pass checkpoint_path= instead")
    extra = f", num_classes={cfg['num_classes']}" if cfg.get("source") else ""
    return _hub_download(
        repo, ("model.safetensors", "pytorch_model.bin"), cache_dir, cfg.get("hf_hub_revision"),
        f"weights for {source}",
        f"Without network access, download the file elsewhere and pass it as "
        f"create_model('{cfg['architecture']}', checkpoint_path='model.safetensors'{extra}).")


def hf_hub_config(name: str, cache_dir: Optional[str] = None) -> dict:
    """The pretrained config of ``hf-hub:<org>/<repo>[@revision]``: a timm model on the hub,
    described by its ``config.json`` (as ``timm.models.push_to_hub`` writes it: ``architecture``,
    ``num_classes``, ``model_args``, ``pretrained_cfg``). Cached in the registry, so that
    ``get_pretrained_cfg`` / ``resolve_data_config`` of the same name find it."""
    from .registry import get_pretrained_cfg, model_entrypoint, parse_hf_hub_name, register_hf_hub_cfg
    model_id = parse_hf_hub_name(name)
    if not model_id:
        raise ValueError(f"{name!r} is not an hf-hub: name (expected 'hf-hub:<org>/<repo>')")
    repo, _, revision = model_id.partition("@")
    path = _hub_download(repo, ("config.json",), cache_dir, revision or None, f"config.json of {name}",
                         "Without network access, download the repository's model.safetensors elsewhere and "
                         "pass it as create_model('<architecture>', checkpoint_path='model.safetensors', "
                         "num_classes=<its number of classes>).")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        if not isinstance(raw, dict) or "architecture" not in raw:
            raise ValueError("no 'architecture' field")
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{name}: config.json is not a timm model config ({e})") from None
    if "pretrained_cfg" in raw:
        pcfg = dict(raw["pretrained_cfg"])
    else:  # timm's legacy single-dict config
        pcfg = {k: v for k, v in raw.items() if k not in ("architecture", "num_features")}
    arch = raw["architecture"]
    try:
        model_entrypoint(arch)
    except ValueError as e:
        raise ValueError(f"{name} is a timm {arch!r} model, which resnets_jax does not implement. {e}") from None
    model_args = dict(raw.get("model_args") or {})
    pcfg.setdefault("classifier", get_pretrained_cfg(arch).get("classifier"))
    for k in ("num_classes", "label_names", "label_descriptions"):  # top-level overrides, as timm
        if k in raw:
            pcfg[k] = raw[k]
    if model_args.get("in_chans") is not None and pcfg.get("input_size"):
        pcfg["input_size"] = (model_args["in_chans"], *pcfg["input_size"][1:])
    cfg = dict(pcfg, architecture=arch, tag="", hf_hub_id=repo, hf_hub_revision=revision or None,
               source=f"hf-hub:{model_id}", model_args=model_args)
    cfg.setdefault("num_classes", model_args.get("num_classes", 1000))
    return register_hf_hub_cfg(model_id, cfg)
