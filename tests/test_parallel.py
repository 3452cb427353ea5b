"""Data parallelism: sharded over 8 CPU devices == one device, for inference and one
training step (a subprocess, since the device count is fixed when JAX starts)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resnets_jax.parallel import DataParallel

SCRIPTS = Path(__file__).parent / "scripts"
# fp32; the sharded program sums BatchNorm statistics and gradients in another order
SHARDED_TOL = 2e-5


def run_script(name, *args, devices=8, timeout=600):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_equals_single_device():
    # 21 images: not a multiple of 8, so inference pads and drops the padding again
    out = run_script("sharded_vs_single.py", "resnetv2_18d", 21)
    assert (out["single_devices"], out["sharded_devices"]) == (1, 8)
    assert out["logits_shape"] == [21, 10]
    assert out["logits"] < SHARDED_TOL
    assert out["loss"] < SHARDED_TOL
    assert out["params_moved"] > 1e-4  # the step did update the parameters
    assert out["variables"] < SHARDED_TOL  # parameters and running statistics after one step


def test_pad_and_shard_errors():
    dp = DataParallel()
    padded, n = dp.pad(np.ones((3, 2, 2, 3), np.float32))
    assert n == 3 and len(padded) % dp.local_devices == 0
    with pytest.raises(ValueError, match="empty batch"):
        dp.pad(np.ones((0, 2, 2, 3)))
