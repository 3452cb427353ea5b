"""Data parallelism over every device of every process: the batch is sharded along one mesh
axis, parameters and optimizer state are replicated.

One helper for one device, many devices (TPU cores, GPUs, or CPU devices from
``XLA_FLAGS=--xla_force_host_platform_device_count=N``) and many hosts under
``jax.distributed``: each process hands in its own slice of the batch (its images), the
jitted function sees the global batch, and each process gets back its own rows.

    initialize()                                 # jax.distributed when launched as several processes
    dp = DataParallel()                          # all devices of all processes
    variables = dp.replicate(variables)
    logits = dp.predict(model, variables, local_images)   # numpy: this process's rows
    step = dp.jit_step(train_step)               # state replicated, batch sharded

Under ``jax.distributed`` every process runs the same program: the same calls in the same
order (each one is a collective), each with its own slice of the data. Processes may hand in
slices of different lengths (an empty one included); every process should have the same
number of devices.
"""
import functools
import os
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .xla import compiler_options as default_compiler_options, jit, jit_with

DATA_AXIS = "data"
# The launcher's settings for `initialize` (JAX itself reads only JAX_COORDINATOR_ADDRESS).
ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


def _cluster_detected() -> bool:
    """Whether JAX's own auto-detection recognises a multi-process launcher (a Cloud TPU VM,
    Slurm, Open MPI, Kubernetes...): what ``jax.distributed.initialize()`` without arguments
    relies on. JAX has no public test for it, hence the guarded private import."""
    try:
        from jax._src.clusters import ClusterEnv
    except ImportError:  # pragma: no cover - a JAX without the module: explicit settings only
        return False
    return any(not env.opt_in_only_method and env.is_env_present() for env in ClusterEnv._cluster_types)


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, **kwargs) -> bool:
    """Start ``jax.distributed`` when this is one of several processes; a no-op otherwise.
    Call it first, before anything touches a device. Returns whether several processes run.

    The settings come from the arguments, else from ``JAX_COORDINATOR_ADDRESS`` (host:port of
    process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; with none of them set, from
    JAX's cluster auto-detection (TPU pods, Slurm, Open MPI), and on a plain machine nothing
    is started. One process (``JAX_NUM_PROCESSES=1``) starts nothing either, and a second
    call does nothing. ``kwargs`` go to ``jax.distributed.initialize`` (e.g.
    ``local_device_ids``, ``initialization_timeout``). On CPU the processes' collectives run
    over gloo (JAX's default ``jax_cpu_collectives_implementation``)."""
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR)
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if num_processes == 1:
        return False
    if (coordinator_address, num_processes, process_id) == (None, None, None) and not _cluster_detected():
        return False
    # what is still unset, JAX detects from the cluster or refuses with its own clear error
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, **kwargs)
    return jax.process_count() > 1


def _env_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected an integer") from None


def data_mesh(devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A 1-D mesh named ``'data'`` over ``devices`` (default: every device of every process,
    each process's devices next to each other, processes in order: then the global batch is
    the processes' slices in process order)."""
    if devices is None:
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(list(devices)), (DATA_AXIS,))


class DataParallel:
    """Batch-sharded, parameter-replicated execution over ``mesh`` (default: all devices)."""

    def __init__(self, mesh: Optional[Mesh] = None):
        self.mesh = data_mesh() if mesh is None else mesh
        processes = {d.process_index for d in self.mesh.devices.flat}
        if 1 < len(processes) < jax.process_count():
            raise ValueError(f"the mesh spans processes {sorted(processes)} of {jax.process_count()}: "
                             "expected this process's devices only, or devices of every process")
        self.multi_process = len(processes) > 1
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    @property
    def local_devices(self) -> int:
        """Devices of this process: a process's slice of a batch must split evenly over them."""
        return len([d for d in self.mesh.devices.flat if d.process_index == jax.process_index()])

    def pad(self, local_batch: np.ndarray, size: Optional[int] = None) -> Tuple[np.ndarray, int]:
        """``local_batch`` padded (repeating its last row; zeros for an empty one) to ``size``
        rows, rounded up to a multiple of this process's devices (default: its own length
        rounded up), and its true length. An empty batch needs a ``size`` (and its shape,
        ``(0, H, W, C)``)."""
        local_batch = np.asarray(local_batch)
        n = len(local_batch)
        if size is None and n == 0:
            raise ValueError("empty batch: expected at least one example")
        if size is not None and size < n:
            raise ValueError(f"a batch of {n} examples does not fit in {size} rows")
        target = _round_up(max(n, size or 0), self.local_devices)
        if target > n:
            fill = local_batch[-1:] if n else np.zeros((1, *local_batch.shape[1:]), local_batch.dtype)
            local_batch = np.concatenate([local_batch, np.repeat(fill, target - n, axis=0)])
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
        ``jax.distributed`` every process must pass equal values. Arrays already replicated
        over this mesh are kept as they are."""
        def put(x):
            if isinstance(x, jax.Array) and x.sharding == self.replicated:
                return x
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, self.replicated, lambda index: x[index])
        return jax.tree_util.tree_map(put, tree)

    def gather(self, tree: Any) -> Any:
        """Global arrays -> numpy on every process (the whole global batch). Replicated
        arrays (a train state, metrics) are read locally, without a collective."""
        def get(x):
            if not isinstance(x, jax.Array) or x.is_fully_addressable:
                return np.asarray(x)
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return multihost_utils.process_allgather(x, tiled=True)
        return jax.tree_util.tree_map(get, tree)

    def jit_step(self, step_fn: Callable, donate_state: bool = True,
                 compiler_options: Optional[dict] = None) -> Callable:
        """``step_fn(state, batch, rng) -> (state, metrics)`` jitted with the state and the RNG
        key replicated and the batch sharded; the new state and the metrics (means over the
        global batch) come back replicated. ``compiler_options``: XLA's (``{}``: its defaults);
        default ``rj.compiler_options()``, as inference.

        Any fp32 training step is only as exact as its ReLU decisions: an input within fp32
        rounding of zero goes either way depending on the summation order, and one such
        decision moves a step by up to ~1e-2 of the update (timm's own fp32 step as much;
        docs/exactness.md). Under these options and under XLA's defaults a step is equally
        exact, with the same drop path decisions."""
        options = default_compiler_options() if compiler_options is None else compiler_options
        return jit_with(options, step_fn, in_shardings=(self.replicated, self.batch_sharding, self.replicated),
                        out_shardings=(self.replicated, self.replicated),
                        donate_argnums=(0,) if donate_state else ())

    def predict_fn(self, model, method: Optional[str] = None, **kwargs) -> Callable:
        """A jitted ``f(variables, images)`` (global arrays) running ``model.apply`` in eval
        mode with the batch sharded, cached per (mesh, model, method, kwargs) for the process:
        fine-tuning's validation, ``validate`` and ``predict`` in one process compile a batch
        shape once."""
        return _predict_fn(self.mesh, model, method, tuple(sorted(kwargs.items())))

    def _forward(self, model, variables, local_images, method, pad_to, kwargs):
        """The sharded forward of every process's slice, each padded to the same length:
        (global output, each process's true length, the padded length of a slice)."""
        local_images = np.asarray(local_images)
        counts = self.process_counts(len(local_images))
        padded, _ = self.pad(local_images, max(max(counts), pad_to or 0))
        out = self.predict_fn(model, method, **kwargs)(variables, self.shard(padded))
        return out, counts, len(padded)

    def process_counts(self, n: int) -> Tuple[int, ...]:
        """Every process's ``n``, in process order (a collective when the mesh spans processes)."""
        return tuple(int(c) for c in self.allgather(np.int32(n)))

    def allgather(self, x: np.ndarray) -> np.ndarray:
        """Every process's ``x`` (of one shape on all), stacked in process order: ``(P, ...)``
        (a collective when the mesh spans processes; row 0 is process 0's: a broadcast)."""
        x = np.asarray(x)
        if not self.multi_process:
            return x[None]
        return np.asarray(multihost_utils.process_allgather(x))

    def predict(self, model, variables, local_images: np.ndarray, method: Optional[str] = None,
                pad_to: Optional[int] = None, **kwargs) -> np.ndarray:
        """``model.apply(variables, images)`` over the global batch made of every process's
        ``local_images`` (any length, empty included, ``(0, H, W, C)``; padded here to the
        longest slice, or to ``pad_to`` rows so that batches of one shape compile once).
        Returns this process's rows, as numpy. ``variables`` should come from ``replicate``
        (they are placed here otherwise)."""
        out, counts, _ = self._forward(model, variables, local_images, method, pad_to, kwargs)
        local = multihost_utils.global_array_to_host_local_array(out, self.mesh, PartitionSpec(DATA_AXIS))
        return np.asarray(local)[:counts[jax.process_index() if self.multi_process else 0]]

    def predict_all(self, model, variables, local_images: np.ndarray, method: Optional[str] = None,
                    pad_to: Optional[int] = None, **kwargs) -> np.ndarray:
        """As ``predict``, but every process gets every process's rows, in process order (the
        outputs are gathered; the images stay where they were decoded)."""
        out, counts, size = self._forward(model, variables, local_images, method, pad_to, kwargs)
        rows = self.gather(out)
        return np.concatenate([rows[p * size:p * size + c] for p, c in enumerate(counts)])


PREDICT_FNS_KEPT = 16  # jitted forwards kept per process (each holds its compiled executables)


@functools.lru_cache(maxsize=PREDICT_FNS_KEPT)
def _predict_fn(mesh: Mesh, model, method: Optional[str], kwargs: tuple) -> Callable:
    batch = NamedSharding(mesh, PartitionSpec(DATA_AXIS))

    def apply(variables, x):
        return model.apply(variables, x, method=method, **dict(kwargs))
    return jit(apply, in_shardings=(NamedSharding(mesh, PartitionSpec()), batch), out_shardings=batch)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
