"""The package's rooms hold: no import cycle inside ``resnets_jax``, no module past the length a
reader can hold, the registry pure, and ``create_model`` resolving a name's config once and
reading its weights file once (docs/architecture.md)."""
import ast
import importlib
import pathlib
import sys
import warnings

import pytest

import resnets_jax as rj

PACKAGE = pathlib.Path(rj.__file__).parent
MAX_MODULE_LINES = 500  # issue 13: "no module of the package is longer than about 500 lines"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path):
    """The package modules ``path`` imports (at any depth: lazy imports count too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level \
                else node.module or ""
            if base.split(".")[0] != "resnets_jax":
                continue
            for alias in node.names:  # `from . import data` imports a module, not a name
                sub = f"{base}.{alias.name}"
                out.add(sub if (PACKAGE.parent / (sub.replace(".", "/") + ".py")).exists()
                        or (PACKAGE.parent / sub.replace(".", "/")).is_dir() else base)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "resnets_jax")
    return out - {name}


def _graph():
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _cycle(graph):
    """One import cycle as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if n not in graph:
                continue
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def _parent_packages(module: str):
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_import_cycle():
    # A package's __init__ importing its own submodules is not a cycle; nor is a submodule
    # importing a sibling through its parent package's name. Edges to parents are left out.
    graph = {m: {n for n in deps if n not in _parent_packages(m)} for m, deps in _graph().items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_modules_are_short():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_registry_is_pure():
    """The registry imports nothing of ours and does no I/O."""
    deps = _imports(PACKAGE / "registry.py")
    assert deps == set(), deps
    source = (PACKAGE / "registry.py").read_text()
    for io_call in ("open(", "huggingface_hub", "requests", "urllib"):
        assert io_call not in source


@pytest.mark.parametrize("old, name", [("resnets_jax.weights", "convert_timm_state_dict"),
                                       ("resnets_jax.conversion", "convert_checkpoint"),
                                       ("resnets_jax.builder", "create_model"),
                                       ("resnets_jax.finetune", "FinetuneConfig"),
                                       ("resnets_jax.cli", "main")])
def test_old_module_paths_import_and_warn(old, name):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=old.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert callable(getattr(module, name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert importlib.import_module("resnets_jax.weights").hf_hub_config is rj.resolve_pretrained_cfg


def test_create_model_resolves_the_config_once_and_reads_the_file_once(tmp_path, monkeypatch):
    from resnets_jax import factory, pretrained
    from resnets_jax.io import hub
    model, variables = rj.create_model("resnetv2_18", num_classes=7)
    ckpt = tmp_path / "model.safetensors"
    rj.export_timm_checkpoint(model, variables, ckpt)
    calls = {"resolve": 0, "read": 0, "download": 0}

    def counting(fn, key):
        def wrapped(*args, **kwargs):
            calls[key] += 1
            return fn(*args, **kwargs)
        return wrapped
    monkeypatch.setattr(factory, "resolve_pretrained_cfg", counting(factory.resolve_pretrained_cfg, "resolve"))
    monkeypatch.setattr(pretrained, "load_state_dict", counting(pretrained.load_state_dict, "read"))
    monkeypatch.setattr(pretrained, "download_pretrained", counting(lambda cfg, cache_dir=None: str(ckpt), "download"))
    monkeypatch.setattr(hub, "download_pretrained", lambda *a, **k: pytest.fail("a second hub path"))
    cfg = rj.get_pretrained_cfg("resnetv2_18.ra4_e3600_r224_in1k")
    monkeypatch.setitem(cfg, "num_classes", 7)  # as if the tag had 7 classes: a strict load of the file
    loaded, loaded_vars = rj.create_model("resnetv2_18.ra4_e3600_r224_in1k", pretrained=True)
    assert calls == {"resolve": 1, "read": 1, "download": 1}
    assert loaded.num_classes == 7
    import numpy as np
    assert np.array_equal(loaded_vars["params"]["head"]["fc"]["kernel"], variables["params"]["head"]["fc"]["kernel"])
