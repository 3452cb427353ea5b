"""Fine-tuning's train state in Orbax: one ``orbax.checkpoint.CheckpointManager`` step directory
per checkpoint, holding the whole ``TrainState`` (``state``: parameters, running statistics,
optimizer state, step), the Grain iterator of every process (``data``: one JSON file per process)
and the run's bookkeeping (``meta``: RNG key, position, running metric sums, history, settings).

Orbax writes each step to a temporary directory and renames it when every item and process is
done (atomic: a killed run leaves the previous checkpoints whole), copies the arrays off the
devices and writes them in the background (``async_save``), and, on many hosts, has every process
write its own part. The manager keeps the ``keep`` latest checkpoints and the best one by a
validation metric. safetensors stays the format for exchanging weights (``export_timm_checkpoint``).

    ckpts = TrainCheckpoints("runs/flowers/checkpoints", keep=2, best_metric="val_acc")
    ckpts.save(step, state, meta={...}, data_iterator=it, metrics={"val_acc": 0.9})
    state, meta = ckpts.restore(ckpts.latest_step(), abstract_state, data_iterator=it)
"""
import os
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
from flax import serialization

from .._optional import optional_import

TRAIN_STATE = "fine-tuning's train state (resnets_jax.train.checkpoint)"  # what needs orbax and grain
ocp = optional_import("orbax.checkpoint", TRAIN_STATE)
ocm = optional_import("orbax.checkpoint.checkpoint_managers", TRAIN_STATE)

BEST_METRICS = {"val_acc": "max", "val_loss": "min"}  # what the best checkpoint is best at


class TrainCheckpoints:
    """``CheckpointManager`` over ``directory`` for a ``TrainState`` (any pytree of arrays), a
    JSON-able ``meta`` dict and, optionally, a Grain ``DatasetIterator``. Kept: the ``keep`` latest
    steps and the step with the best ``metrics[best_metric]`` (``'val_acc'``: highest,
    ``'val_loss'``: lowest; ties: the later step); steps saved without metrics only count as
    latest. ``async_save`` writes arrays in the background (``wait()`` or the next save waits).
    Every process of a multi-host run must make the same calls."""

    def __init__(self, directory: str, keep: int = 2, best_metric: Optional[str] = "val_acc", async_save: bool = True):
        self.best_metric = best_metric
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (the latest checkpoint resumes the run), got {keep}")
        if best_metric is not None and best_metric not in BEST_METRICS:
            raise ValueError(f"Unknown best_metric {best_metric!r}: expected one of {', '.join(BEST_METRICS)}")
        policies = [ocm.LatestN(n=keep)]
        best_fn = None
        if best_metric is not None:
            sign = 1.0 if BEST_METRICS[best_metric] == "max" else -1.0
            best_fn = lambda m: sign * float(m[best_metric])  # noqa: E731  (higher is better)
            policies.append(ocm.BestN(get_metric_fn=best_fn, n=1, keep_checkpoints_without_metrics=False))
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(
                best_fn=best_fn, best_mode="max", preservation_policy=ocm.AnyPreservationPolicy(policies),
                enable_async_checkpointing=async_save, create=True,
                cleanup_tmp_directories=True))  # what a killed run left half-written

    def all_steps(self):
        return list(self.manager.all_steps())

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def best_step(self) -> Optional[int]:
        """The kept step with the best metric (the latest step when no step has metrics)."""
        return self.manager.best_step()

    def save(self, step: int, state: Any, *, meta: Dict[str, Any], data_iterator=None,
             metrics: Optional[Dict[str, float]] = None) -> None:
        """Checkpoint ``state`` (arrays: device arrays are copied before this returns) as ``step``.
        The iterator's position is read now, synchronously."""
        # a copy the checkpoint owns: on CPU the host view Orbax writes in the background may alias the
        # device buffers, which the next (donating) train step would overwrite
        state = jax.tree_util.tree_map(lambda x: x.copy() if isinstance(x, jax.Array) else np.asarray(x), state)
        items = {"state": ocp.args.StandardSave(serialization.to_state_dict(state)),
                 "meta": ocp.args.JsonSave({**meta, "best_metric": self.best_metric})}
        if data_iterator is not None:
            grain = optional_import("grain", TRAIN_STATE)
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        self.manager.save(int(step), args=ocp.args.Composite(**items),
                          metrics=None if metrics is None else {k: float(v) for k, v in metrics.items()})

    def restore(self, step: int, target: Any, data_iterator=None) -> Tuple[Any, Dict[str, Any]]:
        """``(state, meta)`` of ``step``, the state in ``target``'s structure and placement
        (``target``: arrays or ``jax.ShapeDtypeStruct``s with shardings); ``data_iterator`` is moved
        to the saved position. Raises ``ValueError`` when the shapes differ, naming them."""
        abstract = jax.tree_util.tree_map(_abstract, serialization.to_state_dict(target))
        _check_shapes(self.directory, step, _saved_state(os.path.join(self.directory, str(step))), abstract)
        items = {"state": ocp.args.StandardRestore(abstract), "meta": ocp.args.JsonRestore()}
        if data_iterator is not None:
            grain = optional_import("grain", TRAIN_STATE)
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        out = self.manager.restore(int(step), args=ocp.args.Composite(**items))
        return serialization.from_state_dict(target, out["state"]), out["meta"]

    def meta(self, step: int) -> Dict[str, Any]:
        """The ``meta`` dict of ``step`` alone (to check a run's settings before restoring)."""
        return self.manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _abstract(x):
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    sharding = x.sharding if isinstance(x, jax.Array) else None
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


def _check_shapes(directory: str, step: int, saved: Any, abstract: Any) -> None:
    flat_saved = {jax.tree_util.keystr(p): tuple(getattr(v, "shape", ())) for p, v in
                  jax.tree_util.tree_flatten_with_path(saved)[0]}
    flat_target = {jax.tree_util.keystr(p): tuple(v.shape) for p, v in
                   jax.tree_util.tree_flatten_with_path(abstract)[0]}
    bad = [f"{k}: checkpoint {flat_saved.get(k)} vs model {v}" for k, v in flat_target.items()
           if flat_saved.get(k) != v]
    bad += [f"{k}: only in the checkpoint" for k in flat_saved.keys() - flat_target.keys()]
    if bad:
        raise ValueError(f"{directory}/{step}: the training state does not fit the model: "
                         + "; ".join(sorted(bad)[:5]))


def _saved_state(step_dir: str):
    """The metadata tree (shapes, dtypes) of a step's ``state`` item."""
    with ocp.PyTreeCheckpointer() as ckptr:
        return ckptr.metadata(os.path.join(step_dir, "state")).item_metadata.tree


def read_train_checkpoint(directory: str, step: Optional[int] = None, best: bool = False) -> Dict[str, Any]:
    """``{"state": nested dicts of numpy arrays, "meta": dict, "step": int}`` of checkpoint ``step``
    of ``directory`` (default: the latest; ``best``: the kept step with the best metric, by the
    ``best_metric`` its ``meta`` names), without a model or devices (any host, any device
    count). Raises ``ValueError`` when there is none."""
    directory = os.path.abspath(directory)
    steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []
    if not steps:
        raise ValueError(f"{directory}: no finished checkpoint")
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True)) as mgr:
        def meta_of(s):
            return mgr.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if step is None:
            step = steps[-1]
            metric = meta_of(step).get("best_metric")
            scored = [(mgr.metrics(s), s) for s in steps] if best and metric else []
            scored = [(m[metric], s) for m, s in scored if m and metric in m]
            if scored:
                sign = 1.0 if BEST_METRICS[metric] == "max" else -1.0
                step = max(scored, key=lambda ms: (sign * ms[0], ms[1]))[1]
        meta = meta_of(step)
    step_dir = os.path.join(directory, str(step))
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), _saved_state(step_dir))
    with ocp.PyTreeCheckpointer() as ckptr:
        state = ckptr.restore(os.path.join(step_dir, "state"), args=ocp.args.PyTreeRestore(restore_args=restore_args))
    return {"state": state, "meta": meta, "step": step}
