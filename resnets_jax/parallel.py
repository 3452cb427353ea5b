"""Data parallelism over every device of every process: the batch is sharded along one mesh
axis, parameters and optimizer state are replicated.

One helper for one device, many devices (TPU cores, GPUs, or CPU devices from
``XLA_FLAGS=--xla_force_host_platform_device_count=N``) and many hosts under
``jax.distributed``: each process hands in its own slice of the batch (its images), the
jitted function sees the global batch, and each process gets back its own rows.

    dp = DataParallel()                          # all devices of all processes
    variables = dp.replicate(variables)
    logits = dp.predict(model, variables, local_images)   # numpy: this process's rows
    step = dp.jit_step(train_step)               # state replicated, batch sharded
"""
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A 1-D mesh named ``'data'`` over ``devices`` (default: every device of every process)."""
    return Mesh(np.asarray(jax.devices() if devices is None else list(devices)), (DATA_AXIS,))


class DataParallel:
    """Batch-sharded, parameter-replicated execution over ``mesh`` (default: all devices)."""

    def __init__(self, mesh: Optional[Mesh] = None):
        self.mesh = data_mesh() if mesh is None else mesh
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self._jitted = {}

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    @property
    def local_devices(self) -> int:
        """Devices of this process: a process's slice of a batch must split evenly over them."""
        return len([d for d in self.mesh.devices.flat if d.process_index == jax.process_index()])

    def pad(self, local_batch: np.ndarray) -> Tuple[np.ndarray, int]:
        """``local_batch`` padded (repeating its last row) to a multiple of this process's
        devices, and its true length; an empty batch is refused."""
        n = len(local_batch)
        if n == 0:
            raise ValueError("empty batch: expected at least one example")
        extra = -n % self.local_devices
        if extra:
            local_batch = np.concatenate([local_batch, np.repeat(local_batch[-1:], extra, axis=0)])
        return local_batch, n

    def shard(self, local_batch: Any) -> Any:
        """This process's slice of the batch (a pytree of arrays with a leading batch axis, a
        multiple of ``local_devices`` long) -> global arrays sharded along the batch axis; the
        global batch is the processes' slices in process order."""
        def put(x):
            x = np.asarray(x)
            if x.shape[0] % self.local_devices:
                raise ValueError(f"a process's batch must split evenly over its {self.local_devices} devices; "
                                 f"got {x.shape[0]} examples (DataParallel.pad pads it)")
            return jax.make_array_from_process_local_data(self.batch_sharding, x)
        return jax.tree_util.tree_map(put, local_batch)

    def replicate(self, tree: Any) -> Any:
        """The same pytree (parameters, batch stats, optimizer state) on every device. Under
        ``jax.distributed`` every process must pass equal values."""
        def put(x):
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, self.replicated, lambda index: x[index])
        return jax.tree_util.tree_map(put, tree)

    def gather(self, tree: Any) -> Any:
        """Global arrays -> numpy on every process (the whole global batch)."""
        if jax.process_count() == 1:
            return jax.tree_util.tree_map(np.asarray, tree)
        return multihost_utils.process_allgather(tree, tiled=True)

    def jit_step(self, step_fn: Callable, donate_state: bool = True) -> Callable:
        """``step_fn(state, batch, rng) -> (state, metrics)`` jitted with the state and the RNG
        key replicated and the batch sharded; the new state and the metrics (means over the
        global batch) come back replicated."""
        return jax.jit(step_fn, in_shardings=(self.replicated, self.batch_sharding, self.replicated),
                       out_shardings=(self.replicated, self.replicated),
                       donate_argnums=(0,) if donate_state else ())

    def predict_fn(self, model, method: Optional[str] = None, **kwargs) -> Callable:
        """A jitted ``f(variables, images)`` (global arrays) running ``model.apply`` in eval
        mode with the batch sharded, cached per (model, method, kwargs)."""
        key = (model, method, tuple(sorted(kwargs.items())))
        if key not in self._jitted:
            def apply(variables, x):
                return model.apply(variables, x, method=method, **kwargs)
            self._jitted[key] = jax.jit(apply, in_shardings=(self.replicated, self.batch_sharding),
                                        out_shardings=self.batch_sharding)
        return self._jitted[key]

    def predict(self, model, variables, local_images: np.ndarray, method: Optional[str] = None,
                **kwargs) -> np.ndarray:
        """``model.apply(variables, images)`` over the global batch made of every process's
        ``local_images`` (any length; padded here). Returns this process's rows, as numpy.
        ``variables`` should come from ``replicate`` (they are placed here otherwise)."""
        padded, n = self.pad(np.asarray(local_images))
        out = self.predict_fn(model, method, **kwargs)(variables, self.shard(padded))
        local = multihost_utils.global_array_to_host_local_array(out, self.mesh, PartitionSpec(DATA_AXIS))
        return np.asarray(local)[:n]
