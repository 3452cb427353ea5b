"""``hf-hub:<org>/<repo>`` names: a user's own timm model on the hub, read by the real
huggingface_hub code from a hub cache the tests build (offline)."""
import json

import numpy as np
import pytest

import resnets_jax as rj
from resnets_jax import CheckpointError
from resnets_jax.tools import cli
from resnets_jax.data import sample_image_path
from hub_cache import hub_cache, timm_hub_export
from timm_ref import jit_apply, perturb_, rel_err, timm_forward

torch = pytest.importorskip("torch")  # the reference (the [dev] extra; make test installs it)
timm = pytest.importorskip("timm")  # the reference (the [dev] extra; make test installs it)

REPO = "someone/resnetv2_18-flowers"  # a fine-tuned timm model with 7 classes
LABELS = ["daisy", "dandelion", "rose", "sunflower", "tulip", "iris", "lily"]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A perturbed 7-class resnetv2_18 exported by timm, in a hub cache; data config unlike the
    registry's default tag (bilinear, crop 0.8, ImageNet mean/std, 160 px)."""
    torch.manual_seed(0)
    tmodel = perturb_(timm.create_model("resnetv2_18", num_classes=7), seed=11).eval()
    out = tmp_path_factory.mktemp("export")
    files = timm_hub_export(tmodel, out, model_config={"label_names": LABELS},
                            data_config={"input_size": (3, 160, 160), "interpolation": "bilinear",
                                         "crop_pct": 0.8, "mean": (0.485, 0.456, 0.406),
                                         "std": (0.229, 0.224, 0.225)})
    cache = hub_cache(tmp_path_factory.mktemp("hub"), REPO, files)
    return tmodel, cache, json.loads(files["config.json"].read_text())


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_hf_hub_name_with_7_classes(finetuned, offline):
    tmodel, cache, config = finetuned
    assert config["num_classes"] == 7 and config["architecture"] == "resnetv2_18"  # timm's own export
    model, variables = rj.create_model(f"hf-hub:{REPO}", pretrained=True, cache_dir=str(cache))
    assert model.num_classes == 7 and model.variant == f"hf-hub:{REPO}"
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    assert rel_err(np.asarray(jit_apply(model, variables, x)), timm_forward(tmodel, x)) < 1e-4


def test_hf_hub_data_config_is_the_repos(finetuned, offline):
    _, cache, config = finetuned
    rj.resolve_pretrained_cfg(f"hf-hub:{REPO}", cache_dir=str(cache))  # reads config.json only
    model = rj.build_model(f"hf-hub:{REPO}")
    cfg = rj.data.resolve_data_config(model)
    want = config["pretrained_cfg"]
    assert cfg["input_size"] == (3, 160, 160) == tuple(want["input_size"])
    assert (cfg["interpolation"], cfg["crop_pct"]) == ("bilinear", 0.8) == (want["interpolation"], want["crop_pct"])
    assert cfg["mean"] == tuple(want["mean"]) and cfg["std"] == tuple(want["std"])


def test_hf_hub_predict_uses_the_repos_labels(finetuned, offline, capsys, monkeypatch):
    tmodel, cache, _ = finetuned
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))  # as HF_HUB_CACHE=... would
    assert cli.main(["predict", f"hf-hub:{REPO}", sample_image_path(), "--top-k", "7", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)[0]["top_k"]
    assert sorted(r["label"] for r in out) == sorted(LABELS)
    model = rj.build_model(f"hf-hub:{REPO}")
    x = rj.predict.load_images(model, [sample_image_path()])
    assert x.shape == (1, 160, 160, 3)
    ref = torch.softmax(torch.from_numpy(timm_forward(tmodel, x)), -1).numpy()[0]
    assert [r["label"] for r in out[:3]] == [LABELS[i] for i in np.argsort(-ref)[:3]]


def test_hf_hub_offline_without_cache_says_how_to_pass_a_file(tmp_path, offline):
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE.*checkpoint_path="):
        rj.create_model(f"hf-hub:{REPO}-missing", pretrained=True, cache_dir=str(tmp_path))


def test_hf_hub_weights_missing_from_cache_names_num_classes(finetuned, tmp_path, offline):
    _, _, config = finetuned
    cfg_path = tmp_path / "config.json"  # a cache holding the config but not the weights
    cfg_path.write_text(json.dumps(config))
    cache2 = hub_cache(tmp_path / "hub", REPO, {"config.json": cfg_path})
    with pytest.raises(CheckpointError, match=r"create_model\('resnetv2_18', checkpoint_path=.*num_classes=7\)"):
        rj.create_model(f"hf-hub:{REPO}", pretrained=True, cache_dir=str(cache2))


def test_hf_hub_architecture_we_do_not_implement(tmp_path, offline):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"architecture": "vit_base_patch16_224", "num_classes": 10, "pretrained_cfg": {}}))
    cache = hub_cache(tmp_path / "hub", "someone/vit", {"config.json": cfg})
    with pytest.raises(ValueError, match="'vit_base_patch16_224' model, which resnets_jax does not implement"):
        rj.create_model("hf-hub:someone/vit", cache_dir=str(cache))


def test_hf_hub_name_without_repo_is_refused():
    with pytest.raises(ValueError, match="expected 'hf-hub:<org>/<repo>'"):
        rj.create_model("hf-hub:resnetv2_18")
