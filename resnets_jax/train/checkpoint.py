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

A step folder can be damaged after Orbax finished it (a copy cut short, a truncated file, a stray
folder that never was a checkpoint): ``step_problem`` says why a step is not intact,
``read_train_checkpoint`` falls back to the newest intact step with a warning, and
``resumable_step`` (for a resumed run) also sets the damaged folders aside as ``<step>.damaged``.
"""
import json
import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np
from flax import serialization

from .._optional import optional_import

TRAIN_STATE = "fine-tuning's train state (resnets_jax.train.checkpoint)"  # what needs orbax and grain
ocp = optional_import("orbax.checkpoint", TRAIN_STATE)
ocm = optional_import("orbax.checkpoint.checkpoint_managers", TRAIN_STATE)

BEST_METRICS = {"val_acc": "max", "val_loss": "min"}  # what the best checkpoint is best at
# Orbax marks a finished step with this file (in the step and in each item; versions before it
# wrote only the commit time into the step's metadata file, so that counts as a marker too)
COMMIT_MARKER = "commit_success.txt"
STEP_METADATA = "_CHECKPOINT_METADATA"
ITEMS = ("state", "meta")  # in every step; "data" (the Grain iterators) when saved with one
DAMAGED_SUFFIX = ".damaged"  # a damaged step folder set aside by a resume: a name Orbax does not take for a step


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

    def data_state(self, step: int) -> Dict[str, Any]:
        """This process's saved Grain iterator state of ``step`` (the JSON that
        ``grain.checkpoint.CheckpointSave`` wrote), to translate before ``set_state``."""
        path = os.path.join(self.directory, str(step), "data",
                            f"process_{jax.process_index()}-of-{jax.process_count()}.json")
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read this process's input position ({e}); a run of "
                             f"{jax.process_count()} process(es) resumes checkpoints of as many") from None

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


def _state_item(step_dir: str) -> str:
    """A step's ``state`` item, as an absolute path: Orbax's metadata reader returns None for a
    relative one (orbax-checkpoint 0.12.8), which would make every step of ``-o run`` look damaged."""
    return os.path.join(os.path.abspath(step_dir), "state")


def _saved_state(step_dir: str):
    """The metadata tree (shapes, dtypes) of a step's ``state`` item."""
    with ocp.PyTreeCheckpointer() as ckptr:
        metadata = ckptr.metadata(_state_item(step_dir))
    if getattr(metadata, "item_metadata", None) is None:  # Orbax returns None for what it cannot read
        raise ValueError("no readable array metadata (files missing or cut short)")
    return metadata.item_metadata.tree


def _read_state(step_dir: str):
    """A step's ``state`` item as nested dicts of numpy arrays (reads every array)."""
    restore_args = jax.tree_util.tree_map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), _saved_state(step_dir))
    with ocp.PyTreeCheckpointer() as ckptr:
        return ckptr.restore(_state_item(step_dir), args=ocp.args.PyTreeRestore(restore_args=restore_args))


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def step_problem(step_dir: str, read_arrays: bool = False) -> Optional[str]:
    """Why ``step_dir`` (``<checkpoints>/<step>``) is not an intact finished checkpoint, or
    ``None``: an empty folder, no commit marker (a stray or unfinished folder), a missing item
    (a copy cut short), a ``meta`` / ``data`` / ``state`` metadata file that does not parse (a
    truncated file); ``read_arrays``: also every array of ``state`` read back (a truncated or
    missing array file)."""
    if not os.path.isdir(step_dir):
        return "not a folder"
    names = set(os.listdir(step_dir))
    if not names:
        return "an empty folder"
    if COMMIT_MARKER not in names:
        try:
            committed = bool(_read_json(os.path.join(step_dir, STEP_METADATA)).get("commit_timestamp_nsecs"))
        except (OSError, ValueError, AttributeError):
            committed = False
        if not committed:
            return f"no commit marker ({COMMIT_MARKER}): a stray folder or a step Orbax never finished"
    missing = [item for item in ITEMS if not os.path.isdir(os.path.join(step_dir, item))]
    if missing:
        return f"no {' or '.join(missing)} item (a copy cut short?)"
    data_dir = os.path.join(step_dir, "data")
    files = [os.path.join(step_dir, "meta", "metadata")]
    files += [os.path.join(data_dir, f) for f in sorted(os.listdir(data_dir)) if f.startswith("process_")] \
        if os.path.isdir(data_dir) else []  # Grain's iterator of each process
    for path in files:
        try:
            _read_json(path)
        except (OSError, ValueError) as e:
            return f"{os.path.relpath(path, step_dir)} unreadable ({_first_line(e)})"
    try:  # Orbax and TensorStore raise ValueError, OSError, AttributeError or a bare Exception on damaged files
        _saved_state(step_dir)
        if read_arrays:
            _read_state(step_dir)
    except Exception as e:  # noqa: BLE001  (whatever the reader's error, the step is unreadable)
        return f"state unreadable ({_first_line(e)})"
    return None


def _step_dirs(directory: str) -> List[int]:
    """The step folders' steps, newest first."""
    return sorted((int(d) for d in os.listdir(directory) if d.isdigit()), reverse=True) \
        if os.path.isdir(directory) else []


def _damage_report(directory: str, damaged: Dict[int, str]) -> str:
    return "; ".join(f"{directory}/{s}: {why}" for s, why in sorted(damaged.items(), reverse=True))


def step_meta(directory: str, step: int) -> Dict[str, Any]:
    """The ``meta`` dict of ``directory/<step>`` (read as JSON, without Orbax's manager)."""
    return _read_json(os.path.join(directory, str(step), "meta", "metadata"))


def resumable_step(directory: str, log: Callable[[str], None], set_aside: bool = True,
                   check: Optional[Callable[[int], None]] = None) -> int:
    """The newest intact step of ``directory`` (every array read back), for a resumed run;
    ``check(step)`` may refuse it (raising) before anything changes. Each damaged step folder is
    named in a warning through ``log`` and, with ``set_aside``, renamed ``<step>.damaged`` (so
    that the run can write that step again; Orbax ignores the name); intact steps are left
    alone. Raises ``ValueError`` (changing nothing) when no step is intact."""
    damaged, found = {}, None
    for step in _step_dirs(directory):
        problem = step_problem(os.path.join(directory, str(step)), read_arrays=found is None)
        if problem:
            damaged[step] = problem
        elif found is None:
            found = step
    if found is None:
        raise ValueError(f"no intact checkpoint to resume in {directory}: {_damage_report(directory, damaged)}")
    if check is not None:
        check(found)
    for step, why in sorted(damaged.items(), reverse=True):
        step_dir = os.path.join(directory, str(step))
        aside, n = step_dir + DAMAGED_SUFFIX, 1
        while os.path.exists(aside):
            n += 1
            aside = f"{step_dir}{DAMAGED_SUFFIX}{n}"
        if set_aside:
            os.rename(step_dir, aside)
        log(f"warning: checkpoint {step_dir} is damaged ({why})"
            + (f"; set aside as {os.path.basename(aside)}" if set_aside else "")
            + (f"; resuming from step {found}" if step > found else ""))
    return found


def read_train_checkpoint(directory: str, step: Optional[int] = None, best: bool = False) -> Dict[str, Any]:
    """``{"state": nested dicts of numpy arrays, "meta": dict, "step": int}`` of checkpoint ``step``
    of ``directory`` (default: the latest; ``best``: the kept step with the best metric, by the
    ``best_metric`` its ``meta`` names), without a model or devices (any host, any device
    count). Damaged steps (``step_problem``) are skipped with a ``UserWarning`` naming each;
    nothing is changed on disk. Raises ``ValueError`` when there is no intact step, or when
    ``step`` is given and damaged (naming the step and what is wrong)."""
    directory = os.path.abspath(directory)
    steps = _step_dirs(directory)
    if not steps:
        raise ValueError(f"{directory}: no finished checkpoint")
    if step is not None and int(step) not in steps:
        raise ValueError(f"{directory}: no checkpoint step {step} (steps: {', '.join(map(str, sorted(steps)))})")
    problems = {s: step_problem(os.path.join(directory, str(s))) for s in steps}
    intact = [s for s in steps if problems[s] is None]
    damaged = {s: why for s, why in problems.items() if why}
    if step is not None:
        candidates = [int(step)] if int(step) in intact else []
    else:
        candidates = intact
        metric = step_meta(directory, intact[0]).get("best_metric") if intact and best else None
        if metric:
            with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True)) as mgr:
                metrics = {s: mgr.metrics(s) or {} for s in intact}
            sign = 1.0 if BEST_METRICS[metric] == "max" else -1.0
            candidates = sorted(intact, key=lambda s: (metric in metrics[s], sign * metrics[s].get(metric, 0.0), s),
                                reverse=True)
    for s in candidates:
        step_dir = os.path.join(directory, str(s))
        try:
            state = _read_state(step_dir)
        except Exception as e:  # noqa: BLE001  (as step_problem: any reader error means an unreadable step)
            damaged[s] = f"state unreadable ({_first_line(e)})"
            continue
        for d in sorted(damaged, reverse=True) if step is None else ():
            if best or d > s:  # a damaged step that could have been the one asked for
                warnings.warn(f"checkpoint {directory}/{d} is damaged ({damaged[d]}); read step {s}", stacklevel=2)
        return {"state": state, "meta": step_meta(directory, s), "step": s}
    if step is not None:
        raise ValueError(f"checkpoint {directory}/{step} is damaged: {damaged[int(step)]}")
    raise ValueError(f"no intact checkpoint in {directory}: {_damage_report(directory, damaged)}")
