"""The command line as a user meets it: help for every flag of every command (flags added later
are held too), ``--version``, checked ``--top-k``, hints that name the command's flag, libraries'
log lines kept out unless ``--verbose``, and commands that import torch/timm only where used."""
import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import resnets_jax as rj
from resnets_jax.data import sample_image_path
from resnets_jax.io.errors import WeightsUnavailableError
from resnets_jax.tools import cli
from resnets_jax.train.finetune import _epoch_line

REPO_ROOT = Path(__file__).resolve().parents[1]


def _flags():
    parser = cli.build_parser()
    yield "resnets-jax", parser
    yield from cli.subcommands(parser).items()


@pytest.mark.parametrize("command, parser", list(_flags()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_flag_has_help_with_real_defaults(command, parser):
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{command} {name}: no help"
        shown = formatter._expand_help(action)
        assert "None" not in shown, f"{command} {name}: {shown!r} (say what the default means)"
    assert "None" not in parser.format_help()


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"resnets-jax {rj.__version__}\n"


@pytest.mark.parametrize("argv, message", [
    (["predict", "resnetv2_18", "x.jpg", "--top-k", "-1"], "--top-k -1: expected a number of classes >= 1"),
    (["predict", "resnetv2_18", "x.jpg", "--top-k", "0"], "--top-k 0: expected a number of classes >= 1")])
def test_top_k_is_checked(capsys, argv, message):
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_top_k_at_most_the_classes():
    with pytest.raises(ValueError, match="top-k 1001: expected 1 to 1000, the model's number of classes"):
        rj.predict.top_k(np.zeros((1, 1000)), 1001)
    with pytest.raises(ValueError, match="no classifier"):
        rj.predict.check_top_k(5, 0)


def test_offline_hint_names_the_flag_of_the_command(tmp_path, monkeypatch, capsys):
    """Python users are told the create_model call; each command its own flag for the file."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # nothing cached
    with pytest.raises(WeightsUnavailableError) as e:
        rj.create_model("resnet10t.c3_in1k", pretrained=True, cache_dir=str(tmp_path / "hub"))
    assert "HF_HUB_OFFLINE is set" in str(e.value)
    assert str(e.value).endswith("create_model('resnet10t', checkpoint_path='model.safetensors').")
    for argv, flag in [(["predict", "resnet10t.c3_in1k", sample_image_path()], "--weights"),
                       (["convert", "resnet10t.c3_in1k", "--from-hub", "-o", str(tmp_path / "o.safetensors"),
                         "--cache-dir", str(tmp_path / "hub")], "--checkpoint")]:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert f"pass it: {flag} model.safetensors with the model name resnet10t." in err, err
        assert "create_model" not in err


def test_library_logs_only_with_verbose(capsys):
    levels = {n: logging.getLogger(n).level for n in cli.QUIET_LOGGERS}
    try:
        assert cli.main(["list", "resnest14*"]) == 0
        assert all(logging.getLogger(n).level == logging.ERROR for n in cli.QUIET_LOGGERS)
        for n in cli.QUIET_LOGGERS:
            logging.getLogger(n).setLevel(logging.NOTSET)
        assert cli.main(["list", "resnest14*", "--verbose"]) == 0  # after the command works too
        assert all(logging.getLogger(n).level == logging.NOTSET for n in cli.QUIET_LOGGERS)
        assert capsys.readouterr().out == "resnest14d\nresnest14d\n"
    finally:
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)


def test_epoch_line_reads_small_learning_rates():
    line = _epoch_line({"epoch": 3, "train_loss": 0.41234, "lr": 1.25e-5, "seconds": 12.34})
    assert line == "epoch 3 train_loss 0.4123 lr 1.25e-05 seconds 12.3"


# Runs in a fresh interpreter: each CLI argv of argv[1] through cli.main, then prints the exit codes
# and which of torch / timm / torchvision were imported.
RUNNER = r"""
import json, sys
from resnets_jax.tools import cli
codes = [cli.main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps([codes, sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules)]))
"""


def test_commands_without_verify_import_neither_torch_nor_timm(tmp_path):
    """``convert`` (no ``--verify``) and ``list`` run without importing torch or timm (9 s of
    imports on a loaded 2-core machine); only --verify, the demo and legacy torch files need them."""
    from resnets_jax.convert.keys import unflatten_variables
    from resnets_jax.convert.shapes import expected_variables
    model = rj.build_model("resnet10t")
    zeros = unflatten_variables({k: np.zeros(s.shape, s.dtype) for k, s in expected_variables(model).items()})
    rj.export_timm_checkpoint(model, zeros, str(tmp_path / "w.safetensors"))  # a timm file, written without torch
    runs = [["list", "resnet10*"],
            ["convert", "resnet10t", "--checkpoint", str(tmp_path / "w.safetensors"), "-o", str(tmp_path / "o.msgpack")]]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", RESNETS_JAX_NO_COMPILE_CACHE="1")
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(runs)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes, imported = json.loads(proc.stdout.strip().splitlines()[-1])
    assert codes == [0, 0] and imported == [], (codes, imported, proc.stderr[-2000:])
    assert (tmp_path / "o.msgpack").is_file()
