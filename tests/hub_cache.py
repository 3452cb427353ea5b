"""Hugging Face hub caches built by the tests, laid out as huggingface_hub writes them, so that
the real huggingface_hub code (``HF_HUB_OFFLINE=1``) finds files without a network."""
import shutil

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(root, repo_id, files, revision="main"):
    """``root/models--org--repo/{refs/<revision>, snapshots/<commit>/<name>}`` for ``files``
    (``{name in the repo: local source path}``). Returns ``root``, for ``cache_dir=`` or
    ``HF_HUB_CACHE``."""
    repo_dir = root / f"models--{repo_id.replace('/', '--')}"
    snap = repo_dir / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / revision).write_text(COMMIT)
    for name, src in files.items():
        shutil.copy(src, snap / name)
    return root


def timm_hub_export(model, directory, safe=True, **kwargs):
    """A timm model saved as ``timm.models.push_to_hub`` uploads it (config.json + weights),
    with timm's own writer. Returns ``{name: path}`` for ``hub_cache``."""
    from timm.models._hub import save_for_hf
    save_for_hf(model, str(directory), safe_serialization=bool(safe), **kwargs)
    weights = "model.safetensors" if safe else "pytorch_model.bin"
    return {"config.json": directory / "config.json", weights: directory / weights}
