"""One abstract trace of ``model.init`` per model configuration and process (nothing is
computed or compiled): the shapes and dtypes of the model's variables (``shapes``, the target of
every conversion) and each variable as its module declared it (``random_init`` draws from that).

While ``jax.eval_shape(model.init, ...)`` traces, Flax's ``Module.param`` and ``Module.variable``
record each ``self.param(name, init_fn, *args)`` / ``self.variable(col, name, init_fn, *args)``
call that creates a variable: the initializer and its arguments, by structure, whatever the
variable is called.
"""
import contextlib
import dataclasses
import functools
import threading
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from .keys import flat_variables

EXAMPLE_SIZE = 64  # px: the smallest input every architecture (stride 32, 7x7 stems) traces at

FlaxKey = Tuple[str, Tuple[str, ...]]  # (collection, module path + name)


def example_spec(model, input_size: int = EXAMPLE_SIZE):
    return jax.ShapeDtypeStruct((1, input_size, input_size, model.in_chans), jnp.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class Declared:
    """One variable as its module declared it: ``init_fn(key, *args, **kwargs)`` for a parameter
    (``takes_key``), ``init_fn(*args, **kwargs)`` for another collection's variable; ``value``:
    the traced result's shape and dtype (``jax.ShapeDtypeStruct``, or a tree of them)."""
    key: FlaxKey
    init_fn: Callable
    args: tuple
    kwargs: tuple  # sorted (name, value) pairs
    takes_key: bool
    value: Any

    @property
    def replayable(self) -> bool:
        """Whether calling ``init_fn`` again with the recorded arguments is possible (no array among them)."""
        return not any(isinstance(a, (jax.Array, np.ndarray)) for a in jax.tree_util.tree_leaves((self.args, self.kwargs)))


_recording_lock = threading.Lock()
_active = threading.local()  # the list being recorded into, in the recording thread only


def _recorded(col: str, path: tuple, init_fn: Callable, takes_key: bool) -> Callable:
    def init(*args, **kwargs):
        value = init_fn(*args, **kwargs)
        _active.records.append(Declared((col, path), init_fn, args[1:] if takes_key else args,
                                        tuple(sorted(kwargs.items())), takes_key,
                                        jax.tree_util.tree_map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), value)))
        return value
    return init


@contextlib.contextmanager
def _recording(records: list):
    """Flax's ``Module.param``/``Module.variable`` record their init calls into ``records`` (in
    this thread; other threads pass straight through) while the context is open."""
    with _recording_lock:
        param, variable = nn.Module.param, nn.Module.variable

        def recording_param(self, name, init_fn, *init_args, **kwargs):
            if getattr(_active, "records", None) is not None:
                init_fn = _recorded("params", self.path + (name,), init_fn, True)
            return param(self, name, init_fn, *init_args, **kwargs)

        def recording_variable(self, col, name, init_fn=None, *init_args, **kwargs):
            if init_fn is not None and getattr(_active, "records", None) is not None:
                init_fn = _recorded(col, self.path + (name,), init_fn, False)
            return variable(self, col, name, init_fn, *init_args, **kwargs)

        nn.Module.param, nn.Module.variable = recording_param, recording_variable
        _active.records = records
        try:
            yield
        finally:
            _active.records = None
            nn.Module.param, nn.Module.variable = param, variable


def trace_model(model, example_input=None) -> Tuple[Dict[FlaxKey, jax.ShapeDtypeStruct], Tuple[Declared, ...]]:
    """``(variables, declared)`` of ``model``: ``{(collection, path): jax.ShapeDtypeStruct}`` as
    ``model.init`` would make them, and each variable as its module declared it (``Declared``, in
    creation order; empty when some variable is created otherwise, e.g. ``put_variable``): one
    abstract trace of ``model.init`` (about half a second for a 100-layer network), remembered per
    process for hashable modules (equal Flax modules are equal dataclasses). ``example_input``: an
    array or ``jax.ShapeDtypeStruct`` (default ``example_spec``: (1, 64, 64, in_chans) float32)."""
    x = example_spec(model) if example_input is None else example_input
    try:
        return _remembered_trace(model, tuple(x.shape), np.dtype(x.dtype))
    except TypeError:  # an unhashable module (e.g. holding a list): trace every time
        return _trace(model, tuple(x.shape), np.dtype(x.dtype))


def _trace(model, shape, dtype):
    records: list = []
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}
    with _recording(records):
        traced = flat_variables(jax.eval_shape(model.init, rngs, jax.ShapeDtypeStruct(shape, dtype)))
    if {d.key for d in records} != set(traced) or len(records) != len(traced):
        records = []  # a variable created otherwise (put_variable, a lifted scope): not replayable
    return traced, tuple(records)


_remembered_trace = functools.lru_cache(maxsize=64)(_trace)
