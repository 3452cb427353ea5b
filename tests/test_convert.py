"""``resnets-jax convert``, Flax checkpoints loaded back, ``convert/convert_many.py``, and every
bad input the command line meets: a clear ``error: ...``, a non-zero exit, no file written or
overwritten."""
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import resnets_jax as rj
from resnets_jax.io.flax_checkpoint import flatten_variables
from resnets_jax.io.files import TEMP_SUFFIX
from resnets_jax import CheckpointError
from resnets_jax.tools import cli
from hub_cache import hub_cache, timm_hub_export
from timm_ref import jit_apply, perturb_, rel_err, timm_forward

torch = pytest.importorskip("torch")  # the reference (the [dev] extra; make test installs it)
timm = pytest.importorskip("timm")  # the reference (the [dev] extra; make test installs it)

NAME = "resnetv2_18"
TAG = "resnetv2_18.ra4_e3600_r224_in1k"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def timm_model():
    torch.manual_seed(0)
    return perturb_(timm.create_model(NAME), seed=7).eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, timm_model):
    """The perturbed resnetv2_18 as timm users have it: model.safetensors and pytorch_model.bin."""
    from safetensors.torch import save_file
    d = tmp_path_factory.mktemp("timm")
    save_file(timm_model.state_dict(), str(d / "model.safetensors"))
    torch.save(timm_model.state_dict(), d / "pytorch_model.bin")
    return d


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)


def _convert(capsys, *args):
    code = cli.main(["convert", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _leftovers(directory):
    return [p.name for p in Path(directory).iterdir() if p.name.endswith(TEMP_SUFFIX)]


# ----------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("fmt, source", [("safetensors", "model.safetensors"), ("msgpack", "pytorch_model.bin")])
def test_convert_verify_and_load_back(tmp_path, capsys, ckpt, timm_model, x, fmt, source):
    out = tmp_path / f"r18.{fmt}"
    code, stdout, err = _convert(capsys, NAME, "--checkpoint", ckpt / source, "--output", out, "--verify")
    assert code == 0, err
    parity = float(re.search(r"max \|logit difference\| / max \|logit\| = (\S+)", stdout).group(1))
    assert parity < 1e-4
    assert rj.io.is_flax_checkpoint(out) and _leftovers(tmp_path) == []
    assert (out.read_bytes()[8:9] == b"{") == (fmt == "safetensors")  # format as asked
    model, variables = rj.create_model(NAME, checkpoint_path=str(out))
    assert rel_err(np.asarray(jit_apply(model, variables, x)), timm_forward(timm_model, x)) < 1e-4
    _, direct = rj.create_model(NAME, checkpoint_path=str(ckpt / source))
    assert _identical(variables, direct)  # bit-exact, not only close


def _identical(a, b) -> bool:
    a, b = flatten_variables(a), flatten_variables(b)
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


def test_safetensors_output_is_standard_and_labelled(tmp_path, ckpt):
    from safetensors import safe_open
    model, variables = rj.create_model(NAME, checkpoint_path=str(ckpt / "model.safetensors"))
    path = rj.save_checkpoint(model, variables, tmp_path / "r18.safetensors")
    flat = flatten_variables(variables)
    with safe_open(path, "np") as f:  # the safetensors library reads what we stream out
        meta = f.metadata()
        assert set(f.keys()) == set(flat) and "params/stem/conv/kernel" in flat
        for k in ("params/stem/conv/kernel", "batch_stats/norm/var"):
            np.testing.assert_array_equal(f.get_tensor(k), flat[k])
    assert meta["format"] == "resnets_jax" and meta["architecture"] == TAG
    assert (meta["num_classes"], meta["in_chans"]) == ("1000", "3")


def test_flax_checkpoint_of_another_architecture(tmp_path, ckpt):
    model, variables = rj.create_model(NAME, checkpoint_path=str(ckpt / "model.safetensors"))
    path = rj.save_checkpoint(model, variables, tmp_path / "r18.safetensors")
    with pytest.raises(CheckpointError) as e:
        rj.create_model("resnetv2_18d", checkpoint_path=path)
    # one line naming both, before the keys that differ (hundreds of them, all from the one cause)
    assert str(e.value).startswith("Checkpoint was written for resnetv2_18.ra4_e3600_r224_in1k, not resnetv2_18d. "
                                   "Load it as resnetv2_18.ra4_e3600_r224_in1k")
    assert "\n" not in str(e.value) and "missing keys" not in str(e.value)
    # a timm-layout export records its architecture too
    timm_file = rj.export_timm_checkpoint(model, variables, str(tmp_path / "timm.safetensors"))
    with pytest.raises(CheckpointError, match="^Checkpoint was written for resnetv2_18, not resnetv2_18d"):
        rj.create_model("resnetv2_18d", checkpoint_path=timm_file)


def test_flax_checkpoint_records_num_classes(tmp_path, monkeypatch):
    """A 7-class hf-hub: model converted from the hub loads back by architecture name alone."""
    torch.manual_seed(0)
    tmodel = perturb_(timm.create_model(NAME, num_classes=7), seed=2).eval()
    cache = hub_cache(tmp_path / "hub", "someone/r18-7", timm_hub_export(tmodel, tmp_path / "export"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = rj.convert_checkpoint("hf-hub:someone/r18-7", tmp_path / "r18-7.msgpack", from_hub=True,
                                cache_dir=str(cache), verify=True)
    assert res.format == "msgpack" and res.parity < 1e-4 and res.checkpoint.startswith(str(cache))
    model, variables = rj.create_model(NAME, checkpoint_path=res.output)
    assert model.num_classes == 7
    x = np.random.default_rng(1).standard_normal((1, 64, 64, 3)).astype(np.float32)
    assert rel_err(np.asarray(jit_apply(model, variables, x)), timm_forward(tmodel, x)) < 1e-4


def test_failed_verification_writes_nothing_and_keeps_the_old_file(tmp_path, ckpt):
    out = tmp_path / "r18.safetensors"
    out.write_bytes(b"the user's previous file")
    with pytest.raises(CheckpointError, match="Verification failed.*nothing written"):
        rj.convert_checkpoint(NAME, out, checkpoint_path=str(ckpt / "model.safetensors"), force=True,
                              verify=True, verify_tol=-1.0)  # no parity figure can pass
    assert out.read_bytes() == b"the user's previous file" and _leftovers(tmp_path) == []


def test_force_overwrites(tmp_path, capsys, ckpt):
    out = tmp_path / "r18.safetensors"
    out.write_bytes(b"old")
    code, _, err = _convert(capsys, NAME, "--checkpoint", ckpt / "model.safetensors", "-o", out, "--force")
    assert code == 0, err
    assert rj.io.is_flax_checkpoint(out)


# ----------------------------------------------------------------------------- bad input

def _assert_refused(code, err, out, match):
    assert code == 2
    error = [line for line in err.splitlines() if line.startswith("error: ")]  # after any progress lines
    assert error and re.search(match, err[err.index("error: "):], re.S), err
    assert not out.exists() and _leftovers(out.parent) == []


def test_unknown_model_suggests(tmp_path, capsys, ckpt):
    out = tmp_path / "out.safetensors"
    code, _, err = _convert(capsys, "resnetv2_1", "--checkpoint", ckpt / "model.safetensors", "-o", out)
    _assert_refused(code, err, out, r"Unknown model 'resnetv2_1'\. Did you mean: resnetv2_18")


def test_checkpoint_of_another_architecture(tmp_path, capsys, ckpt):
    out = tmp_path / "out.safetensors"
    code, _, err = _convert(capsys, "resnetv2_18d", "--checkpoint", ckpt / "model.safetensors", "-o", out)
    _assert_refused(code, err, out, r"does not match resnetv2_18d")
    assert re.search(r"missing keys \(\d+\), in the model but not the checkpoint: stem\.conv1\.weight", err)
    assert re.search(r"unexpected keys \(\d+\), in the checkpoint but not the model: stem\.conv\.weight", err)


def _truncated(ckpt, name):
    data = (ckpt / name).read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize("kind, match", [
    ("empty", "empty file"),
    ("text", r"not a checkpoint file \(found 43 bytes starting with b.Hello, this .\); expected safetensors"),
    ("truncated-safetensors", "truncated"),
    ("truncated-bin", "cut short or corrupt"),
    ("directory", "a directory without weights to load; looked for model_best.safetensors"),  # not a run directory
    ("missing", "no such file"),
    ("json", r"not a checkpoint file \(found 31 bytes starting with b.{\"architectu.\); expected safetensors"),
])
def test_not_a_checkpoint(tmp_path, capsys, ckpt, kind, match):
    src = tmp_path / "weights.bin"
    if kind == "empty":
        src.write_bytes(b"")
    elif kind == "text":
        src.write_text("Hello, this is a README, not a checkpoint.\n")
    elif kind == "json":
        src.write_text(json.dumps({"architecture": NAME}))
    elif kind == "truncated-safetensors":
        src.write_bytes(_truncated(ckpt, "model.safetensors"))
    elif kind == "truncated-bin":
        src.write_bytes(_truncated(ckpt, "pytorch_model.bin"))
    elif kind == "directory":
        src.mkdir()
    out = tmp_path / "out" / "r18.safetensors"
    out.parent.mkdir()
    code, _, err = _convert(capsys, NAME, "--checkpoint", src, "-o", out)
    _assert_refused(code, err, out, match)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this pickle runs code",))


def test_pickle_that_is_not_plain_weights(tmp_path, capsys):
    src = tmp_path / "checkpoint.pth"
    with open(src, "wb") as f:
        pickle.dump({"state_dict": _RunsCode()}, f)
    out = tmp_path / "out.safetensors"
    code, stdout, err = _convert(capsys, NAME, "--checkpoint", src, "-o", out)
    _assert_refused(code, err, out, r"refused global posix.system")
    assert "this pickle runs code" not in stdout


@pytest.mark.parametrize("out, match", [
    ("no/such/dir/out.safetensors", r"the output directory .*/no/such/dir does not exist"),
    ("no/", r"no/ names a directory \(it ends in a separator\); expected a file name"),  # a folder meant
    (None, r"is a directory, expected a file name"),  # an existing folder
])
def test_output_that_is_not_a_file_name(tmp_path, capsys, ckpt, out, match):
    out = str(tmp_path) if out is None else f"{tmp_path}/{out}"
    code, _, err = _convert(capsys, NAME, "--checkpoint", ckpt / "model.safetensors", "-o", out)
    assert code == 2 and re.search("error: .*" + match, err), err
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("out, fmt, match", [
    ("out.npz", [], r"out\.npz: a safetensors checkpoint named \.npz .*; name it \.safetensors$"),
    ("out.safetensors", ["--format", "msgpack"],
     r"a msgpack checkpoint named \.safetensors .* or --format safetensors"),
    ("out.msgpack", ["--format", "safetensors"], r"a safetensors checkpoint named \.msgpack .* or --format msgpack"),
    ("out.json", [], r"a safetensors checkpoint named \.json")])
def test_output_name_that_says_another_format(tmp_path, capsys, ckpt, out, fmt, match):
    """A name whose suffix says another format than the one written (a reader goes by the name):
    refused before any work, nothing written."""
    code, _, err = _convert(capsys, NAME, "--checkpoint", ckpt / "model.safetensors", "-o", tmp_path / out, *fmt)
    assert code == 2 and re.search("error: .*" + match, err.strip()), err
    assert sorted(os.listdir(tmp_path)) == []


def test_existing_output_without_force(tmp_path, capsys, ckpt):
    out = tmp_path / "r18.safetensors"
    out.write_bytes(b"keep me")
    before = out.stat().st_mtime_ns
    code, _, err = _convert(capsys, NAME, "--checkpoint", ckpt / "model.safetensors", "-o", out)
    assert code == 2 and re.search(r"error: .*r18\.safetensors exists; pass --force", err)
    assert out.read_bytes() == b"keep me" and out.stat().st_mtime_ns == before and _leftovers(tmp_path) == []


def test_no_weights_source(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # argparse: one of --checkpoint / --from-hub is required
        cli.main(["convert", NAME, "-o", str(tmp_path / "x.safetensors")])
    assert e.value.code == 2 and "one of the arguments --checkpoint --from-hub is required" in capsys.readouterr().err


def test_from_hub_offline_without_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out.safetensors"
    code, _, err = _convert(capsys, TAG, "--from-hub", "--cache-dir", tmp_path / "empty", "-o", out)
    _assert_refused(code, err, out, r"HF_HUB_OFFLINE is set.*--checkpoint model\.safetensors")  # the command's flag


# ----------------------------------------------------------------------------- convert_many

def test_convert_many_from_an_offline_hub_cache(tmp_path, ckpt):
    cache = hub_cache(tmp_path / "hub", f"timm/{TAG}", {"model.safetensors": ckpt / "model.safetensors"})
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), PYTHONPATH=str(REPO_ROOT))
    res = subprocess.run([sys.executable, str(REPO_ROOT / "convert" / "convert_many.py"), "resnetv2_18*",
                          "resnetv2_nope", "--output-dir", str(tmp_path / "out")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 1, res.stderr  # one failure among them
    rows = {line.split()[0]: line for line in res.stdout.splitlines() if line.startswith("resnetv2_")}
    assert rj.list_pretrained("resnetv2_18*") == [TAG, "resnetv2_18d.ra4_e3600_r224_in1k"]
    assert " ok " in rows[TAG] and re.search(r"\d\.\d\de-\d\d", rows[TAG])  # verified, with its figure
    assert " FAILED " in rows["resnetv2_18d.ra4_e3600_r224_in1k"]  # not in the cache: offline
    assert " FAILED " in rows["resnetv2_nope"]
    assert "HF_HUB_OFFLINE" in res.stdout and "Unknown model 'resnetv2_nope'" in res.stdout
    assert os.listdir(tmp_path / "out") == [f"{TAG}.safetensors"]
    model, variables = rj.create_model(TAG, checkpoint_path=str(tmp_path / "out" / f"{TAG}.safetensors"))
    assert model.num_classes == 1000


@pytest.mark.parametrize("with_timm", [True, False])
def test_fallback_checkpoint_is_labelled_and_loads_in_timm(tmp_path, monkeypatch, with_timm):
    """Without the hub, demos get a random-init checkpoint in timm's layout, written by timm or
    (without torch) by our exporter, and say so; timm loads either strictly."""
    import timm
    from resnets_jax.tools import fallback
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    if not with_timm:
        monkeypatch.setattr(fallback, "timm_available", lambda: False)
    source = fallback.timm_checkpoint("resnetv2_18.ra4_e3600_r224_in1k", tmp_path / "fallback")
    assert not source.pretrained and source.message.startswith(fallback.FALLBACK_BANNER)
    assert os.path.dirname(source.path) == str(tmp_path / "fallback")
    timm.models.load_checkpoint(timm.create_model("resnetv2_18"), source.path, strict=True)
    assert fallback.timm_checkpoint("resnetv2_18.ra4_e3600_r224_in1k", tmp_path / "fallback").path == source.path


@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
def test_torch_state_dict_of_any_float_dtype(dtype):
    """convert_timm_state_dict takes ``model.state_dict()`` as torch gives it, in every float
    dtype (numpy has no bfloat16: through ml_dtypes): the values those tensors hold, as float32."""
    tmodel = timm.create_model("test_resnet")
    sd = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in tmodel.state_dict().items()}
    model = rj.build_model("test_resnet")
    ours = flatten_variables(rj.convert_timm_state_dict(model, sd))
    upcast = flatten_variables(rj.convert_timm_state_dict(model, {k: v.float().numpy() for k, v in sd.items()}))
    assert ours.keys() == upcast.keys()
    for k in ours:
        np.testing.assert_array_equal(np.asarray(ours[k]), np.asarray(upcast[k]), err_msg=k)
