"""Is fine-tuning input-bound? The Grain pipeline's images/s (JPEG decode + timm's train transform
at 224, per worker count) beside resnetv2_50's training step time, on this machine.

    python benchmarks/grain_input.py [--images 96] [--batch 16] [--workers 0 1 2] [--steps 3]

The images are synthetic JPEGs of ImageNet's typical size (500x375, quality 90) in two class
folders. Input: ``data.grain_pipeline.train_dataset`` + ``to_iter_dataset`` over them, one epoch after a
warm-up batch, ``--workers 0`` meaning 2 decoding threads in this process. Step: resnetv2_50
(random weights, 2 classes), ``make_train_step`` (SGD, train mode: batch statistics) under
``jax.jit``, median of ``--steps`` after compiling. Prints one line per measurement and the
machine's ``os.getloadavg()`` before and after (the figures scale with the cores left free).
"""
import argparse
import functools
import os
import tempfile
import time

import numpy as np
from PIL import Image


def make_images(root: str, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = os.path.join(root, f"class{i % 2}")
        os.makedirs(d, exist_ok=True)
        # smooth noise compresses like a photo, not like white noise
        small = rng.integers(0, 256, (24, 32, 3), np.uint8)
        Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(os.path.join(d, f"{i:04d}.jpg"), quality=90)


def input_rate(root: str, batch: int, workers: int) -> float:
    from resnets_jax.data.grain_pipeline import ImageFolderSource, to_iter_dataset, train_dataset
    from resnets_jax.data.image_folder import ImageFolder, train_transform
    ds = ImageFolder(root)
    transform = functools.partial(train_transform, size=(224, 224), mean=(0.485, 0.456, 0.406),
                                  std=(0.229, 0.224, 0.225))
    idx = np.arange(len(ds))
    it = iter(to_iter_dataset(train_dataset(ImageFolderSource(ds), idx, batch, 0, 2, transform),
                              workers=workers, threads=2))
    next(it)  # workers started, first batch out
    start, n = time.perf_counter(), 0
    for _ in range(len(idx) // batch):  # the rest of epoch 0 and epoch 1's first batch
        n += len(next(it)["label"])
    rate = n / (time.perf_counter() - start)
    if hasattr(it, "close"):
        it.close()
    return rate


def step_time(batch: int, steps: int) -> float:
    import jax
    import optax
    import resnets_jax as rj
    from resnets_jax.train import TrainState, make_train_step
    model, variables = rj.create_model("resnetv2_50", num_classes=2, rng=jax.random.PRNGKey(0))
    tx = optax.sgd(0.01, momentum=0.9)
    state = TrainState.create(variables, tx)
    step = jax.jit(make_train_step(model, tx), donate_argnums=0)
    b = {"image": np.random.default_rng(0).standard_normal((batch, 224, 224, 3), np.float32),
         "label": np.arange(batch, dtype=np.int32) % 2}
    key = jax.random.PRNGKey(1)
    state, m = step(state, b, key)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = step(state, b, key)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    print(f"cpus {os.cpu_count()}, load average before {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as root:
        make_images(root, args.images)
        for w in args.workers:
            label = f"{w} worker process(es)" if w else "in-process, 2 threads"
            print(f"grain input, decode + timm train transform at 224, {label}: "
                  f"{input_rate(root, args.batch, w):.1f} images/s", flush=True)
    t = step_time(args.batch, args.steps)
    print(f"resnetv2_50 train step, batch {args.batch}, 224 px, fp32: {t:.2f} s/step = {args.batch / t:.1f} images/s")
    print(f"load average after {os.getloadavg()}")


if __name__ == "__main__":
    main()
