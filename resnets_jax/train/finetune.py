"""Fine-tuning on a folder of images: a new classifier for the folder's classes, optax (SGD with
Nesterov momentum or AdamW, warmup + cosine, weight decay on kernels only), label smoothing,
optional bf16 compute and gradient accumulation, every device (``DataParallel``: batch sharded,
state replicated), per-epoch metrics, checkpoints that resume exactly, and export to timm.

    cfg = FinetuneConfig("resnetv2_50.a1h_in1k", "flowers/", "runs/flowers", pretrained=True, epochs=10)
    result = finetune(cfg)                   # result.model, result.variables, result.history
    export_timm_checkpoint(result.model, result.variables, "flowers.safetensors")
    # timm.create_model("resnetv2_50", num_classes=len(result.classes), checkpoint_path="flowers.safetensors")

Exact resume: the data order of an epoch is a function of ``(seed, epoch)``, each image's
augmentation of ``(seed, epoch, image)``, and each step's dropout / drop path key of ``(seed,
step)``. The input pipeline is Grain (``data.grain_pipeline``: each process reads its own slice of every
batch, in threads or worker processes). ``output_dir/checkpoints/<step>/`` (Orbax, see
``train.checkpoint``) holds the whole ``TrainState`` (parameters, running statistics, optimizer
state, step), every process's Grain iterator position and the epoch's running metrics, written
atomically and in the background; the ``keep_checkpoints`` latest and the best by ``best_metric``
are kept. A run killed at any point and resumed (``resume=True``) from its latest checkpoint ends
with the same parameters, bit for bit, as a run that was never interrupted.

Run directories of the earlier msgpack format (``last.msgpack``) are not resumed (a clear error
says so); ``load_finetuned`` still reads their weights.
"""
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from ..convert import expected_variables, export_timm_checkpoint
from ..convert.keys import unflatten_variables
from ..data import create_transform, resolve_data_config
from ..data.image_folder import ImageFolder, eval_batches, training_data
from ..factory import build_model, create_model
from ..io.files import check_output, check_writable_dir, write_atomic
from ..io.run_dir import BEST_EXPORT_NAME, LAST_EXPORT_NAME, resolve_checkpoint_path
from ..parallel import DataParallel
from .step import (
    OPTIMIZERS,
    TrainState,
    cross_entropy,
    make_optimizer,
    make_train_step,
    warmup_cosine_schedule,
)

CHECKPOINT_DIR = "checkpoints"  # Orbax steps: output_dir/checkpoints/<step>/{state,data,meta}
LEGACY_CHECKPOINT_NAME = "last.msgpack"  # the msgpack format of resnets_jax 0.1 (read, never resumed)
METRICS_NAME = "metrics.json"
CHECKPOINT_FORMAT = "resnets_jax.finetune/2"
_BEFORE_COLOR_JITTER = {"color_jitter": 0.0}  # runs from before the setting trained without it
LEGACY_CHECKPOINT_FORMAT = "resnets_jax.finetune/1"
# settings that do not change the result: a resumed run may change them
_RUN_ONLY = ("output_dir", "resume", "export", "checkpoint_every", "progress", "workers", "worker_processes",
             "keep_checkpoints", "best_metric")


@dataclasses.dataclass
class FinetuneConfig:
    """What ``finetune`` runs; the defaults are timm's training defaults where it has one.

    Weights: ``checkpoint`` (a timm checkpoint file, loaded as timm's ``pretrained_cfg_overlay=
    dict(file=...)``: a different number of classes gets a new classifier), else the tag's hub
    weights with ``pretrained``, else a random init. ``num_classes``: default, the number of
    class folders. ``img_size``: default, the model's input size. Data: ``data_dir`` with
    ``train/`` and ``val/`` (timm's split folders, or ``train_split`` / ``val_split``) trains on
    one and validates on the other; a folder of class folders holds out ``val_fraction``."""

    model: str
    data_dir: str
    output_dir: str
    num_classes: Optional[int] = None
    pretrained: bool = False
    checkpoint: Optional[str] = None
    epochs: int = 10
    batch_size: int = 32               # global, over every device
    accum_steps: int = 1               # batches per optimizer update (optax.MultiSteps)
    opt: str = "sgd"                   # 'sgd' (Nesterov), 'momentum', 'adamw'
    lr: float = 0.01
    min_lr: float = 0.0
    warmup_epochs: float = 1.0
    warmup_lr: float = 1e-5            # timm's --warmup-lr
    weight_decay: float = 1e-4
    momentum: float = 0.9
    smoothing: float = 0.1             # timm's --smoothing
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    img_size: Optional[int] = None
    interpolation: str = "random"      # timm's --train-interpolation
    hflip: float = 0.5
    color_jitter: float = 0.4          # timm's --color-jitter (brightness, contrast, saturation); 0: off
    val_fraction: float = 0.1          # held out of a single folder (a split root validates on its val/ folder)
    train_split: Optional[str] = None  # timm's --train-split: the training folder of a split root (found: train/)
    val_split: Optional[str] = None    # timm's --val-split: its validation folder (found: val/, validation/, ...)
    seed: int = 0
    bf16: bool = False                 # bfloat16 compute; parameters and statistics stay float32
    checkpoint_every: int = 0          # steps between checkpoints (0: at the end of each epoch only)
    resume: bool = False
    export: Optional[str] = None       # a timm .safetensors written at the end
    progress: bool = True
    workers: Optional[int] = None      # image decoding threads (per process, or per worker process)
    worker_processes: int = 0          # Grain worker processes decoding images (0: threads of this process)
    keep_checkpoints: int = 2          # the latest checkpoints kept, besides the best one
    best_metric: str = "val_acc"       # the kept best checkpoint's metric: 'val_acc' (max) or 'val_loss' (min)


@dataclasses.dataclass
class FinetuneResult:
    model: Any
    variables: Dict[str, Any]   # numpy
    classes: List[str]
    history: List[dict]         # per epoch: train_loss, train_acc, val_loss, val_acc, lr, seconds
    step: int
    checkpoint: str


def _fingerprint(cfg: FinetuneConfig, dataset: ImageFolder) -> dict:
    """What a checkpoint must agree with to be resumed by this run."""
    out = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RUN_ONLY}
    out.update(data_dir=os.path.abspath(cfg.data_dir), classes=dataset.classes, images=len(dataset))
    return json.loads(json.dumps(out))


def _schedule_steps(cfg: FinetuneConfig, steps_per_epoch: int):
    """``(total updates, warmup updates)`` of the optimizer."""
    total_steps = cfg.epochs * steps_per_epoch
    if total_steps % cfg.accum_steps:
        raise ValueError(f"{cfg.epochs} epochs of {steps_per_epoch} batches do not split into optimizer updates of "
                         f"{cfg.accum_steps} batches (accum_steps); change accum_steps or the batch size")
    updates = total_steps // cfg.accum_steps
    return updates, min(int(round(cfg.warmup_epochs * steps_per_epoch / cfg.accum_steps)), updates - 1)


# Each numeric setting's range, (low, high, high included): a value outside is one error naming
# the setting, rather than a run that trains at another size or diverges (None: the default).
_RANGES = {
    "epochs": (1, None, True), "batch_size": (1, None, True), "accum_steps": (1, None, True),
    "img_size": (1, None, True), "num_classes": (1, None, True), "keep_checkpoints": (1, None, True),
    "workers": (1, None, True), "worker_processes": (0, None, True), "checkpoint_every": (0, None, True),
    "lr": (0, None, True), "min_lr": (0, None, True), "warmup_lr": (0, None, True),
    "warmup_epochs": (0, None, True), "weight_decay": (0, None, True), "color_jitter": (0, None, True),
    "momentum": (0, 1, False), "smoothing": (0, 1, False), "drop_rate": (0, 1, False),
    "drop_path_rate": (0, 1, False), "val_fraction": (0, 1, False), "hflip": (0, 1, True),
}


def _check_config(cfg: FinetuneConfig, dp: DataParallel) -> None:
    if cfg.opt not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {cfg.opt!r}: expected one of {', '.join(OPTIMIZERS)}")
    for name, (low, high, closed) in _RANGES.items():
        value = getattr(cfg, name)
        if value is not None and not (low <= value and (high is None or value < high or closed and value == high)):
            top = "" if high is None else f" and {'<=' if closed else '<'} {high}"
            raise ValueError(f"{name} {value}: expected a value >= {low}{top} "
                             f"(--{name.replace('_', '-')} on the command line)")
    per_process = cfg.batch_size // jax.process_count()
    if cfg.batch_size % jax.process_count() or per_process % dp.local_devices:
        raise ValueError(f"batch size {cfg.batch_size} does not split evenly over {dp.num_devices} devices "
                         f"({jax.process_count()} process(es)); use a multiple of {dp.num_devices}")
    if cfg.checkpoint and cfg.pretrained:
        raise ValueError("Give one weights source: checkpoint (a local timm file) or pretrained (the hub)")


def _model_kwargs(cfg: FinetuneConfig, num_classes: int) -> dict:
    return dict(num_classes=num_classes, drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate,
                dtype=jnp.bfloat16 if cfg.bf16 else jnp.float32)


def _initial_variables(cfg: FinetuneConfig, model, num_classes: int, restoring: bool):
    """The starting variables (only their shapes when a checkpoint will replace them)."""
    if restoring:
        return unflatten_variables(expected_variables(model))
    kwargs = _model_kwargs(cfg, num_classes)
    if cfg.checkpoint:
        file = resolve_checkpoint_path(cfg.checkpoint)  # a run directory: its best export
        return create_model(cfg.model, pretrained=True, pretrained_cfg_overlay=dict(file=file), **kwargs)[1]
    return create_model(cfg.model, pretrained=cfg.pretrained, rng=jax.random.PRNGKey(cfg.seed), **kwargs)[1]


def _progress(total: int, initial: int, enabled: bool):
    """tqdm on stderr when installed, else a plain line every tenth of the way."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
        return tqdm(total=total, initial=initial, file=sys.stderr, unit="step", dynamic_ncols=True)
    except ImportError:
        return _PlainProgress(total, initial)


def _above(bar):
    """A context in which a line written to stderr goes above tqdm's bar instead of through it."""
    if hasattr(bar, "external_write_mode"):
        return bar.external_write_mode(file=sys.stderr)
    return contextlib.nullcontext()


def _epoch_line(record: dict) -> str:
    """``epoch 3 train_loss 0.4121 ... lr 0.000125 seconds 12.3``: lr in 3 significant digits
    (a late cosine lr would be 0.0000 in 4 decimals), seconds in 1, the rest in 4 decimals."""
    formats = {"lr": "{:.3g}", "seconds": "{:.1f}"}
    return " ".join(f"{k} {formats.get(k, '{:.4f}').format(v)}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in record.items())


class _PlainProgress:
    """tqdm's ``update`` / ``set_postfix_str`` / ``close`` as plain stderr lines."""

    def __init__(self, total: int, initial: int):
        self.total, self.n, self.every, self.postfix = total, initial, max(1, total // 10), ""

    def update(self, n: int = 1):
        self.n += n
        if self.n % self.every == 0 or self.n == self.total:
            print(f"step {self.n}/{self.total} {self.postfix}", file=sys.stderr, flush=True)

    def set_postfix_str(self, s: str):
        self.postfix = s

    def close(self):
        pass


def evaluate(dp: DataParallel, model, variables, batches) -> Dict[str, float]:
    """Mean cross-entropy (no smoothing, as timm's validation) and top-1 accuracy over ``batches``."""
    loss = correct = count = 0.0
    for b in batches:
        logits = dp.predict(model, variables, b["image"])
        loss += float(cross_entropy(jnp.asarray(logits), b["label"])) * len(logits)
        correct += float((logits.argmax(-1) == b["label"]).sum())
        count += len(logits)
    return {"loss": loss / count, "acc": correct / count}


def finetune(cfg: FinetuneConfig, log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> FinetuneResult:
    """Fine-tune ``cfg.model`` on ``cfg.data_dir`` (see the module docstring and ``FinetuneConfig``).
    Checkpoints go to ``cfg.output_dir/checkpoints/<step>/`` (each epoch and every
    ``checkpoint_every`` steps), the per-epoch metrics to ``cfg.output_dir/metrics.json``. Needs
    the ``train`` extra (grain, orbax-checkpoint). ``resume`` continues from the newest intact
    checkpoint (damaged newer steps are named through ``log`` and set aside as
    ``<step>.damaged``), with any ``worker_processes``. A run that fails (any exception, Ctrl-C)
    removes the output folder it created, unless it holds an intact checkpoint; a folder that
    existed is kept."""
    # first: without the train extra, fail before anything is written
    from ..data.grain_pipeline import ImageFolderSource, to_iter_dataset, train_dataset  # noqa: F401
    from .checkpoint import TrainCheckpoints  # noqa: F401
    dp = DataParallel()
    _check_config(cfg, dp)
    dataset, train_idx, val_idx, found = training_data(cfg.data_dir, cfg.train_split, cfg.val_split,
                                                       cfg.val_fraction, cfg.seed)
    num_classes = cfg.num_classes or len(dataset.classes)
    if num_classes < len(dataset.classes):
        raise ValueError(f"num_classes {num_classes} < the {len(dataset.classes)} class folders of {cfg.data_dir}")
    if cfg.best_metric not in ("val_acc", "val_loss"):
        raise ValueError(f"Unknown best_metric {cfg.best_metric!r}: expected 'val_acc' or 'val_loss'")
    ckpt_dir = os.path.join(cfg.output_dir, CHECKPOINT_DIR)
    _check_output_dir(cfg, ckpt_dir)
    if cfg.export:  # fail now rather than after training
        check_output(cfg.export, force=cfg.resume)
    # the folder this run makes (None: both existed): a run that fails before its first intact checkpoint removes it
    made = next((d for d in (cfg.output_dir, ckpt_dir) if not os.path.exists(d)), None)
    if found:
        log(found)
    os.makedirs(cfg.output_dir, exist_ok=True)
    try:
        return _finetune(cfg, log, dp, dataset, num_classes, train_idx, val_idx, ckpt_dir)
    except BaseException:  # an error, Ctrl-C (KeyboardInterrupt), SystemExit
        if made is not None and jax.process_index() == 0 and not _has_intact_step(ckpt_dir):
            shutil.rmtree(made, ignore_errors=True)
        raise


def _has_intact_step(ckpt_dir: str) -> bool:
    from .checkpoint import step_problem
    return os.path.isdir(ckpt_dir) and any(
        d.isdigit() and step_problem(os.path.join(ckpt_dir, d)) is None for d in os.listdir(ckpt_dir))


def _finetune(cfg: FinetuneConfig, log, dp: DataParallel, dataset: ImageFolder, num_classes: int, train_idx, val_idx,
              ckpt_dir: str) -> FinetuneResult:
    from ..data.grain_pipeline import ImageFolderSource, iterator_state, to_iter_dataset, train_dataset
    from .checkpoint import TrainCheckpoints, resumable_step, step_meta
    model = build_model(cfg.model, **_model_kwargs(cfg, num_classes))
    data_cfg = resolve_data_config(model)
    chans = model.in_chans
    size = (cfg.img_size,) * 2 if cfg.img_size else tuple(data_cfg["input_size"][1:])
    mode = "RGB" if chans == 3 else "L"
    transform = create_transform(**{**data_cfg, "input_size": (chans, *size), "interpolation": cfg.interpolation},
                                 is_training=True, hflip=cfg.hflip, color_jitter=cfg.color_jitter or None)
    train_ds = train_dataset(ImageFolderSource(dataset, mode), train_idx, cfg.batch_size, cfg.seed, cfg.epochs,
                             transform, jax.process_index(), jax.process_count())
    threads = cfg.workers or min(8, os.cpu_count() or 1)
    data = iter(to_iter_dataset(train_ds, workers=cfg.worker_processes, threads=threads))
    eval_transform = create_transform(**{**data_cfg, "input_size": (chans, *size)})
    steps_per_epoch = len(train_idx) // cfg.batch_size
    updates, warmup = _schedule_steps(cfg, steps_per_epoch)
    schedule = warmup_cosine_schedule(cfg.lr, updates, warmup, cfg.warmup_lr, cfg.min_lr)  # for the log
    tx = make_optimizer(cfg.opt, cfg.lr, updates, warmup_steps=warmup, warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr,
                        weight_decay=cfg.weight_decay, momentum=cfg.momentum, accum_steps=cfg.accum_steps)
    fingerprint = _fingerprint(cfg, dataset)
    variables = _initial_variables(cfg, model, num_classes, restoring=cfg.resume)
    if cfg.resume:  # before Orbax's manager lists the steps: damaged ones are set aside
        step = resumable_step(ckpt_dir, log, set_aside=jax.process_index() == 0, check=lambda s: _check_fingerprint(
            f"{ckpt_dir}/{s}", step_meta(ckpt_dir, s), fingerprint))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("resnets_jax.finetune.resumable_step")
    ckpts = TrainCheckpoints(ckpt_dir, keep=cfg.keep_checkpoints, best_metric=cfg.best_metric if len(val_idx) else None)
    rng = np.asarray(jax.random.PRNGKey(cfg.seed))
    epoch, start_batch, history = 0, 0, []
    epoch_sums = {"loss": 0.0, "correct": 0.0, "count": 0.0}
    if cfg.resume:
        target = jax.eval_shape(lambda v: TrainState.create(v, tx), variables)
        target = jax.tree_util.tree_map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dp.replicated), target)
        state, meta = ckpts.restore(step, target)
        try:  # saved by threads or worker processes, of any count: the same batch for this run's kind
            data.set_state(iterator_state(ckpts.data_state(step), cfg.worker_processes))
        except ValueError as e:
            raise ValueError(f"{ckpt_dir}/{step}/data: cannot resume its input position with --worker-processes "
                             f"{cfg.worker_processes} ({e})") from None
        rng, history = np.asarray(meta["rng"], np.uint32), meta["history"]
        epoch, start_batch, epoch_sums = meta["epoch"], meta["batch"], meta["epoch_sums"]
        log(f"resuming {ckpt_dir}/{step}: epoch {epoch}, batch {start_batch}/{steps_per_epoch}")
    else:
        state = TrainState.create(variables, tx)
    del variables

    log(f"fine-tuning {cfg.model} on {len(train_idx)} images ({len(dataset.classes)} classes: "
        f"{', '.join(dataset.classes[:8])}{', ...' if len(dataset.classes) > 8 else ''}), validating on "
        f"{len(val_idx)}; {cfg.epochs} epoch{'s' * (cfg.epochs != 1)} of {steps_per_epoch} steps, batch {cfg.batch_size} over "
        f"{dp.num_devices} device(s), {size[0]}x{size[1]} px")
    state = dp.replicate(state)
    step_fn = dp.jit_step(make_train_step(model, tx, cfg.smoothing))
    rng_dev = dp.replicate(rng)
    bar = _progress(cfg.epochs * steps_per_epoch, epoch * steps_per_epoch + start_batch, cfg.progress)

    def checkpoint(epoch_, batch_, metrics=None):  # every process takes part, writing its own part
        meta = {"format": CHECKPOINT_FORMAT, "rng": rng.tolist(), "epoch": epoch_, "batch": batch_,
                "epoch_sums": epoch_sums, "history": history, "config": fingerprint}
        ckpts.save(epoch_ * steps_per_epoch + batch_, state, meta=meta, data_iterator=data, metrics=metrics)

    try:
        for epoch in range(epoch, cfg.epochs):
            start = time.perf_counter()
            for b in range(start_batch, steps_per_epoch):
                batch = next(data)  # this process's rows of batch b of this epoch
                state, metrics = step_fn(state, dp.shard(batch), rng_dev)
                n = cfg.batch_size
                epoch_sums = {"loss": epoch_sums["loss"] + float(metrics["loss"]) * n,
                              "correct": epoch_sums["correct"] + float(metrics["accuracy"]) * n,
                              "count": epoch_sums["count"] + n}
                step = epoch * steps_per_epoch + b + 1
                if bar is not None:
                    bar.set_postfix_str(f"epoch {epoch} loss {float(metrics['loss']):.4f}")
                    bar.update(1)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and b + 1 < steps_per_epoch:
                    checkpoint(epoch, b + 1)
            start_batch = 0
            record = {"epoch": epoch, "train_loss": epoch_sums["loss"] / epoch_sums["count"],
                      "train_acc": epoch_sums["correct"] / epoch_sums["count"],
                      "lr": float(schedule((epoch + 1) * steps_per_epoch // cfg.accum_steps)),
                      "seconds": time.perf_counter() - start}
            if len(val_idx):
                val = evaluate(dp, model, state.variables,
                               eval_batches(dataset, val_idx, cfg.batch_size, eval_transform, mode))
                record.update(val_loss=val["loss"], val_acc=val["acc"])
            history.append(record)
            epoch_sums = {"loss": 0.0, "correct": 0.0, "count": 0.0}
            checkpoint(epoch + 1, 0, {k: record[k] for k in ("val_loss", "val_acc") if k in record} or None)
            if jax.process_index() == 0:
                write_atomic(os.path.join(cfg.output_dir, METRICS_NAME),
                             lambda tmp: _write_json(tmp, {"classes": dataset.classes, "epochs": history}))
            with _above(bar):
                log(_epoch_line(record))
        ckpts.wait()
        best_step = ckpts.best_step() if len(val_idx) else None
    finally:
        ckpts.close()
        if hasattr(data, "close"):
            data.close()
    if bar is not None:
        bar.close()
    result = _result(model, dp.gather(state), dataset, history, cfg.epochs * steps_per_epoch, ckpt_dir)
    if jax.process_index() == 0:
        _write_exports(cfg, model, result, best_step, {**data_cfg, "input_size": (chans, *size)}, log)
    return result


def _write_exports(cfg: FinetuneConfig, model, result: FinetuneResult, best_step: Optional[int], data_cfg: dict,
                   log) -> None:
    """The run's timm exports, with their class names and eval data config: ``last`` (the final
    weights) and ``model_best`` (the kept best step's) in the output directory, as timm's
    train.py names them, and ``cfg.export``."""
    names = result.classes + [str(i) for i in range(len(result.classes), model.num_classes)]  # a wider head
    export = functools.partial(export_timm_checkpoint, model, label_names=names, data_config=data_cfg, force=True)
    last = export(result.variables, os.path.join(cfg.output_dir, LAST_EXPORT_NAME))
    best = os.path.join(cfg.output_dir, BEST_EXPORT_NAME)
    if best_step is not None and best_step != result.step:
        from .checkpoint import read_train_checkpoint
        state = read_train_checkpoint(os.path.join(cfg.output_dir, CHECKPOINT_DIR), step=best_step)["state"]
        export({"params": state["params"], **({"batch_stats": state["batch_stats"]} if state["batch_stats"] else {})},
               best)
    elif best_step is not None:  # the final step is the best: the same file
        write_atomic(best, lambda tmp: shutil.copyfile(last, tmp), force=True)
    if cfg.export:
        path = export(result.variables, cfg.export, force=cfg.resume)
        log(f"exported to {path}: timm.create_model('{model.variant.partition('.')[0]}', "
            f"num_classes={model.num_classes}, checkpoint_path='{path}')")


def _check_output_dir(cfg: FinetuneConfig, ckpt_dir: str) -> None:
    """A new run needs an output directory without checkpoints; a resumed one, its checkpoints.
    A run directory of the msgpack format (resnets_jax 0.1) is refused, saying what to do. The
    directory, or its nearest existing parent (it is created), must be writable: checked first."""
    existing = os.path.abspath(cfg.output_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    check_writable_dir(existing, cfg.output_dir)
    steps = [d for d in os.listdir(ckpt_dir) if d.isdigit()] if os.path.isdir(ckpt_dir) else []
    legacy = os.path.join(cfg.output_dir, LEGACY_CHECKPOINT_NAME)
    if not steps and os.path.exists(legacy):
        raise ValueError(f"{legacy}: a checkpoint of the msgpack format of resnets_jax 0.1, which this version does "
                         "not resume (it writes Orbax checkpoints to checkpoints/). Finish that run with the version "
                         "that started it, or start a new run from its weights: export them with "
                         "`export_timm_checkpoint(*load_finetuned(dir), 'w.safetensors')` and pass --checkpoint "
                         "w.safetensors, with another output directory")
    if cfg.resume and not steps:
        raise ValueError(f"nothing to resume: no finished checkpoint in {ckpt_dir}")
    if not cfg.resume and steps:
        raise ValueError(f"{ckpt_dir} holds checkpoints: resume it (--resume) or choose another output directory")


def _check_fingerprint(where: str, meta: dict, fingerprint: dict) -> None:
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{where}: not a {CHECKPOINT_FORMAT} checkpoint (format {meta.get('format')!r})")
    saved = {**_BEFORE_COLOR_JITTER, **meta["config"]}
    if saved != fingerprint:
        diff = [f"{k}: checkpoint {saved.get(k)!r}, this run {fingerprint.get(k)!r}"
                for k in sorted(set(saved) | set(fingerprint)) if saved.get(k) != fingerprint.get(k)]
        raise ValueError(f"{where} was written by a run with other settings; resuming would not continue it. "
                         + "; ".join(diff))


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def _result(model, state: TrainState, dataset: ImageFolder, history, step: int, ckpt: str) -> FinetuneResult:
    return FinetuneResult(model=model, variables=state.variables, classes=dataset.classes, history=history,
                          step=step, checkpoint=ckpt)


def _read_legacy_checkpoint(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            raw = serialization.msgpack_restore(f.read())
        if not isinstance(raw, dict) or raw.get("format") != LEGACY_CHECKPOINT_FORMAT:
            raise ValueError(f"not a {LEGACY_CHECKPOINT_FORMAT} checkpoint")
    except (ValueError, TypeError) as e:  # msgpack's errors are ValueErrors
        raise ValueError(f"{path}: cannot read it as a fine-tuning checkpoint ({e})") from None
    return {"state": raw["state"], "config": json.loads(raw["config"])}


def load_finetuned(output_dir: str, best: bool = False, step: Optional[int] = None):
    """``(model, variables)`` (numpy) of a fine-tuning ``output_dir``'s latest checkpoint (``best``:
    the kept checkpoint with the best validation metric; ``step``: that one), for ``model.apply``
    or ``export_timm_checkpoint``. Reads the msgpack ``last.msgpack`` of resnets_jax 0.1 as well.
    Damaged steps are skipped with a ``UserWarning`` naming each (``read_train_checkpoint``).
    Raises ``ValueError`` when the directory holds no intact checkpoint, or ``step`` is damaged."""
    ckpt_dir = os.path.join(output_dir, CHECKPOINT_DIR)
    legacy = os.path.join(output_dir, LEGACY_CHECKPOINT_NAME)
    if not os.path.isdir(ckpt_dir) and os.path.exists(legacy):
        raw = _read_legacy_checkpoint(legacy)
    else:
        from .checkpoint import read_train_checkpoint
        saved = read_train_checkpoint(ckpt_dir, step=step, best=best)
        raw = {"state": saved["state"], "config": saved["meta"]["config"]}
    cfg, state = raw["config"], raw["state"]
    model = build_model(cfg["model"], num_classes=cfg["num_classes"] or len(cfg["classes"]),
                        dtype=jnp.bfloat16 if cfg["bf16"] else jnp.float32)
    return model, {"params": state["params"], **({"batch_stats": state["batch_stats"]} if state["batch_stats"] else {})}
