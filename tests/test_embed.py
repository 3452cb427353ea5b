"""``resnets-jax embed``: killed mid-run and resumed == uninterrupted, without recomputing
the finished batches; embeddings == model.apply; top-k; bad inputs."""
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import resnets_jax as rj
from resnets_jax.tools import cli
from resnets_jax.tools.embed import EXIT_AFTER_ENV, EXIT_HOOK_STATUS, pooled_features
from resnets_jax.tools.predict import load_images
from resnets_jax.io.files import TEMP_SUFFIX
from timm_ref import jit_apply

NAME = "resnetv2_18d"
BATCH = 4  # 13 files -> 4 batches; the last one is short (padded)
EMBED_TOL = 1e-5  # fp32, the same preprocessing; batched and padded vs one direct call


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A folder of small generated images (RGB, L, RGBA; jpg/png/bmp; one in a subfolder), the
    bundled photo, an unreadable .jpg and a non-image file; a random-init checkpoint."""
    root = tmp_path_factory.mktemp("embed")
    folder = root / "images"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (mode, ext) in enumerate([("RGB", "jpg"), ("L", "png"), ("RGBA", "png"), ("RGB", "bmp")] * 2 + [("RGB", "png")] * 3):
        shape = (30 + 9 * i, 48 + 5 * i) + ((len(mode),) if len(mode) > 1 else ())
        img = Image.fromarray(rng.integers(0, 256, shape, np.uint8), mode)
        img.save(folder / ("sub" if i % 4 == 0 else "") / f"img{i:02d}.{ext}")
    shutil.copy(rj.data.sample_image_path(), folder / "chelsea.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("not listed")
    model, variables = rj.create_model(NAME, num_classes=10, rng=jax.random.PRNGKey(0))
    weights = root / "model.safetensors"
    rj.save_checkpoint(model, variables, weights)
    reference = root / "reference.npz"
    assert embed(folder, reference, weights) == 0
    return dict(root=root, folder=folder, weights=weights, reference=reference, model=model, variables=variables)


def embed(folder, output, weights, *extra):
    return cli.main(["embed", str(folder), "--model", NAME, "--weights", str(weights), "--output", str(output),
                     "--batch-size", str(BATCH), "--no-progress", *map(str, extra)])


def test_reference_output(setup):
    out = np.load(setup["reference"])
    images = sorted(p.relative_to(setup["folder"]).as_posix() for p in setup["folder"].rglob("*")
                    if p.suffix in (".jpg", ".png", ".bmp") and p.name != "broken.jpg")
    assert list(out["paths"]) == images and len(images) == 12  # sorted, recursive, .txt not listed
    assert list(out["failed"]) == ["broken.jpg"]
    model, variables = setup["model"], setup["variables"]
    x = load_images(model, [str(setup["folder"] / p) for p in images], use_test_size=True)  # embed: the test size by default
    direct = np.asarray(jit_apply(model, variables, x, method=pooled_features))
    assert out["embeddings"].shape == (12, model.num_features) and out["embeddings"].dtype == np.float32
    assert np.abs(out["embeddings"] - direct).max() / np.abs(direct).max() < EMBED_TOL
    fmap = jit_apply(model, variables, x, method="forward_features")  # the public API's spelling of it
    np.testing.assert_allclose(direct, jit_apply(model, variables, fmap, pre_logits=True, method="forward_head"), rtol=1e-6)
    assert not os.path.exists(str(setup["reference"]) + ".parts")  # finished: the parts are gone


def test_killed_run_resumes_without_recomputing(setup, tmp_path, capsys):
    output = tmp_path / "emb.npz"
    parts = tmp_path / "emb.npz.parts"
    # the CLI in a subprocess that exits abruptly (os._exit) while writing its second chunk
    env = dict(os.environ, **{EXIT_AFTER_ENV: "1"}, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "resnets_jax.tools.cli", "embed", str(setup["folder"]), "--model", NAME,
                           "--weights", str(setup["weights"]), "--output", str(output), "--batch-size", str(BATCH)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == EXIT_HOOK_STATUS, proc.stderr[-3000:]
    assert not output.exists()
    assert sorted(p.name for p in parts.iterdir() if p.name.startswith("chunk-")) == ["chunk-000000.npz"]
    assert any(p.name.endswith(TEMP_SUFFIX) for p in parts.iterdir())  # the write the exit cut short
    first = np.load(parts / "chunk-000000.npz")  # files 0-3; 0 is broken.jpg
    assert first["embeddings"].shape == (BATCH - 1, setup["model"].num_features)
    assert list(first["failed"]) == [0]

    assert embed(setup["folder"], output, setup["weights"]) == 0
    out, err = capsys.readouterr()
    assert "resuming: 1 of 4 batches (4 files) already done" in err
    # 13 files: batch 0 (3 images and broken.jpg) was not run again; unreadable files are not images
    assert "12 images (9 computed now, 3 resumed); 1 unreadable" in out
    assert "embedded 9 images" in err and "1 unreadable (0 in this run)" in err
    assert not parts.exists()
    resumed, reference = np.load(output), np.load(setup["reference"])
    assert sorted(resumed) == sorted(reference) == ["embeddings", "failed", "paths"]
    for key in ("paths", "failed"):
        np.testing.assert_array_equal(resumed[key], reference[key])
    np.testing.assert_allclose(resumed["embeddings"], reference["embeddings"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(resumed["embeddings"][:BATCH - 1], first["embeddings"])  # taken from the chunk


def test_damaged_parts_are_computed_again(setup, tmp_path, capsys, monkeypatch):
    """A resume's state damaged after it was written: each kind of damaged chunk (cut short, not a
    zip, arrays missing) is warned of and its batch computed again; a damaged manifest (the run's
    settings unknown) is refused, and --force starts over."""
    import resnets_jax.tools.embed as embed_module
    output, parts = tmp_path / "emb.npz", tmp_path / "emb.npz.parts"

    def stop(*args):
        raise ValueError("stopped before assembling")

    with monkeypatch.context() as m:  # every chunk written, the output not assembled
        m.setattr(embed_module, "_assemble", stop)
        assert embed(setup["folder"], output, setup["weights"]) == 2
    chunks = sorted(parts.glob("chunk-*.npz"))
    assert len(chunks) == 4
    chunks[1].write_bytes(chunks[1].read_bytes()[:100])
    chunks[2].write_bytes(b"not a zip")
    np.savez(chunks[3], embeddings=np.zeros((1, 4), np.float32))
    capsys.readouterr()
    assert embed(setup["folder"], output, setup["weights"]) == 0
    err = capsys.readouterr().err
    assert all(f"{c} is damaged" in err for c in chunks[1:]) and f"{chunks[0]} is damaged" not in err
    assert "resuming: 1 of 4 batches" in err
    resumed, reference = np.load(output), np.load(setup["reference"])
    np.testing.assert_array_equal(resumed["paths"], reference["paths"])
    np.testing.assert_allclose(resumed["embeddings"], reference["embeddings"], rtol=1e-6, atol=1e-6)

    with monkeypatch.context() as m:
        m.setattr(embed_module, "_assemble", stop)
        assert embed(setup["folder"], tmp_path / "again.npz", setup["weights"]) == 2
    (tmp_path / "again.npz.parts" / "manifest.json").write_text('{"cut sh')
    capsys.readouterr()
    assert embed(setup["folder"], tmp_path / "again.npz", setup["weights"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds an unfinished run with settings that cannot be read (manifest.json" in err
    assert embed(setup["folder"], tmp_path / "again.npz", setup["weights"], "--force") == 0


def test_top_k(setup, tmp_path):
    output = tmp_path / "top.npz"
    assert embed(setup["folder"], output, setup["weights"], "--top-k", 3) == 0
    out = np.load(output)
    assert sorted(out) == ["failed", "indices", "labels", "paths", "probabilities"]
    paths = list(out["paths"])
    model, variables = setup["model"], setup["variables"]
    logits = np.asarray(jit_apply(model, variables, load_images(model, [str(setup["folder"] / p) for p in paths], use_test_size=True)))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    assert out["indices"].shape == out["probabilities"].shape == out["labels"].shape == (12, 3)
    np.testing.assert_array_equal(out["indices"], np.argsort(-probs, -1)[:, :3])
    np.testing.assert_allclose(out["probabilities"], np.sort(probs, -1)[:, ::-1][:, :3], rtol=1e-4)
    assert (np.diff(out["probabilities"], axis=1) <= 0).all()
    np.testing.assert_array_equal(out["labels"], out["indices"].astype(str))  # 10 classes: no names


def test_bad_inputs(setup, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images")
    assert embed(tmp_path / "missing", tmp_path / "a.npz", setup["weights"]) == 2
    assert "missing: no such folder" in capsys.readouterr().err
    assert embed(empty, tmp_path / "a.npz", setup["weights"]) == 2
    assert "no image files" in capsys.readouterr().err
    before = setup["reference"].read_bytes()
    assert embed(setup["folder"], setup["reference"], setup["weights"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert setup["reference"].read_bytes() == before
    assert embed(setup["folder"], tmp_path / "emb.txt", setup["weights"]) == 2
    assert "expected a .npz file name" in capsys.readouterr().err
    # an unfinished run with other settings: refused, as it would mix two jobs' results
    parts = tmp_path / "b.npz.parts"
    parts.mkdir()
    (parts / "manifest.json").write_text('{"version": 1, "batch_size": 99}')
    assert embed(setup["folder"], tmp_path / "b.npz", setup["weights"]) == 2
    assert "other settings (" in capsys.readouterr().err and not (tmp_path / "b.npz").exists()
    assert (parts / "manifest.json").read_text() == '{"version": 1, "batch_size": 99}'
