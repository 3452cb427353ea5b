"""The command line and the demo, run as a user runs them."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import resnets_jax as rj
from resnets_jax.tools import cli
from resnets_jax.data import sample_image_path

torch = pytest.importorskip("torch")  # the reference (the [dev] extra; make test installs it)
timm = pytest.importorskip("timm")  # the reference (the [dev] extra; make test installs it)


def test_list_matches_registry(capsys):
    assert cli.main(["list", "resnetv2_50*"]) == 0
    assert capsys.readouterr().out.split() == rj.list_models("resnetv2_50*")
    assert cli.main(["list", "--pretrained", "resnetv2_50x1*"]) == 0
    assert capsys.readouterr().out.split() == rj.list_pretrained("resnetv2_50x1*")


def test_info(capsys):
    import re
    from torch.utils.flop_counter import FlopCounterMode
    assert cli.main(["info", "resnetv2_18"]) == 0
    out = capsys.readouterr().out
    tmodel = timm.create_model("resnetv2_18")
    assert f"parameters: {sum(p.numel() for p in tmodel.parameters()):,}" in out
    assert "timm/resnetv2_18.ra4_e3600_r224_in1k" in out and "input_size=(3, 224, 224)" in out
    assert "test size (predict, embed; --use-train-size: the size above): input_size=(3, 288, 288) crop_pct=1.0" in out
    gmacs = float(re.search(r"GMACs: (\S+) at 224x224", out).group(1))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        tmodel(torch.zeros(1, 3, 224, 224))
    # torch counts the multiply-adds on convolution padding too; XLA does not (a few % fewer)
    assert 0.85 < gmacs / (counter.get_total_flops() / 2e9) <= 1.0


def test_unknown_model_exits_nonzero_with_suggestion(capsys):
    assert cli.main(["info", "resnetv2_5"]) == 2
    assert "Did you mean: resnetv2_50" in capsys.readouterr().err


def test_predict_json_matches_timm(tmp_path, capsys):
    from safetensors.torch import save_file
    from timm_ref import perturb_
    torch.manual_seed(0)
    tmodel = perturb_(timm.create_model("resnetv2_18"), seed=5).eval()
    path = tmp_path / "model.safetensors"
    save_file(tmodel.state_dict(), str(path))
    assert cli.main(["predict", "resnetv2_18", sample_image_path(), "--weights", str(path),
                     "--top-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 1 and len(out[0]["top_k"]) == 3
    # the tag's test size (288 px, crop 1.0), as timm's inference.py uses by default
    x = rj.predict.load_images(rj.build_model("resnetv2_18"), [sample_image_path()], use_test_size=True)
    assert x.shape == (1, 288, 288, 3)
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).softmax(-1).numpy()[0]
    assert [r["index"] for r in out[0]["top_k"]] == list(np.argsort(-ref)[:3])
    np.testing.assert_allclose([r["probability"] for r in out[0]["top_k"]], np.sort(ref)[::-1][:3], rtol=1e-4)


@pytest.mark.parametrize("kind", ["not an image", "missing"])
def test_predict_lists_unreadable_files_and_says_when_none_could_be_read(kind, tmp_path, capsys):
    """Every batch made of unreadable files only (the first, or one after a readable image) is
    left out with its files listed; when no image at all could be read, that is the one error."""
    model, variables = rj.create_model("test_resnet")
    path = rj.save_checkpoint(model, variables, tmp_path / "model.safetensors")
    bad = [tmp_path / "cat.png", tmp_path / "dog.jpg"]
    if kind == "not an image":
        for b in bad:
            b.write_text("not an image")
    why = "not an image" if kind == "not an image" else "no such image file"
    weights = ["--weights", str(path), "--batch-size", "1"]
    assert cli.main(["predict", "test_resnet", *map(str, bad), *weights]) == 2
    err = capsys.readouterr().err
    assert err.count(why) == 2 and "error: none of the 2 images could be read" in err
    assert cli.main(["predict", "test_resnet", sample_image_path(), *map(str, bad), *weights, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out[0]["top_k"]) == 5 and [o["image"] for o in out[1:]] == list(map(str, bad))
    assert all(why in o["error"] for o in out[1:])


@pytest.mark.parametrize("where", ["a file", "unwritable"])
@pytest.mark.parametrize("command", ["convert", "validate", "embed", "export", "finetune", "finetune --export"])
def test_every_output_in_a_place_that_cannot_be_written_fails_before_any_work(command, where, tmp_path, capsys):
    """Every command's output (a file, or finetune's run directory) whose directory is a file, or
    one where no file can be created (/sys: refused even to root), is one error line naming it,
    before anything is computed or written (a validation's results were lost at the end before)."""
    from PIL import Image
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")  # never read: the output is checked first
    images = tmp_path / "images"
    for split in ("train", "val"):
        for label in ("a", "b"):
            (images / split / label).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(images / split / label / "x.png")
    parent = tmp_path / "file.txt" if where == "a file" else "/sys"
    if where == "a file":
        parent.write_text("a file")
    out = f"{parent}/out"
    args = {"convert": ["convert", "resnet18", "--checkpoint", str(weights), "-o", out + ".safetensors"],
            "validate": ["validate", "resnet18", str(images), "--weights", str(weights),
                         "--results-file", out + ".json"],
            "embed": ["embed", str(images), "--model", "resnet18", "--weights", str(weights), "--output", out + ".npz"],
            "export": ["export", "resnet18", "--weights", str(weights), "--output", out + ".stablehlo"],
            "finetune": ["finetune", "resnet18", str(images), "--output", out, "--checkpoint", str(weights)],
            "finetune --export": ["finetune", "resnet18", str(images), "--output", str(tmp_path / "run"),
                                  "--checkpoint", str(weights), "--export", out + ".safetensors"]}[command]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    found = "is a file, not a directory" if where == "a file" else "cannot write in the output directory /sys"
    assert err.startswith("error: ") and err.count("\n") == 1 and found in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_python_warnings_are_one_warning_line(tmp_path, capsys):
    """A warning raised during a command (here HighBitDepthWarning, for a 16-bit PNG) is printed as
    the command's own "warning:" line, not Python's format with a source file and line."""
    from PIL import Image
    model, variables = rj.create_model("test_resnet")
    weights = rj.save_checkpoint(model, variables, tmp_path / "w.safetensors")
    Image.fromarray(np.full((16, 16), 60000, np.uint16)).save(tmp_path / "deep.png")
    assert cli.main(["predict", "test_resnet", str(tmp_path / "deep.png"), "--weights", weights]) == 0
    err = capsys.readouterr().err
    assert "warning: A I;16 image with values up to 60000" in err and ".py:" not in err and "Warning" not in err


def test_demo_falls_back_to_a_labelled_local_checkpoint(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-m", "resnets_jax.tools.demo"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("HUB UNREACHABLE - LOCAL FALLBACK") and "RANDOM-INIT" in lines[0]
    assert (tmp_path / "demo_out" / "resnetv2_50_a1h_in1k_random_init.safetensors").exists()
    diff = float(next(l for l in lines if l.startswith("max |logit difference|")).split(":")[1].split()[0])
    assert diff < 1e-3
    assert sum("Top-5" in l for l in lines) == 2


def _cache_entries(path):
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def test_cli_fills_and_reuses_the_compilation_cache(tmp_path):
    cache = tmp_path / "xla"
    env = dict(os.environ, RESNETS_JAX_CACHE_DIR=str(tmp_path),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")  # store every program, however fast
    env.pop("RESNETS_JAX_NO_COMPILE_CACHE", None)  # conftest turns it off for in-process CLI calls
    info = [sys.executable, "-m", "resnets_jax.tools.cli", "info", "resnetv2_18"]

    def run(*args):
        res = subprocess.run(info[:3] + list(args) + info[3:], env=env, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, res.stderr
        return res.stdout

    out = run("--no-compile-cache")
    assert _cache_entries(cache) == []
    assert run() == out
    first = _cache_entries(cache)
    assert any(name.startswith("jit_apply") for name in first), first
    # a second process finds the same programs: it reads the entries instead of adding new ones
    assert run() == out
    assert _cache_entries(cache) == first
