"""Model registry: timm's architecture names, pretrained tags and their configs.

As in timm, a family module defines ``default_cfgs`` (``'arch.tag' -> cfg``) and registers one
function per architecture with ``@register_model``; the first tag listed for an architecture
is its default. Pure tables: no I/O, and nothing of the package is imported here (an
``hf-hub:`` repo's config is read by ``factory.resolve_pretrained_cfg`` and registered here).
"""
import difflib
import fnmatch
import re
import sys
from typing import Callable, Dict, List, Optional, Tuple

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_INCEPTION_MEAN = (0.5, 0.5, 0.5)
IMAGENET_INCEPTION_STD = (0.5, 0.5, 0.5)

_model_entrypoints: Dict[str, Callable] = {}
_pretrained_cfgs: Dict[str, Dict[str, dict]] = {}  # arch -> {tag: cfg}, default tag first
_hf_hub_cfgs: Dict[str, dict] = {}  # '<org>/<repo>[@rev]' -> cfg from its config.json, once read

HF_HUB_PREFIX = "hf-hub:"


def generate_default_cfgs(cfgs: Dict[str, dict]) -> Dict[str, dict]:
    """``'arch.tag' -> cfg`` with timm's conventions: ``hf_hub_id='timm/'`` expands to
    ``timm/arch.tag``; a tagless name gets the empty tag."""
    out = {}
    for name, cfg in cfgs.items():
        arch, _, tag = name.partition(".")
        cfg = dict(cfg, architecture=arch, tag=tag)
        if cfg.get("hf_hub_id") == "timm/":
            cfg["hf_hub_id"] = f"timm/{name}"
        out[name] = cfg
    return out


def register_model(fn: Callable) -> Callable:
    """Register a model function under its name, with the ``default_cfgs`` of its module."""
    name = fn.__name__
    _model_entrypoints[name] = fn
    cfgs = getattr(sys.modules[fn.__module__], "default_cfgs", {})
    _pretrained_cfgs[name] = {c["tag"]: c for c in cfgs.values() if c["architecture"] == name}
    return fn


def parse_hf_hub_name(name: str) -> Optional[str]:
    """``'hf-hub:org/repo[@rev]'`` (or timm's older ``'hf_hub:'``) -> ``'org/repo[@rev]'``; else None."""
    for prefix in (HF_HUB_PREFIX, "hf_hub:"):
        if name.startswith(prefix):
            model_id = name[len(prefix):]
            if "/" not in model_id.partition("@")[0]:
                raise ValueError(f"{name!r}: expected 'hf-hub:<org>/<repo>', e.g. 'hf-hub:timm/resnetv2_50.a1h_in1k'")
            return model_id
    return None


def register_hf_hub_cfg(model_id: str, cfg: dict) -> dict:
    """Remember the config of ``hf-hub:<model_id>`` (as ``factory.resolve_pretrained_cfg`` read it)."""
    _hf_hub_cfgs[model_id] = cfg
    return cfg


def split_model_name(name: str) -> Tuple[str, str]:
    """``'arch.tag'`` -> ``('arch', 'tag')``; ``'hf-hub:org/repo'`` -> (its architecture, '')."""
    if parse_hf_hub_name(name):
        return get_pretrained_cfg(name)["architecture"], ""
    arch, _, tag = name.partition(".")
    return arch, tag


def _unknown(what: str, name: str, choices: List[str]) -> ValueError:
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else " See resnets_jax.list_models()."
    return ValueError(f"Unknown {what} {name!r}.{hint}")


def model_entrypoint(name: str) -> Callable:
    arch, _ = split_model_name(name)
    if arch not in _model_entrypoints:
        raise _unknown("model", name, list(_model_entrypoints) + list_pretrained())
    return _model_entrypoints[arch]


def get_pretrained_cfg(name: str) -> dict:
    """The config of ``arch.tag`` (or of the architecture's default tag), or of
    ``hf-hub:<org>/<repo>`` once its ``config.json`` has been read (``create_model``,
    ``build_model`` and ``factory.resolve_pretrained_cfg`` read it). ``ValueError`` for an
    unknown name, or an hf-hub name not read yet."""
    model_id = parse_hf_hub_name(name)
    if model_id:
        if model_id not in _hf_hub_cfgs:
            raise ValueError(f"{name}: its config.json has not been read yet; "
                             "resnets_jax.factory.resolve_pretrained_cfg(name) reads it from the hub")
        return _hf_hub_cfgs[model_id]
    arch, tag = split_model_name(name)
    model_entrypoint(arch)
    cfgs = _pretrained_cfgs[arch]
    if not tag:
        return next(iter(cfgs.values()))
    if tag not in cfgs:
        raise _unknown("pretrained tag", name, [f"{arch}.{t}" for t in cfgs])
    return cfgs[tag]


def _matches(name: str, pattern) -> bool:
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def list_models(pattern="", exclude: Optional[str] = None) -> List[str]:
    """Architecture names, as ``timm.list_models`` spells and sorts them."""
    names = [n for n in _model_entrypoints if not pattern or _matches(n, pattern)]
    if exclude:
        names = [n for n in names if not _matches(n, exclude)]
    return sorted(names, key=_natural_key)


def _with_tags(pattern):
    """timm's ``_expand_filter``: a pattern without a tag part also matches every tag
    (``'resnet50'`` -> ``['resnet50.*', 'resnet50']``)."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return [q for p in patterns for q in ([p] if "." in p else [f"{p}.*", p])]


def list_pretrained(pattern="", exclude: Optional[str] = None) -> List[str]:
    """``arch.tag`` names that have weights on the hub, as ``timm.list_pretrained``: a pattern
    without a tag matches every tag of the architectures it names (``'resnet50'``)."""
    names = [f"{arch}.{tag}" for arch, cfgs in _pretrained_cfgs.items()
             for tag, cfg in cfgs.items() if cfg.get("hf_hub_id")]
    names = [n for n in names if not pattern or _matches(n, _with_tags(pattern))]
    if exclude:
        names = [n for n in names if not _matches(n, _with_tags(exclude))]
    return sorted(names, key=_natural_key)


def _natural_key(name: str):
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", name)]
