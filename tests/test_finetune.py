"""Fine-tuning end to end: data (ImageFolder, timm's training transform, deterministic order and
split), a short run that learns, a run killed with SIGKILL and resumed that ends with exactly the
uninterrupted run's state, the export loaded by timm with equal logits, and bad input.

    pytest tests/test_finetune.py -s     # prints the run's metrics
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import resnets_jax as rj
from resnets_jax.tools import cli
from resnets_jax.train.finetune import CHECKPOINT_DIR, FinetuneConfig, finetune, load_finetuned
from resnets_jax.train.checkpoint import read_train_checkpoint
from resnets_jax.data.image_folder import Batches, ImageFolder, rrc_params, split_indices, train_transform
from timm_ref import PARITY_TOL, jit_apply, rel_err, timm_forward


timm = pytest.importorskip("timm")  # the reference (the [dev] extra; make test installs it)
torch = pytest.importorskip("torch")  # the reference (the [dev] extra; make test installs it)

COLORS = {"blue": (30, 30, 200), "red": (200, 30, 30)}  # separable classes
IMAGES_PER_CLASS = 24
IMAGE_SIZE = 48
NOISE = 40  # per-pixel standard deviation, on 0..255
MODEL = "resnetv2_18"
INPUT_SIZE = 32  # the model's input (random resized crops of the 48 px images)
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# a killed run's worker processes end within PARENT_POLL_S (0.5 s); the wait allows for a loaded machine
ORPHAN_WAIT_S = 15


def make_folder(root, colors=COLORS, n=IMAGES_PER_CLASS, seed=0):
    rng = np.random.default_rng(seed)
    for name, color in colors.items():
        os.makedirs(root / name, exist_ok=True)
        for i in range(n):
            img = np.clip(np.array(color) + rng.normal(0, NOISE, (IMAGE_SIZE, IMAGE_SIZE, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("images"))


# --------------------------------------------------------------------------- data

def test_image_folder_matches_torchvision(folder):
    from torchvision.datasets import ImageFolder as TorchImageFolder
    ours, theirs = ImageFolder(folder), TorchImageFolder(str(folder))
    assert ours.classes == theirs.classes == sorted(COLORS)
    assert [(os.path.abspath(p), c) for p, c in ours.samples] == [(os.path.abspath(p), c) for p, c in theirs.samples]


@pytest.mark.parametrize("wh", [(48, 48), (64, 40), (300, 20)])  # (300, 20): timm's centre-crop fallback
def test_random_resized_crop_params_match_timm(wh):
    from timm.data.transforms import RandomResizedCropAndInterpolation
    img = Image.new("RGB", wh)
    for seed in range(50):
        random.seed(seed)
        theirs = RandomResizedCropAndInterpolation.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))
        assert rrc_params(random.Random(seed), *wh) == theirs


@pytest.mark.parametrize("hflip", [0.0, 1.0])  # torchvision draws the flip from torch: test both ends
def test_train_transform_matches_timm(hflip):
    """timm's ``transforms_imagenet_train`` (no colour jitter), seeded through ``random``."""
    from timm.data.transforms_factory import transforms_imagenet_train
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (57, 71, 3), dtype=np.uint8))
    theirs_t = transforms_imagenet_train(INPUT_SIZE, hflip=hflip, color_jitter=None, interpolation="random",
                                         mean=MEAN, std=STD)
    for seed in range(8):
        random.seed(seed)
        theirs = theirs_t(img).numpy().transpose(1, 2, 0)
        ours = train_transform(img, random.Random(seed), (INPUT_SIZE, INPUT_SIZE), MEAN, STD, hflip=hflip)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_split_and_batches_are_deterministic(folder):
    ds = ImageFolder(folder)
    train, val = split_indices(ds.labels, 0.25, seed=0)
    assert np.array_equal(train, split_indices(ds.labels, 0.25, seed=0)[0])
    assert not set(train) & set(val) and len(train) + len(val) == len(ds)
    assert np.bincount(ds.labels[val]).tolist() == [IMAGES_PER_CLASS // 4] * len(COLORS)  # stratified
    transform = lambda img, rng: train_transform(img, rng, (INPUT_SIZE,) * 2, MEAN, STD)  # noqa: E731
    a, b = Batches(ds, train, 8, 0, transform), Batches(ds, train, 8, 0, transform, workers=1)
    first = a.batch(1, 2)
    np.testing.assert_array_equal(first["image"], b.batch(1, 2)["image"])  # any thread count
    np.testing.assert_array_equal(first["label"], b.batch(1, 2)["label"])
    assert not np.array_equal(first["image"], a.batch(2, 2)["image"])  # another epoch, another order


# --------------------------------------------------------------------------- end to end

def _cli(args, env, **kwargs):
    kwargs = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return subprocess.Popen([sys.executable, "-m", "resnets_jax.tools.cli", "finetune", *map(str, args)], env=env,
                            text=True, **kwargs)


def _state(out_dir) -> dict:
    """The latest checkpoint: ``{"state": numpy tree, "history": [...]}``."""
    saved = read_train_checkpoint(out_dir / CHECKPOINT_DIR)
    return {"state": saved["state"], "history": saved["meta"]["history"]}


def _has_checkpoint(out_dir) -> bool:
    """A finished Orbax step directory (written to a temporary name, renamed when complete)."""
    ckpts = out_dir / CHECKPOINT_DIR
    return ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory):
    """A timm checkpoint to start from (random init, ImageNet's 1000 classes: a new head is made)."""
    from safetensors.torch import save_file
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("timm") / "start.safetensors"
    save_file(timm.create_model(MODEL).state_dict(), str(path))
    return path


def test_finetune_learns_resumes_exactly_and_exports_to_timm(folder, timm_checkpoint, tmp_path, capsys):
    # the persistent compilation cache spares the second and third processes the compile; the
    # executable (so every number) is the same
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    args = [MODEL, folder, "--checkpoint", timm_checkpoint, "--epochs", 2, "--batch-size", 12, "--img-size",
            INPUT_SIZE, "--val-fraction", 0.25, "--opt", "adamw", "--lr", 2e-3, "--weight-decay", 0.05,
            "--warmup-epochs", 0, "--drop-path-rate", 0.1, "--checkpoint-every", 1, "--no-progress"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    export = tmp_path / "model.safetensors"
    proc = _cli([*args, "--output", full, "--export", export], env)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    history = json.loads((full / "metrics.json").read_text())["epochs"]
    report = [json.dumps({k: round(v, 4) for k, v in h.items()}) for h in history]  # printed at the end (-s)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["train_acc"] > history[0]["train_acc"]
    assert history[-1]["val_acc"] > 1 / len(COLORS) + 0.25  # chance is 0.5

    # decoding in a worker process, killed (SIGKILL) as soon as its first checkpoint exists: its
    # worker and multiprocessing's resource tracker end with it; then resumed in threads (the
    # docs allow another --worker-processes: the Grain position is translated)
    proc = _cli([*args, "--output", cut, "--worker-processes", 1], env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)  # an orphan holding our pipe would hang communicate()
    while not _has_checkpoint(cut) and proc.poll() is None:
        time.sleep(0.02)
    children = _descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert len(children) >= 2, "no worker process and resource tracker seen"
    deadline = time.monotonic() + ORPHAN_WAIT_S
    while any(map(_alive, children)) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in children if _alive(pid)]
    for pid in left:  # ours to end, whatever the outcome
        os.kill(pid, signal.SIGKILL)
    assert not left, f"children of the killed run still alive after {ORPHAN_WAIT_S} s: {left}"
    interrupted = _state(cut)
    total_steps = int(_state(full)["state"]["step"])
    assert 0 < int(interrupted["state"]["step"]) < total_steps, "the run was not interrupted midway"
    report.append(f"killed after checkpointing step {int(interrupted['state']['step'])} of {total_steps}")
    _resume_equals(full, cut, [*args, "--output", cut, "--resume"], env)

    # the newest checkpoint of a copy damaged (a truncated file): the resume names it, sets it
    # aside and continues from the intact one before it, ending as the uninterrupted run
    copy = tmp_path / "copy"
    shutil.copytree(full, copy)
    steps = sorted(int(p.name) for p in (copy / CHECKPOINT_DIR).iterdir() if p.name.isdigit())
    newest = copy / CHECKPOINT_DIR / str(steps[-1])
    big = max((p for p in (newest / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    os.truncate(big, big.stat().st_size // 2)
    with pytest.warns(UserWarning, match=f"{steps[-1]} is damaged"):
        assert read_train_checkpoint(copy / CHECKPOINT_DIR)["step"] == steps[-2]
    err = _resume_equals(full, copy, [*args, "--output", copy, "--resume"], env)
    assert f"{newest} is damaged (state unreadable" in err and f"resuming from step {steps[-2]}" in err
    assert (copy / CHECKPOINT_DIR / f"{steps[-1]}.damaged").is_dir()

    # a resume with other settings would not continue the run: refused, naming the difference
    other = [a if a != 2e-3 else 1e-3 for a in args]
    err = _error(capsys, [*other, "--output", full, "--resume"])
    assert "other settings" in err and "lr: checkpoint 0.002, this run 0.001" in err

    # the export, in timm
    model, variables = load_finetuned(full)
    tm = timm.create_model(MODEL, num_classes=len(COLORS), checkpoint_path=str(export))
    x = np.stack([rj.data.create_transform(input_size=(3, INPUT_SIZE, INPUT_SIZE), mean=MEAN, std=STD)(
        Image.open(p)) for p, _ in ImageFolder(folder).samples[::8]])
    ours = np.asarray(jit_apply(model, variables, x))
    err = rel_err(ours, timm_forward(tm, x))
    report.append(f"export: timm vs ours, max |Δlogit| / max |logit| = {err:.1e}")
    with capsys.disabled():
        print("\n" + "\n".join(report))
    assert err <= PARITY_TOL


def _resume_equals(full, out, argv, env) -> str:
    """Resume ``out`` (the CLI with ``argv``) and check it ends as the uninterrupted ``full``: the
    parameters, running statistics, optimizer state and step bit for bit, the epoch metrics.
    Returns the resumed run's stderr."""
    proc = _cli(argv, env)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "resuming" in err
    a, b = _state(full), _state(out)
    flat_a, flat_b = dict(_flatten(a["state"])), dict(_flatten(b["state"]))
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        np.testing.assert_array_equal(flat_b[k], flat_a[k], err_msg=k)
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(b["history"]) == strip(a["history"])
    return err


def _descendants(pid: int) -> list:
    """The processes below ``pid`` (from /proc: Linux)."""
    parents = {}
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                parents[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        todo += kids
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flatten(v, f"{prefix}/{k}")
    else:
        yield prefix, np.asarray(tree)


# --------------------------------------------------------------------------- bad input

def _error(capsys, argv) -> str:
    assert cli.main(["finetune", *map(str, argv)]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("layout,message", [
    ({}, "no class folders"),
    ({"cat": 2}, "only the class folder 'cat'"),
    ({"cat": 2, "dog": 0}, "no images"),
])
def test_bad_folders_get_one_clear_error(tmp_path, capsys, layout, message):
    root = tmp_path / "data"
    root.mkdir()
    for name, n in layout.items():
        make_folder(root, {name: (0, 0, 0)}, n=n)
    (root / "notes.txt").write_text("not a class")
    err = _error(capsys, [MODEL, root, "--output", tmp_path / "out"])
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_bad_settings_get_one_clear_error(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert "not a directory" in _error(capsys, [MODEL, tmp_path / "missing", "--output", out])
    assert "cannot fill one batch" in _error(capsys, [MODEL, folder, "--output", out, "--batch-size", 64])
    assert "nothing to resume" in _error(capsys, [MODEL, folder, "--output", out, "--resume"])
    (out / CHECKPOINT_DIR / "12").mkdir(parents=True)
    assert "--resume" in _error(capsys, [MODEL, folder, "--output", out])
    err = _error(capsys, [MODEL, folder, "--output", out, "--resume"])  # a stray empty step folder only
    assert f"no intact checkpoint to resume in {out / CHECKPOINT_DIR}: {out / CHECKPOINT_DIR}/12: an empty folder" in err
    assert len(err.strip().splitlines()) == 1 and (out / CHECKPOINT_DIR / "12").is_dir()
    with pytest.raises(ValueError, match="Unknown optimizer"):
        finetune(FinetuneConfig(MODEL, str(folder), str(tmp_path / "o2"), opt="lamb"))


@pytest.mark.parametrize("flag, value, message", [
    ("--img-size", 0, "img_size 0: expected a value >= 1 (--img-size"),  # trained at 224 px before
    ("--epochs", 0, "epochs 0: expected a value >= 1"),
    ("--lr", -0.1, "lr -0.1: expected a value >= 0"),
    ("--val-fraction", 1.0, "val_fraction 1.0: expected a value >= 0 and < 1"),
    ("--hflip", 1.5, "hflip 1.5: expected a value >= 0 and <= 1"),
    ("--workers", 0, "workers 0: expected a value >= 1"),
])
def test_settings_out_of_range_are_refused_before_any_work(folder, tmp_path, capsys, flag, value, message):
    out = tmp_path / "out"
    assert message in _error(capsys, [MODEL, folder, "--output", out, flag, value])
    assert not out.exists()


# --------------------------------------------------------------------------- failed runs

class _Interrupt:
    """A ``log`` that raises KeyboardInterrupt (as Ctrl-C) at the first line starting with ``at``."""

    def __init__(self, at: str):
        self.at = at

    def __call__(self, line: str):
        if line.startswith(self.at):
            raise KeyboardInterrupt


@pytest.fixture
def zeros_init(monkeypatch):
    """Starting variables of the model's shapes, all zeros: these runs fail before the model runs,
    so they are spared its random init (a compile)."""
    import jax
    from resnets_jax.train import finetune as finetune_module

    shapes_of = finetune_module._initial_variables

    def zeros(cfg, model, num_classes, restoring):
        shapes = shapes_of(cfg, model, num_classes, restoring=True)  # only their shapes (eval_shape)
        return jax.tree_util.tree_map(lambda a: np.zeros(a.shape, a.dtype), shapes)

    monkeypatch.setattr(finetune_module, "_initial_variables", zeros)
    return finetune_module


def test_failed_run_removes_only_the_run_dir_it_made(folder, tmp_path, capsys, zeros_init):
    cfg = dict(model=MODEL, data_dir=str(folder), img_size=INPUT_SIZE, batch_size=12, epochs=1, progress=False)
    out = tmp_path / "new"
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C before the first checkpoint: the folder it made goes
        finetune(FinetuneConfig(output_dir=str(out), **cfg), log=_Interrupt("fine-tuning"))
    assert not out.exists()
    existing = tmp_path / "existing"
    (existing / "notes").mkdir(parents=True)
    with pytest.raises(KeyboardInterrupt):  # a folder that was there stays, without the run's checkpoints/
        finetune(FinetuneConfig(output_dir=str(existing), **cfg), log=_Interrupt("fine-tuning"))
    assert sorted(p.name for p in existing.iterdir()) == ["notes"]
    bad = tmp_path / "bad_images"  # an error in the first epoch: an image that does not decode
    shutil.copytree(folder, bad)
    for p in sorted(bad.rglob("*.png")):
        p.write_bytes(b"not a png")
    with pytest.raises(Exception, match="not a png|cannot identify image"):
        finetune(FinetuneConfig(**{**cfg, "data_dir": str(bad)}, output_dir=str(out)))
    assert not out.exists()
    assert "cannot fill one batch" in _error(capsys, [MODEL, folder, "--output", out, "--batch-size", 64])
    assert not out.exists()


def test_failed_run_keeps_its_intact_checkpoints(folder, tmp_path, monkeypatch, zeros_init):
    """Interrupted after its first checkpoint: the run can be resumed, so its folder stays. (The
    train step is a stub: what is checked is the bookkeeping, not the training.)"""
    def stub_step(model, tx, label_smoothing=0.0):
        return lambda state, batch, rng: (state.replace(step=state.step + 1), {"loss": 0.0, "accuracy": 0.0})

    monkeypatch.setattr(zeros_init, "make_train_step", stub_step)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        finetune(FinetuneConfig(MODEL, str(folder), str(out), img_size=INPUT_SIZE, batch_size=12, epochs=2,
                                val_fraction=0, progress=False), log=_Interrupt("epoch 0"))
    assert read_train_checkpoint(out / CHECKPOINT_DIR)["meta"]["epoch"] == 1
