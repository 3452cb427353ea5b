"""Every notebook runs top to bottom on CPU, small: settings come from the environment (the
notebooks read ``NB_*`` variables), not from edited copies. Any cell error fails the test."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
SMALL_MODEL = "resnetv2_18d.ra4_e3600_r224_in1k"
SMALL = {
    "tpu_inference": {"NB_MODEL": SMALL_MODEL, "NB_BATCH_PER_DEVICE": "2", "NB_TIMED_RUNS": "1"},
    "convert_and_verify": {"NB_MODELS": SMALL_MODEL},
    "finetune": {"NB_MODEL": SMALL_MODEL, "NB_EPOCHS": "2", "NB_IMG_SIZE": "48", "NB_IMAGES_PER_CLASS": "12",
                 "NB_BATCH": "8"},
}


def outputs(nb, kind):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if kind in o.get("data", {})]


def text(nb):
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.parametrize("name", sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    assert name in SMALL, f"{name}.ipynb has no small settings in this test"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub cannot be reached here: the labelled stand-in
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("NB_OUT", str(tmp_path / "out"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the notebook's inline figures
    for k, v in SMALL[name].items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    out = text(nb)
    assert "HUB UNREACHABLE - LOCAL FALLBACK" in out  # and said so
    assert outputs(nb, "image/png"), "no figure was drawn"
    if name == "convert_and_verify":
        (table,) = [o["data"]["text/markdown"] for o in outputs(nb, "text/markdown")]
        assert SMALL_MODEL in table and "| 100% |" in table
    if name == "tpu_inference":
        assert "images/s" in out
    if name == "finetune":
        assert "epoch 1 train_loss" in out  # both epochs ran
        diff = float(out.split("max |logit JAX - logit timm| = ")[1].split()[0])
        assert diff < 1e-4  # the export, loaded by timm itself
