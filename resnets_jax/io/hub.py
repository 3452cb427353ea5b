"""All network access: files from the Hugging Face hub through huggingface_hub (its cache,
``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``), with one clear error when they cannot be had."""
import json
import os
from typing import Optional, Tuple

from ..registry import get_pretrained_cfg, model_entrypoint, parse_hf_hub_name
from .errors import CheckpointError, WeightsUnavailableError, placeholder

# what to do without the hub: the words before the create_model call / the command's flags
_OFFLINE_ADVICE = "Without network access, download the file elsewhere and pass it:"


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub endpoint (``HF_ENDPOINT``) opens within ``timeout``."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False

def _offline_reason() -> str:
    # read at call time: huggingface_hub reads HF_HUB_OFFLINE once, when it is imported. An
    # unreachable hub also means cache-only, instead of huggingface_hub's minute of retries.
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "HF_HUB_OFFLINE is set and there is no cached copy"
    if not hub_reachable():
        return "the hub cannot be reached and there is no cached copy"
    return ""

def _hub_download(repo: str, filenames: Tuple[str, ...], cache_dir: Optional[str], revision: Optional[str],
                  what: str, model_name: Optional[str], **instead) -> str:
    """The first of ``filenames`` that ``repo`` has (cache first when offline); else one
    ``WeightsUnavailableError`` saying why, and the ``create_model(model_name, **instead)`` call
    (or the command's flags) that loads a downloaded copy."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    offline = _offline_reason()
    errors = []
    for filename in filenames:
        try:
            return hf_hub_download(repo, filename, revision=revision, cache_dir=cache_dir,
                                   local_files_only=bool(offline))
        except RepositoryNotFoundError:
            errors.append(f"no repository {repo} (or it is private: log in with `hf auth login`)")
            break
        except (EntryNotFoundError, LocalEntryNotFoundError) as e:
            errors.append(f"{filename}: {type(e).__name__}")
        except OSError as e:
            errors.append(f"{filename}: {type(e).__name__}: {e}")
    raise WeightsUnavailableError(f"Could not get {what} from the Hugging Face hub ({repo}): "
                                  f"{offline or '; '.join(errors)}.", _OFFLINE_ADVICE, model_name, **instead)

def download_pretrained(cfg: dict, cache_dir: Optional[str] = None) -> str:
    """Fetch ``model.safetensors`` (else ``pytorch_model.bin``) of a pretrained tag with
    huggingface_hub, honouring its cache, ``cache_dir`` and ``HF_HUB_OFFLINE``."""
    repo = cfg.get("hf_hub_id")
    source = cfg.get("source") or f"{cfg['architecture']}.{cfg['tag']}"
    if not repo:
        raise WeightsUnavailableError(f"{source} has no pretrained weights.", "Pass a checkpoint file:",
                                      cfg["architecture"], checkpoint_path=placeholder("FILE"))
    extra = dict(num_classes=cfg["num_classes"]) if cfg.get("source") else {}
    return _hub_download(repo, ("model.safetensors", "pytorch_model.bin"), cache_dir, cfg.get("hf_hub_revision"),
                         f"weights for {source}", cfg["architecture"], checkpoint_path="model.safetensors", **extra)

def read_hf_hub_config(name: str, cache_dir: Optional[str] = None) -> dict:
    """The pretrained config of ``hf-hub:<org>/<repo>[@revision]``: a timm model on the hub,
    described by its ``config.json`` (as ``timm.models.push_to_hub`` writes it: ``architecture``,
    ``num_classes``, ``model_args``, ``pretrained_cfg``), read from the hub (or its cache) each
    call: ``factory.resolve_pretrained_cfg`` reads it once and registers it."""
    model_id = parse_hf_hub_name(name)
    if not model_id:
        raise ValueError(f"{name!r} is not an hf-hub: name (expected 'hf-hub:<org>/<repo>')")
    repo, _, revision = model_id.partition("@")
    path = _hub_download(repo, ("config.json",), cache_dir, revision or None, f"config.json of {name}", None,
                         checkpoint_path="model.safetensors", num_classes=placeholder("<its number of classes>"))
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        if not isinstance(raw, dict) or "architecture" not in raw:
            raise ValueError("no 'architecture' field")
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{name}: config.json is not a timm model config ({e})") from None
    if "pretrained_cfg" in raw:
        pcfg = dict(raw["pretrained_cfg"])
    else:  # timm's legacy single-dict config
        pcfg = {k: v for k, v in raw.items() if k not in ("architecture", "num_features")}
    arch = raw["architecture"]
    try:
        model_entrypoint(arch)
    except ValueError as e:
        raise ValueError(f"{name} is a timm {arch!r} model, which resnets_jax does not implement. {e}") from None
    model_args = dict(raw.get("model_args") or {})
    pcfg.setdefault("classifier", get_pretrained_cfg(arch).get("classifier"))
    for k in ("num_classes", "label_names", "label_descriptions"):  # top-level overrides, as timm
        if k in raw:
            pcfg[k] = raw[k]
    if model_args.get("in_chans") is not None and pcfg.get("input_size"):
        pcfg["input_size"] = (model_args["in_chans"], *pcfg["input_size"][1:])
    cfg = dict(pcfg, architecture=arch, tag="", hf_hub_id=repo, hf_hub_revision=revision or None,
               source=f"hf-hub:{model_id}", model_args=model_args)
    cfg.setdefault("num_classes", model_args.get("num_classes", 1000))
    return cfg
