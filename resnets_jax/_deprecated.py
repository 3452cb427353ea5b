"""Module paths of release 0.1 that moved when the package was split into rooms. Each still
imports for one release, as a module holding the names of its new homes, and warns
(``DeprecationWarning``) naming them. Removed in 0.3."""
import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "resnets_jax.weights": ("resnets_jax.io.errors", "resnets_jax.io.arrays", "resnets_jax.io.safetensors",
                            "resnets_jax.io.torch_file", "resnets_jax.io.flax_checkpoint", "resnets_jax.io.formats",
                            "resnets_jax.io.hub", "resnets_jax.convert.keys", "resnets_jax.convert.shapes",
                            "resnets_jax.convert.matcher", "resnets_jax.convert.export", "resnets_jax.pretrained"),
    "resnets_jax.conversion": ("resnets_jax.io.files", "resnets_jax.io.flax_checkpoint", "resnets_jax.convert.export",
                               "resnets_jax.tools.verify", "resnets_jax.tools.fallback", "resnets_jax.tools.convert"),
    "resnets_jax.builder": ("resnets_jax.pretrained", "resnets_jax.factory"),
    "resnets_jax.files": ("resnets_jax.io.files",),
    "resnets_jax.image_folder": ("resnets_jax.data.image_folder",),
    "resnets_jax.finetune": ("resnets_jax.train.finetune",),
    "resnets_jax.cli": ("resnets_jax.tools.cli",),
    "resnets_jax.predict": ("resnets_jax.tools.predict",),
    "resnets_jax.embed": ("resnets_jax.tools.embed",),
    "resnets_jax.info": ("resnets_jax.tools.info",),
    "resnets_jax.demo": ("resnets_jax.tools.demo",),
}
# names that changed as well as moved: old name -> (new module, new name)
RENAMED = {
    "resnets_jax.weights": {"hf_hub_config": ("resnets_jax.factory", "resolve_pretrained_cfg"),
                            "load_flax_state_dict": ("resnets_jax.convert.matcher", "load_variables")},
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Found after the regular finders, so only for the old paths, which no longer exist."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module):
        homes = MOVED[module.__name__]
        warnings.warn(f"{module.__name__} is deprecated and will be removed in resnets_jax 0.3; "
                      f"import from {', '.join(homes)} (or the resnets_jax top level) instead",
                      DeprecationWarning, stacklevel=2)
        for home in homes:
            module.__dict__.update({k: v for k, v in vars(importlib.import_module(home)).items()
                                    if not k.startswith("__")})
        for old, (home, new) in RENAMED.get(module.__name__, {}).items():
            setattr(module, old, getattr(importlib.import_module(home), new))


def install() -> None:
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())
