"""resnets_jax.io.torch_pickle: torch checkpoints read without torch, equal to torch.load bit for bit.

Every file here is written by torch (or timm's own CheckpointSaver); the torch-free reads all run
in ONE subprocess where `import torch` fails, and the parent compares them with
`torch.load(path, weights_only=True)` (with argparse.Namespace allowlisted, as timm loads). Hostile
files are read in that same subprocess: each must be refused with a clear error and its payload
(which would create a marker file) must not have run.
"""
import argparse
import collections
import io
import json
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap
import warnings
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from resnets_jax.io import torch_zip as tp

# The subprocess: torch made unimportable before the reader is imported; each file's result (or
# the error it raised) pickled back, with each array's strides and (storage buffer, byte offset)
# so that views and shared storages can be checked against torch's.
_READER = textwrap.dedent("""
    import json, pickle, sys
    sys.modules["torch"] = None  # `import torch` now raises ImportError
    import numpy as np
    from resnets_jax.io.torch_zip import load_torch_file
    try:
        import torch
        raise SystemExit("torch importable")
    except ImportError:
        pass

    def layout(obj, path, out, roots):
        if isinstance(obj, np.ndarray):
            root = obj
            while isinstance(root.base, np.ndarray):
                root = root.base
            ptr = obj.__array_interface__["data"][0] - root.__array_interface__["data"][0]
            out[path] = (obj.strides, roots.setdefault(id(root), len(roots)), ptr)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                layout(v, f"{path}/{k}", out, roots)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                layout(v, f"{path}/{i}", out, roots)

    results = {}
    for name, path in json.loads(sys.argv[1]).items():
        try:
            obj = load_torch_file(path)
            lay = {}
            layout(obj, "", lay, {})
            results[name] = ("ok", obj, lay)
        except Exception as e:
            results[name] = ("error", type(e).__name__, str(e))
    with open(sys.argv[2], "wb") as f:
        pickle.dump(results, f)
""")


class _Payload:
    """Unpickling this calls `func(arg)`; with the payloads below that creates a marker file."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def _sgd_checkpoint_parts():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.randn(2, 3, 6, 6))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    opt.step()  # fills the momentum buffers
    return model, opt


def _rezip(src, dst, edit):
    """Copy a torch zip entry by entry, `edit(name, bytes) -> [(name, bytes)]` on each."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            for name, data in edit(info.filename, zin.read(info)):
                zout.writestr(name, data)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every file the tests read: name -> (path, object saved or None)."""
    d = tmp_path_factory.mktemp("torchfiles")
    out = {}

    def save(name, obj, **kw):
        path = str(d / f"{name}.pth")
        torch.save(obj, path, **kw)
        out[name] = path

    torch.manual_seed(0)
    model, opt = _sgd_checkpoint_parts()
    save("state_dict", model.state_dict())
    save("dtypes", {
        "f32": torch.randn(3, 4), "f16": torch.randn(5).half(), "bf16": torch.randn(2, 3).bfloat16(),
        "f64": torch.randn(4, dtype=torch.float64), "i64": torch.tensor(7),
        "i32": torch.arange(-3, 3, dtype=torch.int32), "i16": torch.arange(4, dtype=torch.int16),
        "i8": torch.arange(-4, 4, dtype=torch.int8), "u8": torch.arange(250, 256, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]), "c64": torch.randn(3, dtype=torch.complex64),
        "u16": torch.arange(5).to(torch.uint16), "f8": torch.randn(6).to(torch.float8_e4m3fn),
        "empty": torch.zeros(0, 3), "scalar_f": torch.tensor(1.5)})
    base = torch.randn(4, 6, 5)
    save("views", {
        "strided": base[1:, ::2, 1:4],  # storage offset 31 and non-contiguous strides
        "row": base[2],  # shares the storage with `strided`
        "transposed": base.transpose(0, 2),
        "channels_last": torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
        "expanded": torch.randn(3, 1).expand(3, 4),  # stride 0
        "param": torch.nn.Parameter(torch.randn(2, 2))})
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}

    class _Ema(torch.nn.Module):  # timm's get_state_dict unwraps `.module`
        def __init__(self):
            super().__init__()
            self.module = _sgd_checkpoint_parts()[0]
            self.module.load_state_dict(ema)

    from timm.utils import CheckpointSaver
    args = argparse.Namespace(model="tiny", lr=0.1, epochs=3, input_size=None, mean=[0.5, 0.5])
    saver = CheckpointSaver(model, opt, args=args, model_ema=_Ema(), checkpoint_dir=str(d))
    saver._save(str(d / "last.pth.tar"), epoch=3, metric=0.5)  # what train.py writes
    out["train_checkpoint"] = str(d / "last.pth.tar")
    save("optimizer", {"optimizer": opt.state_dict(), "model": model.state_dict()})
    compiled = torch.compile(model)  # lazy: the state dict's keys start with `_orig_mod.`
    save("compiled", compiled.state_dict())
    save("prefixed", collections.OrderedDict(
        [("module._orig_mod.a", torch.ones(1)), ("_orig_mod.module.b", torch.ones(2)),
         ("module.module.c", torch.ones(3)), ("_orig_mod.d", torch.ones(4)), ("e", torch.ones(5))]))
    save("containers", {"list": [torch.ones(2), 3, "x"], "tuple": (1.5, None, True),
                        "size": torch.Size([2, 3]), "dtype": torch.float16, "bytes": b"\x00\xff",
                        "set": {1, 2}, "complex": 1 + 2j, "device": torch.device("cpu"),
                        "counter": collections.Counter("aab"), "bytearray": bytearray(b"ab"),
                        "nested": {"deep": {"t": torch.arange(3)}}})
    save("legacy", {"w": torch.randn(2)}, _use_new_zipfile_serialization=False)

    # Big-endian: the same file with every storage byteswapped and byteorder "big".
    save("little", {"f32": torch.randn(3), "c64": torch.randn(2, dtype=torch.complex64),
                    "bf16": torch.randn(3).bfloat16(), "i64": torch.arange(3)})
    sizes = {"0": 4, "1": 8, "2": 2, "3": 8}  # element (or complex part) size per storage key

    def to_big(name, data):
        key = name.rsplit("/", 1)[-1]
        if name.endswith("/byteorder"):
            return [(name, b"big")]
        if "/data/" in name:
            unit = sizes[key] // 2 if key == "1" else sizes[key]
            return [(name, np.frombuffer(data, f"<u{unit}").astype(f">u{unit}").tobytes())]
        return [(name, data)]
    _rezip(out["little"], d / "big.pth", to_big)
    out["big"] = str(d / "big.pth")

    # Hostile files. Each payload would create a file under `marker_dir` if it ran.
    marker = d / "marker"
    out["_marker"] = str(marker)
    save("os_system_zip", {"w": torch.ones(2), "x": _Payload(os.system, f"touch {marker}_1")})
    save("eval_zip", {"x": _Payload(eval, f"open({str(marker) + '_2'!r}, 'w')")})
    for name, payload in (("os_system_bare", _Payload(os.system, f"touch {marker}_3")),
                          ("eval_bare", _Payload(eval, f"open({str(marker) + '_4'!r}, 'w')"))):
        (d / f"{name}.pth").write_bytes(pickle.dumps({"x": payload}, protocol=2))
        out[name] = str(d / f"{name}.pth")
    save("torch_function", {"f": torch.nn.functional.relu})
    save("pickled_module", torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
    out["pickled_module_bare"] = str(d / "pickled_module_bare.pth")
    buf = io.BytesIO()
    torch.save(torch.nn.Linear(2, 2), buf, _use_new_zipfile_serialization=False)
    (d / "pickled_module_bare.pth").write_bytes(buf.getvalue())
    save("sparse", {"s": torch.eye(3).to_sparse()})
    with warnings.catch_warnings():  # quantized tensors are deprecated in torch; still saved
        warnings.simplefilter("ignore")
        save("quantized", {"q": torch.quantize_per_tensor(torch.randn(3), 0.1, 0, torch.qint8)})
    save("truncated_src", {"w": torch.randn(64)})
    _rezip(out["truncated_src"], d / "truncated.pth",
           lambda n, b: [(n, b[:-4] if n.endswith("/data/0") else b)])
    out["truncated"] = str(d / "truncated.pth")
    raw = pathlib.Path(out["truncated_src"]).read_bytes()
    (d / "cut.pth").write_bytes(raw[: len(raw) // 2])  # a download cut short
    out["cut"] = str(d / "cut.pth")
    for name, evil in (("dotdot", "../escaped"), ("absolute", "/tmp/escaped_abs")):
        _rezip(out["state_dict"], d / f"{name}.pth",
               lambda n, b, evil=evil: [(n, b)] + ([(evil, b"x")] if n.endswith("data.pkl") else []))
        out[name] = str(d / f"{name}.pth")
    (d / "plain.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    out["bare_benign"] = str(d / "plain.pkl")
    (d / "noise.bin").write_bytes(b"not a checkpoint at all")
    out["noise"] = str(d / "noise.bin")
    np.savez(d / "weights.npz", a=np.zeros(2))
    out["npz"] = str(d / "weights.npz")
    return out


@pytest.fixture(scope="module")
def torchfree(files, tmp_path_factory):
    """name -> ('ok', object, layouts) or ('error', exception class name, message), read
    without torch in one subprocess."""
    res_path = tmp_path_factory.mktemp("res") / "results.pkl"
    paths = {k: v for k, v in files.items() if not k.startswith("_")}
    repo = str(pathlib.Path(tp.__file__).parents[2])  # the copy of resnets_jax under test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _READER, json.dumps(paths), str(res_path)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(res_path, "rb") as f:
        return pickle.load(f)  # written by our own subprocess above


def _torch_load(path):
    with torch.serialization.safe_globals([argparse.Namespace]):  # as timm's _torch_load
        return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same(ref, got, path=""):
    """`got` (numpy) equals `ref` (torch.load) bit for bit, container by container."""
    if isinstance(ref, torch.Tensor):
        assert isinstance(got, np.ndarray), path
        assert got.dtype.name == str(ref.dtype).removeprefix("torch."), path
        assert got.shape == tuple(ref.shape), path
        ref_bytes = ref.detach().reshape(-1).contiguous().view(torch.uint8).numpy()
        assert np.array_equal(np.ascontiguousarray(got).reshape(-1).view(np.uint8), ref_bytes), path
    elif isinstance(ref, dict):
        assert type(got) is type(ref), path
        assert list(got) == list(ref), path
        for k in ref:
            _assert_same(ref[k], got[k], f"{path}/{k}")
    elif isinstance(ref, list | tuple):  # torch.Size reads as a plain tuple
        assert type(got) is (tuple if isinstance(ref, tuple) else list), path
        assert len(got) == len(ref), path
        for i, (r, g) in enumerate(zip(ref, got)):
            _assert_same(r, g, f"{path}/{i}")
    elif isinstance(ref, argparse.Namespace):
        assert isinstance(got, argparse.Namespace), path
        _assert_same(vars(ref), vars(got), path)
    elif isinstance(ref, torch.dtype):
        assert got == np.dtype(str(ref).removeprefix("torch.")), path
    elif isinstance(ref, torch.device):
        assert got == str(ref), path
    else:
        assert type(got) is type(ref) and got == ref, (path, got, ref)


def _tensors(obj, path=""):
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{path}/{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{path}/{i}")


GOOD = ["state_dict", "dtypes", "views", "train_checkpoint", "optimizer", "compiled", "prefixed",
        "containers", "little", "big"]


@pytest.mark.parametrize("name", GOOD)
def test_equals_torch_load(files, torchfree, name):
    status, got, layout = torchfree[name]
    assert status == "ok", got
    ref = _torch_load(files[name])
    _assert_same(ref, got)
    # Layout as torch's: same strides; tensors that share a torch storage share one buffer,
    # at torch's byte offset (storages are read once, views are views).
    storage_ids = {}
    for path, t in _tensors(ref):
        strides, buffer_id, offset = layout[path]
        assert strides == tuple(s * t.element_size() for s in t.stride()), path
        assert offset == t.storage_offset() * t.element_size(), path
        assert storage_ids.setdefault(t.untyped_storage().data_ptr(), buffer_id) == buffer_id, path
    assert len(set(storage_ids.values())) == len(storage_ids)  # and distinct ones stay distinct


def test_views_share_storage(files, torchfree):
    """The fixture's `strided` and `row` views share one storage; channels-last keeps its strides."""
    layout = torchfree["views"][2]
    assert layout["/strided"][1] == layout["/row"][1]
    assert layout["/strided"][2] == (30 + 1) * 4  # base[1:, ::2, 1:4] starts at element 31
    got = tp.load_torch_file(files["views"])  # in process: the arrays themselves
    assert np.shares_memory(got["strided"], got["row"])
    assert got["channels_last"].strides == (240, 4, 60, 12)
    got["row"][0, 1] = 123.0  # base[2, 0, 1]: one storage, as in torch: a write shows through the other view
    assert got["strided"][1, 0, 0] == 123.0


@pytest.mark.parametrize("use_ema", [True, False])
@pytest.mark.parametrize("name", ["train_checkpoint", "optimizer", "compiled", "prefixed",
                                  "state_dict"])
def test_checkpoint_state_dict_as_timm(files, torchfree, name, use_ema):
    """Same choice (EMA by default), same cleaned keys and values as timm's load_state_dict."""
    timm_helpers = pytest.importorskip("timm.models._helpers")
    ref = timm_helpers.load_state_dict(files[name], use_ema=use_ema)
    sd, key = tp.checkpoint_state_dict(torchfree[name][1], use_ema=use_ema)
    assert list(sd) == list(ref)
    for k in ref:
        _assert_same(ref[k], sd[k], k)
    expected_key = {"train_checkpoint": "state_dict_ema" if use_ema else "state_dict",
                    "optimizer": "model"}.get(name)
    assert key == expected_key


def test_checkpoint_state_dict_choices():
    a, b, c = np.zeros(1), np.ones(1), np.full(1, 2.0)
    assert tp.checkpoint_state_dict({"model_ema": {"x": a}, "model": {"x": b}}) == ({"x": a}, "model_ema")
    # None EMA entries are skipped, as timm's `.get(...) is not None`
    sd, key = tp.checkpoint_state_dict({"state_dict_ema": None, "state_dict": {"module.x": c}})
    assert key == "state_dict" and list(sd) == ["x"]
    assert tp.clean_state_dict({"module._orig_mod.a": 1, "_orig_mod.module.b": 2,
                                "module.module.c": 3}) == {"a": 1, "b": 2, "module.c": 3}
    with pytest.raises(tp.TorchFileError, match=r"entry 'epoch' is a int.*'state_dict'"):
        tp.checkpoint_state_dict({"epoch": 3, "weights": {"x": a}})


def test_legacy_format(files, torchfree):
    status, cls, msg = torchfree["legacy"]
    assert (status, cls) == ("error", "LegacyFormatError")
    assert "legacy" in msg and "needs torch" in msg
    got = tp.load_torch_file(files["legacy"], allow_torch_fallback=True)  # torch is here
    _assert_same(_torch_load(files["legacy"]), got)


HOSTILE = {  # and files holding what numpy cannot represent
    # name: (error class, text the message must hold)
    "os_system_zip": ("UnsafePickleError", "refused global posix.system"),
    "os_system_bare": ("UnsafePickleError", "refused global posix.system"),
    "eval_zip": ("UnsafePickleError", "refused global builtins.eval"),
    "eval_bare": ("UnsafePickleError", "refused global builtins.eval"),
    "torch_function": ("UnsafePickleError", "refused global torch.nn.functional.relu"),
    "pickled_module": ("PickledModuleError", "holds a pickled module"),
    "pickled_module_bare": ("PickledModuleError", "holds a pickled module"),
    "sparse": ("TorchFileError", "a sparse tensor, which is not read without torch"),
    "quantized": ("TorchFileError", "a quantized tensor, which is not read without torch"),
    "truncated": ("TorchFileError", "truncated storage"),
    "cut": ("TorchFileError", "cut short or corrupt"),
    "dotdot": ("TorchFileError", "'../escaped' points outside the archive"),
    "absolute": ("TorchFileError", "'/tmp/escaped_abs' points outside the archive"),
    "bare_benign": ("TorchFileError", "not a torch checkpoint"),
    "noise": ("TorchFileError", "not a checkpoint file (found 23 bytes starting with b'not a checkp'); expected"),
    "npz": ("TorchFileError", "not a torch checkpoint"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_refused(files, torchfree, name):
    status, cls, msg = torchfree[name]
    assert status == "error", name
    assert (cls, HOSTILE[name][1] in msg) == (HOSTILE[name][0], True), msg
    assert files[name] in msg  # the message names the file
    marker_dir = os.path.dirname(files["_marker"])
    assert not [p for p in os.listdir(marker_dir) if p.startswith("marker")]  # nothing ran
    assert not os.path.exists(os.path.join(os.path.dirname(marker_dir), "escaped"))
    assert not os.path.exists("/tmp/escaped_abs")


def test_pickled_module_message(torchfree):
    _, _, msg = torchfree["pickled_module"]
    for needed in ("torch.nn.modules.container.Sequential", "torch.nn.modules.linear.Linear",
                   "torch.nn.modules.activation.ReLU", "torch.save(model.state_dict()"):
        assert needed in msg
