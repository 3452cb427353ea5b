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
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
IMAGENET_INCEPTION_MEAN = (0.5, 0.5, 0.5)
IMAGENET_INCEPTION_STD = (0.5, 0.5, 0.5)

_model_entrypoints: Dict[str, Callable] = {}
_pretrained_cfgs: Dict[str, Dict[str, dict]] = {}  # arch -> {tag: cfg}, default tag first
_hf_hub_cfgs: Dict[str, dict] = {}  # '<org>/<repo>[@rev]' -> cfg from its config.json, once read
_model_to_module: Dict[str, str] = {}  # arch -> timm's module name ('resnet', 'resnest', ...)

HF_HUB_PREFIX = "hf-hub:"


# timm's PretrainedCfg defaults (timm/models/_pretrained.py) for what a config given whole as a dict
# leaves out (create_model(name, pretrained_cfg={...}); timm's other defaults are None, i.e. absent)
PRETRAINED_CFG_DEFAULTS = {"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 0.875,
                           "crop_mode": "center", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
                           "num_classes": 1000}


class _Mapping(tuple):
    """A dict inside a config change, held as sorted ``(key, value)`` pairs (hashable)."""


def _frozen(value):
    if isinstance(value, dict):
        return _Mapping(sorted((k, _frozen(v)) for k, v in value.items()))
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def _thawed(value):
    if isinstance(value, _Mapping):
        return {k: _thawed(v) for k, v in value}
    return tuple(_thawed(v) for v in value) if isinstance(value, tuple) else value


def cfg_changes(base: dict, cfg: dict) -> Tuple[Tuple[str, Any], ...]:
    """What ``cfg`` changes in ``base``, as the sorted hashable ``(key, value)`` pairs a Flax
    module field can hold (a key ``cfg`` drops: value None); :func:`with_cfg_changes` applies them."""
    changed = {k: v for k, v in cfg.items() if k not in base or base[k] != v}
    changed.update({k: None for k in base if k not in cfg})
    return tuple(sorted((k, _frozen(v)) for k, v in changed.items()))


def with_cfg_changes(base: dict, changes: Tuple[Tuple[str, Any], ...]) -> dict:
    """``base`` with :func:`cfg_changes`' pairs applied; None values left out (as timm's ``to_dict``)."""
    cfg = {**base, **{k: _thawed(v) for k, v in changes}}
    return {k: v for k, v in cfg.items() if v is not None}


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
    """Register a model function under its name, with the ``default_cfgs`` of its module. Its
    ``module`` (``list_models(module=...)``) is timm's: the family module's ``TIMM_MODULE`` where
    ours is split otherwise (``resnet_variants`` -> ``'resnet'``), else the module's own name."""
    name = fn.__name__
    _model_entrypoints[name] = fn
    mod = sys.modules[fn.__module__]
    _model_to_module[name] = getattr(mod, "TIMM_MODULE", fn.__module__.rpartition(".")[2])
    cfgs = getattr(mod, "default_cfgs", {})
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


class UnknownModelError(ValueError, RuntimeError):
    """An unknown architecture or pretrained tag: a ``ValueError``, and a ``RuntimeError`` as
    timm's ``create_model`` raises (so ``except RuntimeError`` written for timm catches it too)."""


def _unknown(what: str, name: str, choices: List[str]) -> UnknownModelError:
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.6)
    hint = (f" Did you mean: {', '.join(close)}?" if close
            else " See resnets_jax.list_models() (resnets-jax list on the command line).")
    return UnknownModelError(f"Unknown {what} {name!r}.{hint}")


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


def _to_str_list(value: Union[str, Iterable[str], None]) -> List[str]:
    """timm's ``_to_str_list``: one str or an iterable of str -> a list (empty for '' or None)."""
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def _expand_filter(pattern: str) -> List[str]:
    """timm's ``_expand_filter``: a pattern without a tag part also matches every tag
    (``'resnet50'`` -> ``['resnet50.*', 'resnet50']``)."""
    return [pattern] if "." in pattern else [f"{pattern}.*", pattern]


def _default_cfg(arch: str) -> dict:
    return next(iter(_pretrained_cfgs[arch].values()), {})


def _has_weights(cfg: dict) -> bool:
    """timm's ``PretrainedCfg.has_weights``: a url, a file or a hub id."""
    return bool(cfg.get("url") or cfg.get("file") or cfg.get("hf_hub_id"))


def list_models(filter: Union[str, Iterable[str]] = "", module: Union[str, Iterable[str]] = "",
                pretrained: bool = False, exclude_filters: Union[str, Iterable[str]] = "",
                name_matches_cfg: bool = False, include_tags: Optional[bool] = None) -> List[str]:
    """Model names, sorted naturally: ``timm.list_models`` (``timm/models/_registry.py``) with its
    arguments and their meaning, over the architectures registered here.

    ``filter`` / ``exclude_filters``: fnmatch pattern(s), a str or an iterable of them, the
    second removing what the first took in. ``module``: timm's module name(s) (``'resnet'``,
    ``'resnest'``, ``'res2net'``, ``'resnetv2'``, ``'sknet'``). ``include_tags`` (default:
    ``pretrained``): ``'arch.tag'`` names, every tag of each architecture; a pattern without a tag
    then also matches its tags. ``pretrained``: only names with weights (a hub id, url or file).
    ``name_matches_cfg``: only names that have a pretrained config of their own."""
    include, exclude, modules = _to_str_list(filter), _to_str_list(exclude_filters), _to_str_list(module)
    if include_tags is None:
        include_tags = pretrained
    names = {n for n in _model_entrypoints if not modules or _model_to_module.get(n) in modules}
    tagged = {arch: [f"{arch}.{tag}" if tag else arch for tag in _pretrained_cfgs[arch]] for arch in names}
    if include_tags:
        names = {n for arch in names for n in tagged[arch] or [arch]}
        include = [q for p in include for q in _expand_filter(p)]
        exclude = [q for p in exclude for q in _expand_filter(p)]
    if include:
        names = {n for n in names if any(fnmatch.fnmatch(n, p) for p in include)}
    names = {n for n in names if not any(fnmatch.fnmatch(n, p) for p in exclude)}
    if pretrained:  # timm's _model_has_pretrained: each 'arch.tag' with weights, and 'arch' when its default has
        names &= {n for arch in tagged for (n, cfg) in zip(tagged[arch], _pretrained_cfgs[arch].values())
                  if _has_weights(cfg)} | {arch for arch in tagged if _has_weights(_default_cfg(arch))}
    if name_matches_cfg:  # timm's _model_pretrained_cfgs: each architecture with a config, and each 'arch.tag'
        names &= {n for arch in tagged if tagged[arch] for n in (arch, *tagged[arch])}
    return sorted(names, key=_natural_key)


def list_pretrained(filter: Union[str, Iterable[str]] = "", exclude_filters: Union[str, Iterable[str]] = "") -> List[str]:
    """``'arch.tag'`` names with weights, as ``timm.list_pretrained``: ``list_models(filter,
    pretrained=True, exclude_filters=exclude_filters, include_tags=True)``; a pattern without a
    tag matches every tag of the architectures it names (``'resnet50'``)."""
    return list_models(filter=filter, pretrained=True, exclude_filters=exclude_filters, include_tags=True)


def _natural_key(name: str):
    """timm's ``_natural_key``: digits compare as numbers, the rest case-insensitively."""
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name.lower())]
