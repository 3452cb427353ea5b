"""What a model's variables look like (shapes and dtypes), without computing anything: the
target every conversion is checked against (from ``trace.trace_model``, the trace random init
shares), remembered per process and on disk."""
import functools
import hashlib
import json
import os
from typing import Optional

import jax
import numpy as np

from ..cache import cache_dir
from ..io.files import write_text_atomic
from .trace import EXAMPLE_SIZE, example_spec, trace_model  # noqa: F401  (example_spec: re-exported)

def expected_variables(model, example_input=None):
    """Shapes and dtypes of the model's variables, without computing anything.

    Tracing ``model.init`` takes about half a second for a 100-layer network, more than
    converting its weights, so the result is remembered: per process (equal Flax modules are
    equal dataclasses) and on disk (``cache.cache_dir('shapes')``), keyed by the model's full
    configuration, the input and a fingerprint of this package's code and of jax/flax."""
    x = example_spec(model) if example_input is None else example_input
    try:
        return dict(_remembered_variables(model, tuple(x.shape), np.dtype(x.dtype)))
    except TypeError:  # an unhashable module (e.g. holding a list): trace every time
        return _trace_variables(model, tuple(x.shape), np.dtype(x.dtype))

def _trace_variables(model, shape, dtype):
    return dict(trace_model(model, jax.ShapeDtypeStruct(shape, dtype))[0])  # the trace random init shares

@functools.lru_cache(maxsize=64)
def _remembered_variables(model, shape, dtype):
    path = _shapes_cache_path(model, shape, dtype)
    if path:
        try:
            with open(path) as f:
                return {(col, tuple(p)): jax.ShapeDtypeStruct(tuple(s), np.dtype(d)) for col, p, s, d in json.load(f)}
        except (OSError, ValueError, TypeError):  # absent or unreadable: trace (and write it anew)
            pass
    expected = _trace_variables(model, shape, dtype)
    if path:
        rows = [[col, list(p), list(v.shape), np.dtype(v.dtype).name] for (col, p), v in expected.items()]
        try:
            write_text_atomic(path, json.dumps(rows))
        except OSError:  # a read-only home: caching is an optimisation, never a failure
            pass
    return expected

def _shapes_cache_path(model, shape, dtype) -> Optional[str]:
    folder = cache_dir("shapes")
    if not folder or "0x" in repr(model):  # an object address in the config: no stable key
        return None
    key = "\n".join([repr(model), str(shape), str(dtype), _code_fingerprint()])
    return os.path.join(folder, f"{type(model).__name__}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json")

@functools.lru_cache(maxsize=1)
def _code_fingerprint() -> str:
    """Changes whenever this package's code or the jax/flax versions do."""
    import flax
    digest = hashlib.sha256(f"{jax.__version__} {flax.__version__}".encode())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the package
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()
