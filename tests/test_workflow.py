"""A new user's path after fine-tuning, as docs/finetuning.md walks it, with only the flags a user
would guess: fine-tune on a timm-style root (train/ + val/), validate the export (top-1 equal to
timm's validate.py logic on the same files and weights), predict a folder, embed it, convert the
export to a Flax checkpoint and back to timm. One fine-tuning run (module fixture) serves every
step; a tiny model input (32 px) keeps it cheap.

    pytest tests/test_workflow.py -s
"""
import contextlib
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import resnets_jax as rj
from resnets_jax.io import read_model_metadata
from resnets_jax.tools import cli
from timm_ref import PARITY_TOL, rel_err

timm = pytest.importorskip("timm")  # the reference (the [dev] extra; make test installs it)
torch = pytest.importorskip("torch")  # the reference (the [dev] extra; make test installs it)

MODEL = "resnetv2_18"
COLORS = {"blue": (30, 30, 200), "red": (200, 30, 30)}  # separable classes
SPLITS = {"train": 8, "val": 4}  # images per class
IMAGE_SIZE = 40
INPUT_SIZE = 32  # --img-size: the fine-tuned model's input, recorded in its exports
NOISE = 40  # per-pixel standard deviation, on 0..255


def _cli(*args):
    """``resnets-jax ARGS`` in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A timm-style data root, fine-tuned on for one epoch into a run directory."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in SPLITS.items():
        for name, color in COLORS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = np.clip(np.array(color) + rng.normal(0, NOISE, (IMAGE_SIZE, IMAGE_SIZE, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(root / split / name / f"{i}.png")
    out = tmp_path_factory.mktemp("runs") / "colors"
    code, stdout, stderr = _cli("finetune", MODEL, root, "--output", out, "--epochs", 1, "--batch-size", 8,
                                "--img-size", INPUT_SIZE, "--no-progress")
    assert code == 0, stderr
    return root, out, json.loads(stdout), stderr


@pytest.fixture(scope="module")
def timm_model(run):
    """timm's model on the run's best export, as timm's validate.py would load it."""
    _, out, _, _ = run
    return timm.create_model(MODEL, num_classes=len(COLORS), checkpoint_path=str(out / "model_best.safetensors")).eval()


def _timm_eval(model, files, data_config):
    """timm's eval transform and forward on ``files``: (logits, pre-logits features)."""
    transform = timm.data.create_transform(**data_config)
    x = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        return model.forward_head(model.forward_features(x)).numpy(), feats.numpy()


def test_finetune_trains_on_train_validates_on_val_and_exports_its_meaning(run):
    root, out, result, stderr = run
    assert f"training on {root / 'train'} (16 images), validating on {root / 'val'} (8 images)" in stderr
    assert result["classes"] == sorted(COLORS)  # not ['train', 'val']
    meta = read_model_metadata(out / "model_best.safetensors")
    assert (meta.num_classes, meta.in_chans, meta.label_names) == (2, 3, sorted(COLORS))
    assert meta.data_config["input_size"] == (3, INPUT_SIZE, INPUT_SIZE)
    assert (out / "last.safetensors").is_file()
    assert read_model_metadata(out) == meta  # the run directory stands for its best export, in Python too
    assert result["exports"] == [str(out / "last.safetensors"), str(out / "model_best.safetensors")]


def test_validate_equals_timms_validate_logic(run, timm_model, tmp_path):
    root, out, _, _ = run
    folder = tmp_path / "val"
    shutil.copytree(root / "val", folder)
    (folder / "red" / "broken.png").write_text("not an image")
    code, stdout, stderr = _cli("validate", MODEL, folder, "--weights", out, "--json", "--no-progress",
                                "--batch-size", 8)  # fine-tuning's batch: its validation's compiled forward
    assert code == 0, stderr
    res = json.loads(stdout)
    assert f"using {out / 'model_best.safetensors'}" in stderr  # the run directory's best export
    assert res["failed"] == [str(folder / "red" / "broken.png")] and res["count"] == 8
    # timm's validate.py: its ImageDataset (sorted class folders), its eval transform of the data
    # config (here the export's), top-1 of the argmax
    dataset = timm.data.create_dataset("", root=str(root / "val"))
    files, targets = zip(*dataset.reader.samples)
    logits, _ = _timm_eval(timm_model, files, read_model_metadata(out / "model_best.safetensors").data_config)
    top1 = 100 * float(np.mean(logits.argmax(-1) == np.array(targets)))
    assert res["top1"] == round(top1, 4)
    assert res["top5"] == 100.0  # top-min(5, 2): every label
    loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.tensor(targets)).item()
    assert abs(res["loss"] - loss) <= PARITY_TOL * max(1.0, loss)  # fp32 logits, as the parity tests


def test_predict_a_folder_labels_with_the_class_names(run, timm_model, tmp_path):
    root, out, _, _ = run
    for f in (root / "val").rglob("*.png"):
        shutil.copy(f, tmp_path / f"{f.parent.name}_{f.name}")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 cut short")
    code, stdout, stderr = _cli("predict", MODEL, tmp_path, "--weights", out, "--json", "--batch-size", 8)
    assert code == 0, stderr
    res = json.loads(stdout)
    assert res[-1] == {"image": str(tmp_path / "broken.jpg"), "error": res[-1]["error"]}  # listed apart
    good = [r for r in res if "top_k" in r]
    assert len(good) == 8
    logits, _ = _timm_eval(timm_model, [r["image"] for r in good],
                           read_model_metadata(out / "model_best.safetensors").data_config)
    assert [r["top_k"][0]["label"] for r in good] == [sorted(COLORS)[i] for i in logits.argmax(-1)]


def test_embed_the_folder(run, timm_model, tmp_path):
    root, out, _, _ = run
    code, _, stderr = _cli("embed", root / "val", "--model", MODEL, "--weights", out, "--output",
                           tmp_path / "emb.npz", "--no-progress")
    assert code == 0, stderr
    emb = np.load(tmp_path / "emb.npz")
    _, feats = _timm_eval(timm_model, [root / "val" / p for p in emb["paths"]],
                          read_model_metadata(out / "model_best.safetensors").data_config)
    assert emb["embeddings"].shape == feats.shape and rel_err(emb["embeddings"], feats) <= PARITY_TOL


def test_convert_and_back_to_timm(run, timm_model, tmp_path):
    _, out, _, _ = run
    flax_file = tmp_path / "colors.safetensors"
    code, _, stderr = _cli("convert", MODEL, "--checkpoint", out, "--output", flax_file)
    assert code == 0, stderr
    meta = read_model_metadata(flax_file)  # carried over from the export
    assert meta.label_names == sorted(COLORS) and meta.data_config["input_size"] == (3, INPUT_SIZE, INPUT_SIZE)
    model, variables = rj.create_model(MODEL, checkpoint_path=str(flax_file))  # num_classes from the file
    back = rj.export_timm_checkpoint(model, variables, tmp_path / "back.safetensors", label_names=meta.label_names,
                                     data_config=meta.data_config)
    theirs = timm.create_model(MODEL, num_classes=model.num_classes, checkpoint_path=back).state_dict()
    ours = timm_model.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)


# --------------------------------------------------------------------------- what goes wrong, said once

def test_a_flag_against_the_file_and_a_head_without_record_name_both(run, tmp_path):
    _, out, _, _ = run
    image = next((run[0] / "val" / "red").iterdir())
    code, _, err = _cli("predict", MODEL, image, "--weights", out, "--num-classes", 5)
    assert code == 2 and "num_classes=5 was asked for" in err and "records num_classes=2" in err
    plain = tmp_path / "timm.safetensors"  # timm's own file: no record of its classes
    from safetensors.torch import save_file
    save_file(timm.create_model(MODEL, num_classes=3).state_dict(), str(plain))
    code, _, err = _cli("embed", image.parent, "--model", MODEL, "--weights", plain, "--output", tmp_path / "e.npz")
    assert code == 2 and "has 3 outputs, the model 1000 classes; give num_classes=3 (--num-classes 3)" in err


def test_a_directory_without_weights_says_what_was_looked_for(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    code, _, err = _cli("predict", MODEL, tmp_path / "cat.png", "--weights", tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "looked for model_best.safetensors, last.safetensors or a single *.safetensors" in err


def test_split_roots_are_found_named_or_refused(tmp_path):
    from resnets_jax.data.image_folder import split_folders, training_data
    for split in ("train", "validation", "holdout"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / name / "0.png")
    assert split_folders(str(tmp_path)) == (str(tmp_path / "train"), str(tmp_path / "validation"))
    assert split_folders(str(tmp_path), val_split="holdout")[1] == str(tmp_path / "holdout")
    with pytest.raises(ValueError, match="--val-split 'test'"):
        split_folders(str(tmp_path), val_split="test")
    (tmp_path / "holdout" / "c").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "holdout" / "c" / "0.png")
    with pytest.raises(ValueError, match="'c' not among the training classes"):
        training_data(str(tmp_path), val_split="holdout")
    flat = tmp_path / "flat"  # class folders named after splits, images directly inside
    for name in ("train", "val"):
        (flat / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(flat / name / "0.png")
    with pytest.raises(ValueError, match="hold images, not class folders"):
        training_data(str(flat))


@pytest.mark.slow  # two processes with their own compiles (~20 s loaded): run with -m slow
def test_validate_on_two_processes_equals_one(run, tmp_path):
    """Two processes of two devices each (``jax.distributed`` on loopback), each decoding its rows
    of every batch, give the one-process results: the same counts and unreadable files, the loss to
    fp32 rounding (sums in another order)."""
    import os
    import socket
    import subprocess
    import sys
    root, out, _, _ = run
    folder = tmp_path / "val"
    shutil.copytree(root / "val", folder)
    (folder / "blue" / "broken.png").write_text("not an image")  # 9 files, 4 per batch: 2 rows per process
    argv = [sys.executable, "-m", "resnets_jax.tools.cli", "validate", MODEL, str(folder), "--weights", str(out),
            "--batch-size", "4", "--json", "--no-progress"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(argv, env=dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_PROCESSES="2",
                                             JAX_PROCESS_ID=str(pid), JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                                             XLA_FLAGS="--xla_force_host_platform_device_count=2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for pid in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outputs]
    code, stdout, stderr = _cli("validate", MODEL, folder, "--weights", out, "--batch-size", 4, "--json",
                                "--no-progress")
    assert code == 0, stderr
    one = json.loads(stdout)
    for stdout, _ in outputs:  # gloo's lines come first on stdout
        got = json.loads(stdout[stdout.index("{"):])
        assert {k: got[k] for k in ("top1", "top5", "count", "failed")} == \
            {k: one[k] for k in ("top1", "top5", "count", "failed")}
        assert abs(got["loss"] - one["loss"]) <= PARITY_TOL * max(1.0, one["loss"])
