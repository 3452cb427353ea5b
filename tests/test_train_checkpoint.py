"""Orbax train state and the Grain input pipeline of fine-tuning: which checkpoints are kept
(the latest N and the best by a validation metric), a restore that fits the model or says why
not, the Grain batches equal to ``image_folder.Batches`` and resumed at the same example (in
the calling process and in worker processes), and a run directory of the msgpack format."""
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

import resnets_jax as rj
from resnets_jax.train.finetune import (CHECKPOINT_DIR, LEGACY_CHECKPOINT_FORMAT, LEGACY_CHECKPOINT_NAME,
                                        FinetuneConfig, finetune, load_finetuned)
from resnets_jax.data.grain_pipeline import ImageFolderSource, iterator_state, to_iter_dataset, train_dataset
from resnets_jax.data.image_folder import Batches, ImageFolder, split_indices, train_transform
from resnets_jax.train import TrainState
from resnets_jax.train.checkpoint import TrainCheckpoints, read_train_checkpoint, resumable_step, step_problem
from test_finetune import MEAN, MODEL, STD, make_folder

SIZE = 24
SCRIPTS = Path(__file__).parent / "scripts"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("images"), n=10)


def _state(step=0, width=2):
    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
    params = {"w": jnp.full((3, width), 0.5), "b": jnp.arange(width, dtype=jnp.float32)}
    state = TrainState.create({"params": params}, tx)
    return state.replace(step=jnp.int32(step))


@pytest.mark.parametrize("metric,values,best", [
    ("val_acc", [0.5, 0.9, 0.6, None, 0.7, None], 2),    # highest accuracy
    ("val_loss", [0.5, 0.9, 0.6, None, 0.7, None], 1),   # lowest loss
])
def test_keeps_latest_n_and_best(tmp_path, metric, values, best):
    ckpts = TrainCheckpoints(str(tmp_path), keep=2, best_metric=metric)
    for step, v in enumerate(values, start=1):  # None: a mid-epoch checkpoint, without metrics
        ckpts.save(step, _state(step), meta={"epoch": step},
                   metrics=None if v is None else {metric: v, "other": -v})
    ckpts.wait()
    assert ckpts.all_steps() == sorted({5, 6, best})
    assert ckpts.best_step() == best
    ckpts.close()
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == sorted({5, 6, best})
    assert read_train_checkpoint(str(tmp_path), best=True)["step"] == best
    latest = read_train_checkpoint(str(tmp_path))
    assert latest["step"] == 6 and int(latest["state"]["step"]) == 6 and latest["meta"]["epoch"] == 6


def test_restore_exact_and_refuses_other_shapes(tmp_path):
    state = _state(7)
    state = state.replace(opt_state=jax.tree_util.tree_map(lambda x: x + 0.25, state.opt_state))
    ckpts = TrainCheckpoints(str(tmp_path), keep=1, best_metric=None)
    ckpts.save(7, state, meta={"rng": [1, 2]})
    ckpts.wait()
    restored, meta = ckpts.restore(7, jax.eval_shape(lambda: _state()))
    assert meta["rng"] == [1, 2]
    for a, b in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(a, b)
    fit = r"does not fit the model: .*\['params'\]\['w'\]: checkpoint \(3, 2\) vs model \(3, 4\)"
    with pytest.raises(ValueError, match=fit):
        ckpts.restore(7, jax.eval_shape(lambda: _state(width=4)))
    with pytest.raises(ValueError, match="keep must be at least 1"):
        TrainCheckpoints(str(tmp_path / "x"), keep=0)


def _pipeline(folder, process_index=0, process_count=1, workers=0):
    ds = ImageFolder(folder)
    train, _ = split_indices(ds.labels, 0.25, 0)
    transform = functools.partial(train_transform, size=(SIZE, SIZE), mean=MEAN, std=STD)
    grain_ds = train_dataset(ImageFolderSource(ds), train, 6, 0, 2, transform, process_index, process_count)
    return iter(to_iter_dataset(grain_ds, workers=workers, threads=2)), Batches(ds, train, 6, 0, transform)


@pytest.mark.parametrize("process_index", [0, 1])
def test_grain_batches_equal_batches_and_resume(folder, process_index):
    it, ref = _pipeline(folder, process_index, 2)
    rows = slice(3 * process_index, 3 * (process_index + 1))  # this process's rows of each global batch
    steps = 2 * ref.steps_per_epoch  # two epochs
    got = [next(it) for _ in range(3)]
    state = it.get_state()
    got += [next(it) for _ in range(3, steps)]
    for s, batch in enumerate(got):
        want = ref.batch(*divmod(s, ref.steps_per_epoch))
        np.testing.assert_array_equal(batch["image"], want["image"][rows])
        np.testing.assert_array_equal(batch["label"], want["label"][rows])
    with pytest.raises(StopIteration):
        next(it)
    resumed, _ = _pipeline(folder, process_index, 2)
    resumed.set_state(json.loads(json.dumps(state)))  # as Grain's Orbax handler stores it
    np.testing.assert_array_equal(next(resumed)["image"], got[3]["image"])


def test_grain_state_moves_between_threads_and_worker_processes(folder):
    """The Grain state saved by 2 worker processes resumes at the same batch in threads and in 1
    worker process (``iterator_state``), and the state translated from a position is exactly the
    one Grain's own 2-worker iterator saves there, at every batch."""
    it, ref = _pipeline(folder, workers=2)
    got, states = [], []
    for _ in range(2 * ref.steps_per_epoch):
        got.append(next(it))
        states.append(json.loads(json.dumps(it.get_state())))  # as Grain's Orbax handler stores it
    it.close()
    for s, batch in enumerate(got):
        np.testing.assert_array_equal(batch["image"], ref.batch(*divmod(s, ref.steps_per_epoch))["image"])
    for position, state in enumerate(states, start=1):
        assert iterator_state(state, 0) == {"next_index": position}
        assert iterator_state({"next_index": position}, 2) == state
    for workers in (0, 1):  # threads, and another worker count (no slicing) resumed after batch 1
        resumed, _ = _pipeline(folder, workers=workers)
        resumed.set_state(iterator_state(states[0], workers))
        rest = [next(resumed) for _ in got[1:]]
        for a, b in zip(rest, got[1:]):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])
        assert iterator_state(resumed.get_state(), 2) == states[-1]
        if workers:
            resumed.close()
    with pytest.raises(ValueError, match="not a Grain iterator state"):
        iterator_state({"next_index": 3, "other": 1})
    with pytest.raises(ValueError, match="not a Grain iterator state"):  # shards out of turn
        iterator_state({**states[2], "iterators_in_use_states": [{"next_index": 3}, {"next_index": 0}]})


def test_msgpack_run_dir_is_read_but_not_resumed(folder, tmp_path):
    """A run directory of resnets_jax 0.1 (``last.msgpack``): ``load_finetuned`` reads its
    weights; resuming it is refused with what to do instead."""
    model, variables = rj.create_model(MODEL, num_classes=2, rng=jax.random.PRNGKey(0))
    state = TrainState.create(variables, optax.sgd(0.1))
    config = {"model": MODEL, "num_classes": None, "classes": ["blue", "red"], "bf16": False}
    blob = serialization.msgpack_serialize({
        "format": LEGACY_CHECKPOINT_FORMAT,
        "state": jax.tree_util.tree_map(np.asarray, serialization.to_state_dict(state)),
        "rng": np.zeros(2, np.uint32), "epoch": 1, "batch": 0, "epoch_sums": {}, "history": "[]",
        "config": json.dumps(config)})
    out = tmp_path / "old_run"
    out.mkdir()
    (out / LEGACY_CHECKPOINT_NAME).write_bytes(blob)
    loaded_model, loaded = load_finetuned(str(out))
    assert loaded_model.num_classes == 2
    for a, b in zip(jax.tree_util.tree_leaves(loaded), jax.tree_util.tree_leaves(variables)):
        np.testing.assert_array_equal(a, b)
    for resume in (True, False):
        with pytest.raises(ValueError, match="msgpack format of resnets_jax 0.1.*load_finetuned.*--checkpoint"):
            finetune(FinetuneConfig(MODEL, str(folder), str(out), resume=resume, progress=False))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(data_dir, out_dir, env, *flags):
    port = _free_port()
    script = [sys.executable, str(SCRIPTS / "finetune_multihost.py"), str(data_dir), str(out_dir), *flags]
    return [subprocess.Popen(script,
                             env=dict(env, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                      JAX_PROCESS_ID=str(pid)),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for pid in range(2)]


def _wait(procs):
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return logs


def test_two_processes_killed_and_resumed_equal_uninterrupted(tmp_path):
    """Two processes on loopback (1 CPU device each): each reads its own rows through Grain and
    writes its iterator position into every Orbax checkpoint. Both killed (SIGKILL) after the
    first checkpoint, then resumed: the same parameters, statistics and optimizer state, bit for
    bit, as an uninterrupted two-process run."""
    data_dir = make_folder(tmp_path / "images", n=16)  # 24 training images: 3 batches of 8 per epoch
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla_cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    full, cut = tmp_path / "full", tmp_path / "cut"
    _wait(_launch(data_dir, full, env))
    procs = _launch(data_dir, cut, env)
    ckpts = cut / CHECKPOINT_DIR
    while not (ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())) and \
            all(p.poll() is None for p in procs):
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
    a = read_train_checkpoint(str(full / CHECKPOINT_DIR))
    interrupted = read_train_checkpoint(str(ckpts))
    assert 0 < int(interrupted["state"]["step"]) < int(a["state"]["step"]), "the run was not interrupted midway"
    assert sorted(p.name for p in (ckpts / str(interrupted["step"]) / "data").glob("process_*")) == \
        ["process_0-of-2.json", "process_1-of-2.json"]  # each process wrote its iterator
    logs = _wait(_launch(data_dir, cut, env, "--resume"))
    assert "resuming" in logs[0]
    b = read_train_checkpoint(str(ckpts))
    assert a["step"] == b["step"]
    leaves_a, leaves_b = (jax.tree_util.tree_flatten_with_path(x["state"])[0] for x in (a, b))
    assert [k for k, _ in leaves_a] == [k for k, _ in leaves_b]
    for (k, x), (_, y) in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(y, x, err_msg=jax.tree_util.keystr(k))
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(b["meta"]["history"]) == strip(a["meta"]["history"])


def _files(path):
    return sorted(p for p in Path(path).rglob("*") if p.is_file())


def _snapshot(path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in _files(path)}


def _cut_short(step_dir):
    """A copy that stopped midway: the array files of the state never arrived."""
    for p in _files(step_dir / "state"):
        if p.parent.name == "d":
            p.unlink()


def _truncated(step_dir):
    """The largest file of the state cut to half its length."""
    big = max(_files(step_dir / "state"), key=lambda p: p.stat().st_size)
    os.truncate(big, big.stat().st_size // 2)


DAMAGE = {  # how a finished step folder gets damaged, and what the message names
    "empty folder": (lambda d: (shutil.rmtree(d), d.mkdir()), "an empty folder"),
    "stray folder": (lambda d: (shutil.rmtree(d), d.mkdir(), (d / "notes.txt").write_text("x")), "no commit marker"),
    "no commit marker": (lambda d: [(d / n).unlink() for n in ("commit_success.txt", "_CHECKPOINT_METADATA")],
                         "no commit marker"),
    "item missing": (lambda d: shutil.rmtree(d / "meta"), "no meta item"),
    "array files missing": (_cut_short, "state unreadable"),
    "truncated array file": (_truncated, "state unreadable"),
    "truncated json": (lambda d: (d / "meta" / "metadata").write_text('{"epoch": '), "meta/metadata unreadable"),
    "truncated iterator": (lambda d: (d / "data" / "process_0-of-1.json").write_text('{"next_'),
                           "data/process_0-of-1.json unreadable"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_newest_step_falls_back_to_intact_one(tmp_path, damage):
    """The newest step damaged after Orbax finished it: reading falls back to the newest intact
    step with a warning naming the damaged one and why; asking for it by number is refused, naming
    it; a resume sets it aside (``<step>.damaged``) and leaves the intact steps byte for byte."""
    damage_fn, why = DAMAGE[damage]
    ckpts = TrainCheckpoints(str(tmp_path), keep=3, best_metric="val_acc")
    data = iter(grain.MapDataset.range(8).to_iter_dataset())  # each step holds an iterator position too
    for step in (1, 2, 3):
        next(data)
        ckpts.save(step, _state(step, width=1000), meta={"epoch": step}, data_iterator=data,
                   metrics={"val_acc": step / 10})
    ckpts.wait()
    ckpts.close()
    damage_fn(tmp_path / "3")
    intact = {s: _snapshot(tmp_path / s) for s in ("1", "2")}
    for best in (False, True):  # step 3 was the latest and the best
        with pytest.warns(UserWarning, match=f"{tmp_path}/3 is damaged \\({why}.*read step 2"):
            saved = read_train_checkpoint(str(tmp_path), best=best)
        assert saved["step"] == 2 and int(saved["state"]["step"]) == 2 and saved["meta"]["epoch"] == 2
    with pytest.raises(ValueError, match=f"checkpoint {tmp_path}/3 is damaged: {why}"):
        read_train_checkpoint(str(tmp_path), step=3)
    logged = []
    assert resumable_step(str(tmp_path), logged.append) == 2
    assert len(logged) == 1 and f"{tmp_path}/3 is damaged ({why}" in logged[0] and "3.damaged" in logged[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2", "3.damaged"]
    assert {s: _snapshot(tmp_path / s) for s in ("1", "2")} == intact
    ckpts = TrainCheckpoints(str(tmp_path), keep=3, best_metric="val_acc")  # the run writes step 3 again
    ckpts.save(3, _state(3, width=1000), meta={"epoch": 3}, metrics={"val_acc": 0.3})
    ckpts.wait()
    ckpts.close()
    assert read_train_checkpoint(str(tmp_path))["step"] == 3
    ckpts = TrainCheckpoints(str(tmp_path), keep=3)
    assert ckpts.data_state(2) == {"next_index": 2}  # the iterator position, as Grain saved it
    ckpts.close()


def test_no_intact_step_is_refused_changing_nothing(tmp_path):
    ckpts = TrainCheckpoints(str(tmp_path), keep=2, best_metric=None)
    ckpts.save(1, _state(1), meta={"epoch": 1})
    ckpts.wait()
    ckpts.close()
    _truncated(tmp_path / "1")
    (tmp_path / "2").mkdir()  # and a stray empty step folder
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match=f"no intact checkpoint to resume in {tmp_path}: {tmp_path}/2: an empty "
                                         f"folder; {tmp_path}/1: state unreadable"):
        resumable_step(str(tmp_path), print)
    with pytest.raises(ValueError, match="no intact checkpoint in"):
        read_train_checkpoint(str(tmp_path))
    assert _snapshot(tmp_path) == before and (tmp_path / "2").is_dir()


def test_relative_paths_read_as_absolute_ones(tmp_path, monkeypatch):
    """``-o run`` as every example writes it: each reader takes the run's relative path as its
    absolute one (Orbax's metadata reader returns None for a relative path, which made intact steps
    look damaged: a resume refused, a Ctrl-C's clean-up removing the run)."""
    ckpts = TrainCheckpoints(str(tmp_path / "run"), keep=2, best_metric=None)
    ckpts.save(1, _state(1), meta={"epoch": 1})
    ckpts.wait()
    ckpts.close()
    monkeypatch.chdir(tmp_path)
    assert step_problem("run/1", read_arrays=True) is None
    assert resumable_step("run", print) == 1
    assert read_train_checkpoint("run")["step"] == 1
