"""Issue 14: the checkpoints and inputs users bring, each held to what timm does with it.

Every weights test loads the same file into timm (``timm.create_model(arch, checkpoint_path=)``,
i.e. ``load_checkpoint``) and into resnets_jax, and compares logits (PARITY_TOL: fp32, the same
weights, 1e-4 relative as the parity suite). Files are made here, as timm's own code writes them.
"""
import argparse
import json
import os

import jax
import numpy as np
import pytest

import resnets_jax as rj
from resnets_jax import CheckpointError
from resnets_jax.io.files import TEMP_SUFFIX
from resnets_jax.parallel import DataParallel
from resnets_jax.tools import cli
from timm_ref import PARITY_TOL, jit_apply, perturb_, rel_err, timm_forward

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
from test_bit_npz import _perturbed, to_bit_npz  # noqa: E402  (tests/ is on sys.path)

NAME = "resnetv2_18"  # the smallest architecture: these tests are about files, not numerics


@pytest.fixture(scope="module")
def timm_model():
    torch.manual_seed(0)
    return perturb_(timm.create_model(NAME), seed=5).eval()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)


def _timm_logits(path, x, **kwargs):
    """timm's logits for the file, loaded the way timm's create_model(checkpoint_path=) loads it."""
    model = timm.create_model(NAME, checkpoint_path=str(path), **kwargs)
    return timm_forward(model, x)


def _ours(path, x, **kwargs):
    model, variables = rj.create_model(NAME, checkpoint_path=str(path), **kwargs)
    return np.asarray(jit_apply(model, variables, x))


def _convert(path, out, *extra):
    return cli.main(["convert", NAME, "--checkpoint", str(path), "-o", str(out), *map(str, extra)])


# 1. torch.compile / DDP prefixes ----------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_compiled_and_ddp_prefixes(tmp_path, timm_model, x, prefix, fmt):
    sd = {prefix + k: v for k, v in timm_model.state_dict().items()}
    path = tmp_path / f"compiled.{fmt}"
    if fmt == "pth":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file
        save_file(sd, str(path))
    want = _timm_logits(path, x)  # timm's clean_state_dict strips them, in either order
    assert rel_err(_ours(path, x), want) < PARITY_TOL


def test_compiled_model_state_dict(tmp_path, timm_model, x):
    """The keys torch.compile itself writes (not a hand-made prefix)."""
    compiled = torch.compile(timm_model)
    sd = compiled.state_dict()
    assert next(iter(sd)).startswith("_orig_mod.")
    torch.save(sd, tmp_path / "c.pth")
    assert rel_err(_ours(tmp_path / "c.pth", x), _timm_logits(tmp_path / "c.pth", x)) < PARITY_TOL


# 2. and 3. timm's CheckpointSaver files, EMA ----------------------------------------------------

@pytest.fixture(scope="module")
def train_checkpoint(tmp_path_factory, timm_model):
    """`last.pth.tar` as timm's train.py writes it: args (argparse.Namespace), optimizer state,
    state_dict and state_dict_ema (different weights), via timm's own CheckpointSaver."""
    from timm.utils import CheckpointSaver
    from timm.utils.model_ema import ModelEmaV3
    d = tmp_path_factory.mktemp("train")
    model = timm.create_model(NAME)
    model.load_state_dict(timm_model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()(torch.randn(2, 3, 64, 64)).sum().backward()
    opt.step()  # optimizer state (momentum buffers); the live weights move away from the EMA's
    ema = ModelEmaV3(timm_model)
    args = argparse.Namespace(model=NAME, lr=0.1, epochs=3, input_size=None, mean=[0.5, 0.5])
    saver = CheckpointSaver(model.eval(), opt, args=args, model_ema=ema, checkpoint_dir=str(d))
    saver._save(str(d / "last.pth.tar"), epoch=3, metric=0.5)
    return d / "last.pth.tar"


def test_train_py_checkpoint_loads_ema_by_default(train_checkpoint, x, capsys):
    want = _timm_logits(train_checkpoint, x)  # timm: use_ema=True, args allowlisted
    assert rel_err(_ours(train_checkpoint, x), want) < PARITY_TOL
    assert "loaded checkpoint['state_dict_ema'] (use_ema=True)" in capsys.readouterr().err
    plain = timm.create_model(NAME)
    timm.models.load_checkpoint(plain, str(train_checkpoint), use_ema=False)
    want_plain = timm_forward(plain, x)
    assert rel_err(want_plain, want) > 1e-3  # the two weights differ: the choice is visible
    assert rel_err(_ours(train_checkpoint, x, use_ema=False), want_plain) < PARITY_TOL
    assert "loaded checkpoint['state_dict'] (use_ema=False)" in capsys.readouterr().err


def test_train_py_checkpoint_in_the_cli(tmp_path, train_checkpoint, x, capsys):
    assert _convert(train_checkpoint, tmp_path / "ema.safetensors") == 0
    assert "checkpoint['state_dict_ema']" in capsys.readouterr().err
    assert _convert(train_checkpoint, tmp_path / "plain.safetensors", "--no-use-ema") == 0
    assert "checkpoint['state_dict']" in capsys.readouterr().err
    for out, use_ema in (("ema", True), ("plain", False)):
        plain = timm.create_model(NAME)
        timm.models.load_checkpoint(plain, str(train_checkpoint), use_ema=use_ema)
        model, variables = rj.create_model(NAME, checkpoint_path=str(tmp_path / f"{out}.safetensors"))
        assert rel_err(np.asarray(jit_apply(model, variables, x)), timm_forward(plain, x)) < PARITY_TOL


# 4. a whole pickled model -----------------------------------------------------------------------

def test_pickled_model_is_named_with_the_fix(tmp_path, timm_model, capsys):
    path = tmp_path / "m.pth"
    torch.save(timm_model, path)
    with pytest.raises(CheckpointError) as e:
        rj.create_model(NAME, checkpoint_path=str(path))
    msg = str(e.value)
    assert "holds a pickled module" in msg and "timm.models.resnetv2.ResNetV2" in msg
    assert "torch.save(model.state_dict()" in msg
    assert _convert(path, tmp_path / "out.safetensors") == 2
    err = capsys.readouterr().err
    assert "holds a pickled module" in err and "\x1b[" not in err  # no terminal colour codes
    assert not (tmp_path / "out.safetensors").exists()


# 5. Google's BiT .npz ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bit_file(tmp_path_factory):
    """BiT-M-R50x1.npz's layout (21843-class head) with perturbed weights."""
    ref = _perturbed(timm.create_model("resnetv2_50x1_bit", num_classes=21843))
    path = tmp_path_factory.mktemp("bit") / "BiT-M-R50x1.npz"
    to_bit_npz(ref, path)
    return path


@pytest.mark.parametrize("kwargs", [{"num_classes": 21843}, {"num_classes": 1000}, {"num_classes": 0},
                                    {"num_classes": 21843, "in_chans": 1}])
def test_bit_npz_as_timm_create_model(bit_file, kwargs):
    """timm: create_model(arch, checkpoint_path='BiT-M-R50x1.npz') -> model.load_pretrained; the
    head only when its width matches (else both keep their own init: compare the features)."""
    arch = "resnetv2_50x1_bit"
    x = np.random.default_rng(1).standard_normal((1, 64, 64, kwargs.get("in_chans", 3))).astype(np.float32)
    tmodel = timm.create_model(arch, checkpoint_path=str(bit_file), **kwargs)
    model, variables = rj.create_model(arch, checkpoint_path=str(bit_file), **kwargs)
    head_loaded = kwargs["num_classes"] == 21843
    method = "forward" if head_loaded or not kwargs["num_classes"] else "forward_features"
    ours = jit_apply(model, variables, x, method=None if method == "forward" else "forward_features")
    assert rel_err(np.asarray(ours), timm_forward(tmodel, x, method=method)) < PARITY_TOL
    if kwargs["num_classes"] == 1000:  # the model keeps its own init, as timm's does
        init = rj.create_model(arch, num_classes=1000, rng=jax.random.PRNGKey(0))[1]
        np.testing.assert_array_equal(variables["params"]["head"]["fc"]["bias"], init["params"]["head"]["fc"]["bias"])


def test_bit_npz_convert_cli_and_other_families(tmp_path, bit_file):
    out = tmp_path / "bit.safetensors"
    assert cli.main(["convert", "resnetv2_50x1_bit.goog_in21k", "--checkpoint", str(bit_file), "-o", str(out),
                     "--verify"]) == 0  # 21843 classes: the head loads, verified against timm
    with pytest.raises(CheckpointError, match="loads only into ResNetV2 models"):
        rj.create_model("resnest14d", checkpoint_path=str(bit_file))


def test_bit_npz_without_torch(bit_file):
    import subprocess
    import sys
    code = ("import sys; sys.modules['torch'] = None; import resnets_jax as rj; "
            f"m, v = rj.create_model('resnetv2_50x1_bit', checkpoint_path=r'{bit_file}', num_classes=21843); "
            "print(v['params']['head']['fc']['kernel'].shape)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "(1, 1, 2048, 21843)"


# 6. and 7. empty batches, out_indices=() --------------------------------------------------------

FAMILIES = ["resnetv2_18", "resnest14d", "res2net50_14w_8s"]


@pytest.mark.parametrize("name", FAMILIES)
def test_empty_batch(name):
    """(0, H, W, 3) -> (0, num_classes), as timm's resnetv2 and res2net give. timm's ResNeSt
    raises on it (RadixSoftmax's ``view(batch, card, radix, -1)``); ours gives the shape a batch
    of one has, with 0 rows, in every family."""
    tmodel = timm.create_model(name, num_classes=5).eval()
    with torch.no_grad():
        want = (0, *tmodel(torch.zeros(1, 3, 64, 64)).shape[1:])
        if name != "resnest14d":
            assert tuple(tmodel(torch.zeros(0, 3, 64, 64)).shape) == want == (0, 5)
    x = np.zeros((0, 64, 64, 3), np.float32)
    model, variables = rj.create_model(name, num_classes=5, rng=jax.random.PRNGKey(0))
    assert rj.jit(model.apply)(variables, x).shape == want


def test_empty_batch_pooled_features_and_data_parallel():
    """The other ways in, on one model: eager, num_classes=0, features_only, DataParallel."""
    x = np.zeros((0, 64, 64, 3), np.float32)
    for kwargs, shape in (({"num_classes": 5}, (0, 5)), ({"num_classes": 0}, (0, 512))):
        model, variables = rj.create_model(NAME, rng=jax.random.PRNGKey(0), **kwargs)
        assert model.apply(variables, x).shape == shape
        dp = DataParallel()
        replicated = dp.replicate(variables)
        assert dp.predict(model, replicated, x).shape == shape
        assert dp.predict_all(model, replicated, x, pad_to=4).shape == shape
    model, variables = rj.create_model(NAME, features_only=True, rng=jax.random.PRNGKey(0))
    feats = rj.jit(model.apply)(variables, x)
    assert [f.shape for f in feats] == [(0, 64 // i["reduction"], 64 // i["reduction"], i["num_chs"])
                                        for i in model.feature_info]


@pytest.mark.parametrize("name", ["resnetv2_18", "resnest14d", "res2net50_14w_8s"])
def test_features_only_no_indices(tmp_path, name):
    tmodel = timm.create_model(name, features_only=True, out_indices=())
    assert tmodel(torch.zeros(1, 3, 64, 64)) == [] and tmodel.feature_info.channels() == []
    model, variables = rj.create_model(name, features_only=True, out_indices=(), rng=jax.random.PRNGKey(0))
    assert model.apply(variables, np.zeros((1, 64, 64, 3), np.float32)) == []
    assert model.feature_info == []
    assert timm.create_model(name, features_only=True, out_indices=0).feature_info.channels() == []  # 'the last 0'
    assert rj.build_model(name, features_only=True, out_indices=0).feature_info == []
    torch.save(timm.create_model(name).state_dict(), tmp_path / "full.pth")  # loads, all of it pruned
    model, variables = rj.create_model(name, features_only=True, out_indices=(), checkpoint_path=str(tmp_path / "full.pth"))
    assert model.apply(variables, np.zeros((1, 64, 64, 3), np.float32)) == []


# 8. test size -----------------------------------------------------------------------------------

TEST_SIZE_TAG = "resnetv2_18.ra4_e3600_r224_in1k"  # train 224 px / crop 0.9, test 288 px / crop 1.0


@pytest.mark.parametrize("use_test_size", [True, False])
def test_data_config_test_size_as_timm(use_test_size):
    from timm.data import resolve_data_config
    tmodel = timm.create_model(TEST_SIZE_TAG, pretrained=False)
    want = resolve_data_config(model=tmodel, use_test_size=use_test_size)
    got = rj.data.resolve_data_config(TEST_SIZE_TAG, use_test_size=use_test_size)
    assert (tuple(got["input_size"]), got["crop_pct"]) == (tuple(want["input_size"]), want["crop_pct"])
    assert got["input_size"][1] == (288 if use_test_size else 224)


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    model, variables = rj.create_model(TEST_SIZE_TAG, num_classes=10, rng=jax.random.PRNGKey(0))
    path = tmp_path_factory.mktemp("tagged") / "w.safetensors"
    rj.save_checkpoint(model, variables, path)
    return model, variables, path


@pytest.mark.parametrize("flag, size", [(None, 288), ("--use-test-size", 288), ("--use-train-size", 224)])
def test_predict_cli_test_size(tagged, flag, size, capsys):
    from resnets_jax.tools.predict import load_images, top_k
    model, variables, path = tagged
    image = rj.data.sample_image_path()
    assert cli.main(["predict", TEST_SIZE_TAG, image, "--weights", str(path), "--json", "--top-k", "3"]
                    + ([flag] if flag else [])) == 0
    got = json.loads(capsys.readouterr().out)[0]["top_k"]
    x = load_images(model, [image], use_test_size=size == 288)
    assert x.shape == (1, size, size, 3)
    want = top_k(np.asarray(jit_apply(model, variables, x)), 3)[0]
    assert [r["index"] for r in got] == [r["index"] for r in want]
    np.testing.assert_allclose([r["probability"] for r in got], [r["probability"] for r in want], rtol=1e-4)


@pytest.mark.parametrize("flag, size", [(None, 288), ("--use-train-size", 224)])
def test_embed_cli_test_size(tmp_path, tagged, flag, size):
    from resnets_jax.tools.embed import pooled_features
    from resnets_jax.tools.predict import load_images
    model, variables, path = tagged
    folder = tmp_path / "images"
    folder.mkdir()
    image = rj.data.sample_image_path()
    (folder / "a.png").write_bytes(open(image, "rb").read())
    out = tmp_path / "e.npz"
    assert cli.main(["embed", str(folder), "--model", TEST_SIZE_TAG, "--weights", str(path), "-o", str(out),
                     "--no-progress"] + ([flag] if flag else [])) == 0
    x = load_images(model, [image], use_test_size=size == 288)
    want = np.asarray(jit_apply(model, variables, x, method=pooled_features))
    np.testing.assert_allclose(np.load(out)["embeddings"], want, rtol=1e-5, atol=1e-5)  # batched vs direct fp32


# small ones -------------------------------------------------------------------------------------

def test_fallback_keeps_the_whole_hub_error(tmp_path, monkeypatch):
    from resnets_jax.tools import fallback
    text = ("Could not get weights for resnetv2_18 from the Hugging Face hub: 404 Client Error.\n\n"
            "Entry Not Found for url: https://huggingface.co/timm/x/resolve/main/model.safetensors.")

    def fail(*a, **k):
        raise CheckpointError(text)
    monkeypatch.setattr(fallback, "pretrained_file", fail)
    monkeypatch.setattr(fallback, "timm_available", lambda: False)
    msg = fallback.timm_checkpoint("resnetv2_18.ra4_e3600_r224_in1k", tmp_path).message
    assert " ".join(text.split()) in msg  # every word, none cut


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pth.tar", ".bin"])
def test_output_named_as_a_pickle_is_refused(tmp_path, timm_model, suffix, capsys):
    torch.save(timm_model.state_dict(), tmp_path / "in.pth")
    out = tmp_path / f"out{suffix}"
    assert _convert(tmp_path / "in.pth", out) == 2
    assert "says PyTorch pickle" in capsys.readouterr().err and not out.exists()
    model, variables = rj.create_model(NAME, rng=jax.random.PRNGKey(0))
    for write in (lambda: rj.save_checkpoint(model, variables, out),
                  lambda: rj.convert.export_timm_checkpoint(model, variables, out)):
        with pytest.raises(ValueError, match=r"name it \*?\.safetensors"):
            write()
        assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.endswith(TEMP_SUFFIX)]
