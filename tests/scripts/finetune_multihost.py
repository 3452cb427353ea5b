"""One process of a fine-tuning run under ``jax.distributed`` (started by
tests/test_train_checkpoint.py with ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``; CPU devices from XLA_FLAGS, gloo collectives over loopback): each process
reads its own rows of every batch through Grain and writes its part of each Orbax checkpoint.

    python finetune_multihost.py DATA_DIR OUTPUT_DIR [--resume]
"""
import sys

from resnets_jax.parallel import initialize

initialize(initialization_timeout=120)  # before any device is touched

from resnets_jax.train.finetune import FinetuneConfig, finetune  # noqa: E402

# a short run: 2 epochs of 3 steps (batch 8: 4 rows per process), a checkpoint after every step
SETTINGS = dict(epochs=2, batch_size=8, img_size=32, val_fraction=0.25, opt="adamw", lr=2e-3, weight_decay=0.05,
                warmup_epochs=0, drop_path_rate=0.1, checkpoint_every=1, progress=False, workers=2)

if __name__ == "__main__":
    data_dir, output_dir, *flags = sys.argv[1:]
    finetune(FinetuneConfig("resnetv2_18", data_dir, output_dir, resume="--resume" in flags, **SETTINGS))
