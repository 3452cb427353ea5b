"""A model's random init in about a second, without compiling the network.

``jax.jit(model.init)`` compiles one XLA program holding every parameter's draw (and the forward
pass that fixes the shapes): 20-100 s on a 2-core CPU for these networks, most of it spent
compiling one random-number kernel per parameter. Here ``model.init`` is only traced
(``jax.eval_shape``), while each ``self.param(name, init_fn, *args)`` and
``self.variable(col, name, init_fn, *args)`` call is recorded (``trace.trace_model``, the trace the
converter's expected shapes come from too); then each variable is drawn from the initializer its
module declared:

- constants (``jax.nn.initializers.zeros``/``ones``, ``jnp.zeros``/``ones``) with numpy;
- initializers that say what they draw (``draw_numpy``, ``layers.initializers``: timm's kaiming
  normal, its head's normal(0.01), torch's default uniform) with numpy, from a generator seeded
  by ``rng`` and the variable's path, so one variable's value does not depend on which others
  are drawn (a new head alone gets the values a whole init would give it);
- any other initializer by calling it, one jitted program per distinct call, vmapped over the
  variables sharing it;
- and a module whose declared calls cannot be replayed (an array among the arguments) by
  ``jax.jit(model.init)`` as before.

The result has ``model.init``'s tree, shapes and dtypes and each variable its declared
distribution (tests/test_random_init.py); the values differ from ``model.init``'s (other streams).
"""
import functools
import hashlib
from typing import Collection, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from .keys import flat_variables, unflatten_variables
from .trace import Declared, FlaxKey, example_spec, trace_model

# Initializers whose value is a constant, by identity: called with a key (Flax's ``self.param``)
# or without (``self.variable``, e.g. BatchNorm's running statistics).
KEYED_CONSTANTS = {jax.nn.initializers.zeros: 0, jax.nn.initializers.ones: 1}
KEYLESS_CONSTANTS = {jnp.zeros: 0, jnp.ones: 1}


def declared_variables(model, example_input=None) -> Tuple[Declared, ...]:
    """Every variable ``model.init`` creates, as its module declared it (``trace.Declared``), in
    creation order; empty when some variable is created otherwise (``put_variable``, a lifted
    scope). ``example_input``: an array or ``jax.ShapeDtypeStruct`` (default
    ``trace.example_spec``: (1, 64, 64, in_chans) float32)."""
    return trace_model(model, example_input)[1]


def _key_data(rng) -> Tuple[np.ndarray, bool]:
    """``(the key's uint32 words, whether it is a typed key)``; ``TypeError`` for anything else."""
    dtype = getattr(rng, "dtype", None)
    typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
    if not typed and dtype != np.uint32:
        raise TypeError(f"rng: expected a PRNG key (jax.random.PRNGKey(n) or jax.random.key(n)), got {rng!r}")
    return np.asarray(jax.random.key_data(rng) if typed else rng, np.uint32), typed


def _generator(seed: Tuple[int, ...], key: FlaxKey) -> np.random.Generator:
    """The numpy stream of one variable: ``rng``'s words and a digest of the variable's path."""
    digest = hashlib.sha256("/".join((key[0],) + key[1]).encode()).digest()
    return np.random.default_rng(np.random.SeedSequence(seed + tuple(np.frombuffer(digest[:16], np.uint32).tolist())))


def _draw_numpy(d: Declared, seed) -> Optional[np.ndarray]:
    """The variable drawn with numpy, or None when its initializer says nothing of what it draws."""
    constants = KEYED_CONSTANTS if d.takes_key else KEYLESS_CONSTANTS
    if not isinstance(d.value, jax.ShapeDtypeStruct):
        return None
    try:
        constant = constants.get(d.init_fn)
    except TypeError:  # an unhashable callable
        constant = None
    if constant is not None:
        return np.full(d.value.shape, constant, d.value.dtype)
    if not (d.takes_key and hasattr(d.init_fn, "draw_numpy")):
        return None
    value = d.init_fn.draw_numpy(_generator(seed, d.key), *d.args, **dict(d.kwargs))
    if value.shape != d.value.shape or value.dtype != d.value.dtype:
        raise TypeError(f"{type(d.init_fn).__name__}.draw_numpy gave {value.dtype}{list(value.shape)} where the "
                        f"initializer gives {d.value.dtype}{list(d.value.shape)} ({'/'.join(d.key[1])})")
    return value


def _draw_jax(group, seed, rng) -> list:
    """Values of variables sharing one initializer call, drawn by that initializer in one
    jitted program (vmapped over one key per variable, each from the variable's own stream)."""
    d = group[0]
    call = functools.partial(d.init_fn, *d.args, **dict(d.kwargs)) if not d.takes_key else \
        lambda k: d.init_fn(k, *d.args, **dict(d.kwargs))
    if not d.takes_key:
        value = jax.jit(call)()
        return [value] * len(group)
    data, typed = _key_data(rng)
    words = np.stack([_generator(seed, g.key).integers(0, 2 ** 32, data.shape, np.uint32) for g in group])
    keys = jax.random.wrap_key_data(words, impl=jax.random.key_impl(rng)) if typed else jnp.asarray(words)
    n = len(group)
    stacked = jax.jit(lambda ks: [jax.tree_util.tree_map(lambda a: a[i], jax.vmap(call)(ks)) for i in range(n)])
    return stacked(keys)


def _group_key(d: Declared):
    key = (d.init_fn, d.args, d.kwargs, d.takes_key)
    try:
        hash(key)
        return key
    except TypeError:
        return id(d)


def fresh_variables(model, rng: Optional[jax.Array] = None, example_input=None,
                    only: Optional[Collection[FlaxKey]] = None) -> Dict[FlaxKey, jax.Array]:
    """A random init of ``model``'s variables as a flat ``{(collection, path): array}``, each
    drawn from the initializer its module declares (module docstring); ``only``: just these keys.
    ``rng``: a PRNG key (default ``jax.random.PRNGKey(0)``); the same key gives the same values.
    ``TypeError`` for an ``rng`` that is not a PRNG key."""
    rng = jax.random.PRNGKey(0) if rng is None else rng
    _key_data(rng)
    declared = declared_variables(model, example_input)
    if not declared or not all(d.replayable for d in declared):  # as before: compile the whole init
        spec = example_spec(model) if example_input is None else example_input
        full = flat_variables(jax.jit(model.init)({"params": rng, "dropout": rng}, jnp.zeros(spec.shape, spec.dtype)))
        return {k: v for k, v in full.items() if only is None or k in only}
    seed = tuple(_key_data(rng)[0].ravel().tolist())
    arrays, groups = {}, {}
    for d in declared:
        if only is not None and d.key not in only:
            continue
        value = _draw_numpy(d, seed)
        if value is None:
            groups.setdefault(_group_key(d), []).append(d)
        else:
            arrays[d.key] = value
    out = dict(zip(arrays, jax.device_put(list(arrays.values()))))
    for group in groups.values():
        out.update(zip((d.key for d in group), _draw_jax(group, seed, rng)))
    return out


def init_variables(model, rng: Optional[jax.Array] = None, example_input=None) -> dict:
    """A random init of ``model``'s variables, ``{'params': ..., 'batch_stats': ...}`` as
    ``model.init`` returns them (same tree, shapes, dtypes and per-variable distributions), in
    about a second rather than the minute ``jax.jit(model.init)`` compiles for: see the module
    docstring. ``rng``: a PRNG key (default ``jax.random.PRNGKey(0)``), deterministic."""
    return unflatten_variables(fresh_variables(model, rng, example_input))
