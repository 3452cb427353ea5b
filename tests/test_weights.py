"""Checkpoint files in every form timm users have, the hub cache, and bad input."""
import json
import os
import pickle

import jax
import numpy as np
import pytest

import resnets_jax as rj
from resnets_jax import CheckpointError
from resnets_jax.convert import fresh_variables
from resnets_jax.convert.keys import flat_variables
from hub_cache import hub_cache
from timm_ref import perturb_, rel_err, timm_forward, timm_state_dict

torch = pytest.importorskip("torch")  # the reference (the [dev] extra; make test installs it)
timm = pytest.importorskip("timm")  # the reference (the [dev] extra; make test installs it)

NAME = "resnetv2_18"  # the smallest architecture: these tests are about files, not numerics


@pytest.fixture(scope="module")
def timm_model():
    torch.manual_seed(0)
    return perturb_(timm.create_model(NAME), seed=3).eval()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)


def _save_safetensors(sd, path):
    from safetensors.numpy import save_file
    save_file(sd, str(path))


def _check(model, variables, timm_model, x):
    assert rel_err(np.asarray(model.apply(variables, x)), timm_forward(timm_model, x)) < 1e-4


def test_safetensors_loads_without_torch_reader(tmp_path, timm_model, x):
    path = tmp_path / "model.safetensors"
    _save_safetensors(timm_state_dict(timm_model), path)
    sd = rj.load_state_dict(path)
    assert set(sd) == set(timm_model.state_dict())
    model, variables = rj.create_model(NAME, checkpoint_path=str(path))
    _check(model, variables, timm_model, x)


def test_import_and_safetensors_conversion_do_not_import_torch(tmp_path, timm_model):
    import subprocess
    import sys
    path = tmp_path / "model.safetensors"
    _save_safetensors(timm_state_dict(timm_model), path)
    code = ("import sys, resnets_jax as rj; assert 'torch' not in sys.modules; "
            f"rj.create_model('{NAME}', checkpoint_path=r'{path}'); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pytorch_model_bin(tmp_path, timm_model, x):
    path = tmp_path / "pytorch_model.bin"
    torch.save(timm_model.state_dict(), path)
    model, variables = rj.create_model(NAME, checkpoint_path=str(path))
    _check(model, variables, timm_model, x)


@pytest.mark.parametrize("use_ema", [False, True])
def test_timm_training_checkpoint_with_module_prefix(tmp_path, timm_model, x, use_ema):
    sd = {f"module.{k}": v for k, v in timm_model.state_dict().items()}
    decoy = {k: torch.zeros_like(v) for k, v in sd.items()}  # the one that must NOT be picked
    ckpt = {"epoch": 3, "arch": NAME, "optimizer": {"state": {}, "param_groups": []},
            "state_dict": decoy if use_ema else sd, "state_dict_ema": sd if use_ema else decoy}
    path = tmp_path / "checkpoint-3.pth.tar"
    torch.save(ckpt, path)
    model, variables = rj.create_model(NAME, checkpoint_path=str(path), use_ema=use_ema)
    _check(model, variables, timm_model, x)


def test_bf16_safetensors(tmp_path, timm_model, x):
    path = tmp_path / "model.safetensors"
    from safetensors.torch import save_file
    save_file({k: (v.bfloat16() if v.is_floating_point() else v) for k, v in timm_model.state_dict().items()}, path)
    model, variables = rj.create_model(NAME, checkpoint_path=str(path))
    ref = timm_model.state_dict()["stem.conv.weight"].bfloat16().float().numpy()
    np.testing.assert_array_equal(np.asarray(variables["params"]["stem"]["conv"]["kernel"]).transpose(3, 2, 0, 1), ref)


def test_other_architecture_names_missing_and_unexpected_keys(tmp_path, timm_model):
    path = tmp_path / "model.safetensors"
    _save_safetensors(timm_state_dict(timm_model), path)
    with pytest.raises(CheckpointError) as e:
        rj.create_model("resnetv2_50", checkpoint_path=str(path))
    msg = str(e.value)
    assert "resnetv2_50" in msg and "missing keys" in msg and "shape mismatches" in msg
    assert "stages.0.blocks.0.conv3.weight" in msg  # in resnetv2_50 (bottleneck), not in 18 (basic)


def test_shape_mismatch_lists_both_sides(timm_model):
    sd = timm_state_dict(timm_model)
    sd["head.fc.weight"] = sd["head.fc.weight"][:10]
    sd["head.fc.bias"] = sd["head.fc.bias"][:10]
    with pytest.raises(CheckpointError, match=r"head.fc.weight: checkpoint \(10, 512, 1, 1\) vs model \(1000, 512, 1, 1\)"):
        rj.convert_timm_state_dict(rj.build_model(NAME), sd)


def test_checkpoint_without_num_batches_tracked_loads(timm_model, x):
    sd = {k: v for k, v in timm_state_dict(timm_model).items() if not k.endswith("num_batches_tracked")}
    model = rj.build_model(NAME)
    _check(model, rj.convert_timm_state_dict(model, sd), timm_model, x)


def test_extra_key_is_unexpected(timm_model):
    sd = dict(timm_state_dict(timm_model), **{"head.extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match="unexpected keys .*head.extra.weight"):
        rj.convert_timm_state_dict(rj.build_model(NAME), sd)


@pytest.mark.parametrize("content, match", [
    (b"", "empty file"),
    (b"hello, this is not a checkpoint at all", r"not a checkpoint file \(found 38 bytes starting with b.hello.*expected safetensors"),
    (b"\x80\x04K\x03.", "not a torch checkpoint"),  # a bare pickle of 3: torch.load refuses it too
])
def test_non_checkpoint_files(tmp_path, content, match):
    path = tmp_path / "weights.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        rj.create_model(NAME, checkpoint_path=str(path))


def test_truncated_safetensors_and_torch_files(tmp_path, timm_model):
    good = tmp_path / "good.safetensors"
    _save_safetensors(timm_state_dict(timm_model), good)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good.read_bytes()[: os.path.getsize(good) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        rj.create_model(NAME, checkpoint_path=str(bad))
    tgood = tmp_path / "good.bin"
    torch.save(timm_model.state_dict(), tgood)
    tbad = tmp_path / "bad.bin"
    tbad.write_bytes(tgood.read_bytes()[: os.path.getsize(tgood) // 2])
    with pytest.raises(CheckpointError, match="cut short or corrupt"):
        rj.create_model(NAME, checkpoint_path=str(tbad))


class NotWeights:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


def test_pickle_that_is_not_plain_weights_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": NotWeights()}, f)
    with pytest.raises(CheckpointError, match="refused global builtins.print"):
        rj.load_state_dict(path)


def test_missing_file():
    with pytest.raises(CheckpointError, match="no such file"):
        rj.create_model(NAME, checkpoint_path="/nonexistent/model.safetensors")


# ----------------------------------------------------------------------------- the hub

@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
def test_pretrained_from_offline_hub_cache(tmp_path, monkeypatch, timm_model, x, filename):
    src = tmp_path / filename
    if filename.endswith(".bin"):
        torch.save(timm_model.state_dict(), src)
    else:
        _save_safetensors(timm_state_dict(timm_model), src)
    cache = hub_cache(tmp_path / "hub", f"timm/{NAME}.ra4_e3600_r224_in1k", {filename: src})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, variables = rj.create_model(f"{NAME}.ra4_e3600_r224_in1k", pretrained=True, cache_dir=str(cache))
    _check(model, variables, timm_model, x)


def test_pretrained_with_new_num_classes_keeps_backbone(tmp_path, monkeypatch, timm_model, x):
    src = tmp_path / "model.safetensors"
    _save_safetensors(timm_state_dict(timm_model), src)
    cache = hub_cache(tmp_path / "hub", f"timm/{NAME}.ra4_e3600_r224_in1k", {"model.safetensors": src})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, variables = rj.create_model(NAME, pretrained=True, cache_dir=str(cache), num_classes=7,
                                       rng=jax.random.PRNGKey(4))
    assert variables["params"]["head"]["fc"]["kernel"].shape == (1, 1, 512, 7)
    # only the head is initialised, from rng: the values a whole random init gives those keys
    head = {k for k in flat_variables(variables) if k[1][0] == "head"}
    fresh = fresh_variables(model, jax.random.PRNGKey(4), only=head)
    assert all(np.array_equal(flat_variables(variables)[k], fresh[k]) for k in head)
    feats = model.apply(variables, x, method="forward_features")
    ref = timm_forward(timm_model, x, method="forward_features")
    assert rel_err(np.asarray(feats), ref) < 1e-4


def test_offline_without_cache_says_how_to_pass_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="checkpoint_path="):
        rj.create_model(f"{NAME}.ra4_e3600_r224_in1k", pretrained=True, cache_dir=str(tmp_path))


def test_untrained_tag_has_no_weights():
    with pytest.raises(CheckpointError, match="no pretrained weights"):
        rj.create_model("resnetv2_50d", pretrained=True)


def _shapes_cache_files(root):
    return sorted((root / "shapes").glob("*.json"))


def test_expected_shapes_are_cached_on_disk(tmp_path, monkeypatch):
    """The converter's model trace is written once per configuration and read back by later
    processes; the file really is what they use (an edited shape is reported as the model's)."""
    from resnets_jax.convert import shapes
    monkeypatch.setenv("RESNETS_JAX_CACHE_DIR", str(tmp_path))
    shapes._remembered_variables.cache_clear()  # earlier tests may have traced it in this process
    model = rj.build_model("resnetv2_18", num_classes=7)
    traced = shapes.expected_variables(model)
    (path,) = _shapes_cache_files(tmp_path)
    shapes._remembered_variables.cache_clear()  # as a new process
    assert {k: (v.shape, v.dtype) for k, v in shapes.expected_variables(model).items()} == \
        {k: (v.shape, v.dtype) for k, v in traced.items()}

    rows = json.loads(path.read_text())
    head = next(r for r in rows if r[1] == ["head", "fc", "bias"])
    head[2] = [8]
    path.write_text(json.dumps(rows))
    shapes._remembered_variables.cache_clear()
    sd = rj.export_timm_state_dict(model, rj.create_model("resnetv2_18", num_classes=7)[1])
    with pytest.raises(CheckpointError, match=r"head\.fc\.bias: checkpoint \(7,\) vs model \(8,\)"):
        rj.convert_timm_state_dict(model, sd)

    path.write_text("{not json")  # a damaged file is traced again and rewritten
    shapes._remembered_variables.cache_clear()
    assert shapes.expected_variables(model)[("params", ("head", "fc", "bias"))].shape == (7,)
    assert json.loads(path.read_text())

    shapes.expected_variables(model.clone(num_classes=5))  # another configuration, another file
    assert len(_shapes_cache_files(tmp_path)) == 2


def test_shapes_cache_can_be_turned_off(tmp_path, monkeypatch):
    from resnets_jax.convert import shapes
    monkeypatch.setenv("RESNETS_JAX_CACHE_DIR", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    shapes._remembered_variables.cache_clear()
    assert shapes.expected_variables(rj.build_model("resnetv2_18", num_classes=3))
    assert not list(tmp_path.rglob("*.json"))


def test_safetensors_whose_header_length_looks_like_msgpack(tmp_path):
    """A safetensors file starts with its header's length (u64, little-endian, a multiple of 8):
    one in 32 lengths end in 0x88, the first byte of a msgpack map of 8 entries. Such a file is
    still read as safetensors (it was once taken for msgpack and refused)."""
    low_byte = 0x88
    from resnets_jax.io.safetensors import write_safetensors
    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    path = tmp_path / "x.safetensors"
    for pad in range(512):  # grow the metadata until the header length ends in low_byte
        write_safetensors(path, tensors, {"pad": "x" * pad})
        if path.read_bytes()[0] == low_byte:
            break
    assert path.read_bytes()[0] == low_byte
    assert np.array_equal(rj.load_state_dict(path)["w"], tensors["w"])
