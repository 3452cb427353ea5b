"""Inference and one training step with DataParallel, either as one of two processes under
``jax.distributed`` (started by tests/test_parallel.py with ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES=2``, ``JAX_PROCESS_ID``; CPU devices from XLA_FLAGS, gloo collectives over
loopback), each process handing in its own share of the data, or as one process with as many
devices in all, handing in everything. Writes OUT_DIR/process_<id>.npz (one process:
OUT_DIR/single.npz).

* inference on 21 images: process 0 takes the first 11, process 1 the last 10 (uneven); then
  3 images on process 0 and none on process 1 (an empty share), padded to the same rows;
* one training step (batch 16, 8 per process) of ``make_train_step`` via ``DataParallel.jit_step``
  under OPTION_SET ('xla-defaults' or 'rj-options'), its ReLU decisions held
  (timm_ref.with_decisions: see sharded_vs_single.py); one process also runs the step on one
  device, in the batch's order and reordered (the reference spread);
* ``embed_folder`` over IMAGE_DIR (batch 4: 2 files per process) into OUT_DIR/embed_<n>proc.npz.
"""
import sys
from pathlib import Path

import jax
import numpy as np
import optax

from resnets_jax.parallel import DataParallel, data_mesh, initialize

initialize(initialization_timeout=120)  # before any device is touched; a no-op for one process
jax.config.update("jax_default_matmul_precision", "highest")

import resnets_jax as rj  # noqa: E402
from resnets_jax.tools.embed import embed_folder  # noqa: E402
from resnets_jax.train import TrainState, make_train_step  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: timm_ref
from sharded_vs_single import held_decisions  # noqa: E402
from timm_ref import compiler_options_for, with_decisions  # noqa: E402

NAME, IMAGES, SPLIT, TRAIN_BATCH, SMALL = "resnetv2_18d", 21, 11, 16, 3
LAYERS = (1, 1, 1, 1)  # one block a stage: two processes or one is the program's, not the depth's


def flat(tree, prefix):
    return {f"{prefix}/{jax.tree_util.keystr(k)}": np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def main(out_dir, image_dir, option_set="rj-options"):
    pid, multi = jax.process_index(), jax.process_count() > 1
    model, variables = rj.create_model(NAME, num_classes=10, drop_path_rate=0.1, rng=jax.random.PRNGKey(0),
                                       layers=LAYERS)
    rng = np.random.default_rng(0)  # the same data in every process; each takes its share
    x = rng.standard_normal((IMAGES, 64, 64, 3)).astype(np.float32)
    y = rng.integers(0, 10, IMAGES)
    dp = DataParallel()
    v = dp.replicate(variables)
    if multi:
        mine, part = (slice(0, SPLIT), slice(0, TRAIN_BATCH // 2)) if pid == 0 else \
            (slice(SPLIT, IMAGES), slice(TRAIN_BATCH // 2, TRAIN_BATCH))
    else:
        mine, part = slice(0, IMAGES), slice(0, TRAIN_BATCH)
    out = {"logits": dp.predict(model, v, x[mine]), "all_logits": dp.predict_all(model, v, x[mine])}
    if multi:  # padded to the first call's rows per process: the same compiled program
        out["small"] = dp.predict(model, v, x[:SMALL] if pid == 0 else x[:0], pad_to=SPLIT)
    tx = optax.sgd(0.1, momentum=0.9)
    key, options = jax.random.PRNGKey(1), compiler_options_for(option_set)
    train = {"image": x[:TRAIN_BATCH], "label": y[:TRAIN_BATCH]}
    relu, order = held_decisions(model, variables, train, key)  # every process: the whole batch's
    step_fn = with_decisions(make_train_step(model, tx, label_smoothing=0.1), relu)
    state = dp.replicate(TrainState.create(variables, tx))
    state, metrics = dp.jit_step(step_fn, compiler_options=options)(
        state, dp.shard({k: v[part] for k, v in train.items()}), dp.replicate(key))
    out.update(flat(dp.gather(state.variables), "variables"))
    if not multi:  # the spread of two single-device steps that differ only in the order of their sums
        one = DataParallel(data_mesh(jax.devices()[:1]))
        reordered = {k: v[order] for k, v in train.items()}
        for label, data, decisions in (("one_device", train, relu),
                                       ("reordered", reordered, {k: v[order] for k, v in relu.items()})):
            step = one.jit_step(with_decisions(make_train_step(model, tx, label_smoothing=0.1), decisions),
                                compiler_options=options)
            s = step(one.replicate(TrainState.create(variables, tx)), one.shard(data), one.replicate(key))[0]
            out.update(flat(one.gather(s.variables), label))
    out.update(flat(variables, "initial"))
    out.update(flat(dp.gather(metrics), "metrics"))
    out.update(devices=np.int32(dp.num_devices), process_count=np.int32(jax.process_count()))
    np.savez(f"{out_dir}/{f'process_{pid}' if multi else 'single'}.npz", **out)
    embed_folder(model, variables, image_dir, f"{out_dir}/embed_{jax.process_count()}proc.npz", batch_size=4,
                 dp=dp, progress=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
