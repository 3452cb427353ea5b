"""Optional dependencies, one way everywhere: ``optional_import`` at the place a package is
needed, ``require`` to check before any work (nothing written first), one error that names the
extra to install (``MissingExtraError``, an ``ImportError``), and ``available`` for code that
has another way. The CLI prints the error as its one line ``error: ...`` and exits 2."""
import importlib

# top-level module -> (pip name, the resnets-jax extra that installs it; pyproject.toml)
EXTRAS = {
    "torch": ("torch", "torch"),
    "timm": ("timm", "torch"),
    "grain": ("grain", "train"),
    "orbax": ("orbax-checkpoint", "train"),
    "flatbuffers": ("flatbuffers", "export"),  # jax.export's serialize
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
}


def missing_extra_message(what: str, module: str) -> str:
    """``'<what> needs <pip name>: pip install 'resnets-jax[<extra>]''``."""
    pip_name, extra = EXTRAS[module.split(".")[0]]
    return f"{what} needs {pip_name}: pip install 'resnets-jax[{extra}]'"


class MissingExtraError(ImportError):
    """An optional package is not installed (or cannot be imported): names what needs it and
    the extra that installs it. ``package``: the pip name; ``extra``: the extra."""

    def __init__(self, what: str, module: str):
        super().__init__(missing_extra_message(what, module), name=module)
        self.package, self.extra = EXTRAS[module.split(".")[0]]


def _missing(module: str, error: ImportError) -> str:
    """The optional package at fault: the one whose import failed when it is one of ours
    (``timm`` fails when ``torch`` is missing), else ``module``."""
    top = (getattr(error, "name", None) or "").split(".")[0]
    return top if top in EXTRAS else module


def optional_import(module: str, what: str):
    """``importlib.import_module(module)``, or ``MissingExtraError`` naming ``what`` needs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(what, _missing(module, e)) from e


def require(what: str, *modules: str) -> None:
    """Import each of ``modules`` (so a broken install fails here too), before any work:
    ``MissingExtraError`` for the first that cannot be imported."""
    for module in modules:
        optional_import(module, what)


def available(*modules: str) -> bool:
    """Whether every one of ``modules`` imports (for code that has another way without them)."""
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError:
        return False
    return True
