"""Each optional package made unimportable (a ``sys.meta_path`` blocker in a fresh interpreter):
the command line says ``error: <what> needs <pkg>: pip install 'resnets-jax[<extra>]'`` in one
line, exits 2 and writes nothing; the library raises ``MissingExtraError`` (an ``ImportError``)
naming the extra; the core (reading and converting safetensors) works without any of them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resnets_jax.io.safetensors import write_safetensors

REPO_ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: blocks the packages named in argv[1], then runs each CLI argv of
# argv[2] through cli.main (what the resnets-jax script runs) and each library call of argv[3],
# and prints [exit code, stdout, stderr] per CLI run and [error type, is ImportError, message]
# per library call.
RUNNER = r"""
import contextlib, importlib, io, json, sys
BLOCKED = set(sys.argv[1].split(","))

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)

sys.meta_path.insert(0, Blocker())
from resnets_jax.tools import cli
runs, calls = [], []
for argv in json.loads(sys.argv[2]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    runs.append([code, out.getvalue(), err.getvalue()])
for call in json.loads(sys.argv[3]):
    try:
        exec(call, {})
        calls.append(["ok", False, ""])
    except Exception as e:
        calls.append([type(e).__name__, isinstance(e, ImportError), str(e)])
print(json.dumps([runs, calls]))
"""


def _run_blocked(blocked, cli_runs, calls=(), cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", RESNETS_JAX_NO_COMPILE_CACHE="1")
    proc = subprocess.run([sys.executable, "-c", RUNNER, ",".join(blocked), json.dumps(cli_runs), json.dumps(calls)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _snapshot(directory):
    return sorted(str(p.relative_to(directory)) for p in Path(directory).rglob("*"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("optional")
    write_safetensors(d / "weights.safetensors", {"w": np.zeros(2, np.float32)})
    for c in ("a", "b"):  # a data folder as finetune takes it
        (d / "data" / c).mkdir(parents=True)
        (d / "data" / c / "x.png").write_bytes(b"not read: the check comes first")
    return d


def _line(extra, package, what):
    return f"error: {what} needs {package}: pip install 'resnets-jax[{extra}]'\n"


@pytest.mark.parametrize("blocked, package", [(("torch", "timm"), "torch"), (("timm",), "timm")])
def test_torch_extra(files, tmp_path, blocked, package):
    """The demo checks before fetching or writing its fallback file; ``convert --verify`` fails
    rather than converting unverified; a legacy torch file names the extra."""
    legacy = tmp_path / "legacy.pth"
    if package == "torch":
        torch = pytest.importorskip("torch")
        torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    out = tmp_path / "out.safetensors"
    runs = [["demo"], ["convert", "resnetv2_18", "--checkpoint", str(files / "weights.safetensors"), "-o", str(out),
                       "--verify"],
            ["convert", "resnetv2_50x1_bit.goog_in21k", "--from-hub", "--output-dir", str(tmp_path / "many"),
             "--verify"]]
    if package == "torch":
        runs.append(["convert", "resnetv2_18", "--checkpoint", str(legacy), "-o", str(out)])
    before = _snapshot(tmp_path)
    results, calls = _run_blocked(blocked, runs, [
        "from resnets_jax.tools.verify import timm_logits; timm_logits(None, None, None)"], cwd=tmp_path)
    demo, verify, verify_many = results[:3]
    assert demo == [2, "", _line("torch", package, "the demo (held against timm)")]
    assert verify == verify_many == [2, "", _line("torch", package, "holding the result against timm (--verify)")]
    if package == "torch":
        code, stdout, stderr = results[3]
        assert code == 2 and stderr.count("\n") == 1 and "the legacy pre-zip torch format" in stderr
        assert "reading it needs torch: pip install 'resnets-jax[torch]', or re-save it" in stderr
    assert calls == [["MissingExtraError", True,
                      f"timm's reference logits needs {package}: pip install 'resnets-jax[torch]'"]]
    assert _snapshot(tmp_path) == before  # no demo_out, no output, no output dir, no temporary file


@pytest.mark.parametrize("blocked, package", [("grain", "grain"), ("orbax", "orbax-checkpoint")])
def test_train_extra(files, tmp_path, blocked, package):
    """``finetune`` checks before creating its run directory; the library's train modules raise
    ``MissingExtraError``; the core still reads and converts without the extra."""
    run_dir = tmp_path / "run"
    load = f"from resnets_jax.train.finetune import load_finetuned; load_finetuned({str(tmp_path)!r})"
    validate = [["validate", "resnetv2_18", str(files / "data"), "--weights", str(files / "weights.safetensors"),
                 "--results-file", str(tmp_path / "results.json")]] if blocked == "grain" else []
    (results, *validated), calls = _run_blocked([blocked], [["finetune", "resnetv2_18", str(files / "data"), "-o",
                                                             str(run_dir), "--epochs", "1"]] + validate, [
        "import resnets_jax.data.grain_pipeline",
        "import resnets_jax.train.checkpoint",
        f"import resnets_jax as rj; assert rj.load_state_dict({str(files / 'weights.safetensors')!r})['w'].shape == (2,)",
    ] + ([load] if blocked == "orbax" else []))
    code, stdout, stderr = results
    assert code == 2 and stdout == "" and stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert stderr.endswith(f" needs {package}: pip install 'resnets-jax[train]'\n")
    assert not run_dir.exists()
    if validate:  # before the model is loaded; no results file
        assert validated == [[2, "", _line("train", package, "validate's input pipeline (Grain)")]]
        assert not (tmp_path / "results.json").exists()
    grain_msg = _line("train", package, "fine-tuning's input pipeline (resnets_jax.data.grain_pipeline)")[7:-1]
    state_msg = _line("train", package, "fine-tuning's train state (resnets_jax.train.checkpoint)")[7:-1]
    ok = ["ok", False, ""]
    assert calls[0] == (["MissingExtraError", True, grain_msg] if blocked == "grain" else ok)
    assert calls[1] == (["MissingExtraError", True, state_msg] if blocked == "orbax" else ok)
    assert calls[2] == ok  # the core needs neither
    if blocked == "orbax":  # reading a run's weights needs orbax (grain only to resume one)
        assert calls[3] == ["MissingExtraError", True, state_msg]


def test_dependency_ranges_admit_current_jax_and_the_tested_versions():
    """pyproject.toml's ranges admit JAX 0.11 (what GPU images ship; issue 23) and every version
    constraints.txt pins (the ones the suite ran with)."""
    import tomllib
    from packaging.requirements import Requirement
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = {r.name: r for r in map(Requirement, project["dependencies"] + project["optional-dependencies"]["dev"])}
    for name in ("jax", "jaxlib"):
        assert reqs[name].specifier.contains("0.11.2"), reqs[name]
    pins = [line.split("==") for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")]
    assert {"jax", "jaxlib"} <= {name for name, _ in pins}
    for name, version in pins:
        if name in reqs:
            assert reqs[name].specifier.contains(version), (name, version, str(reqs[name]))


def test_export_extras(files, tmp_path):
    """``export`` checks its extras before any work: StableHLO's serializer (flatbuffers, the
    ``export`` extra), onnxruntime for an ONNX ``--verify`` (the ``onnx`` extra); nothing written."""
    w = str(files / "weights.safetensors")
    before = _snapshot(tmp_path)
    (stablehlo, onnx_verify), _ = _run_blocked(["flatbuffers", "onnxruntime"], [
        ["export", "resnetv2_18", "-o", str(tmp_path / "m.stablehlo"), "--weights", w],
        ["export", "resnetv2_18", "-o", str(tmp_path / "m.onnx"), "--format", "onnx", "--weights", w, "--verify"]])
    assert stablehlo == [2, "", _line("export", "flatbuffers", "serializing a jax.export artifact")]
    assert onnx_verify == [2, "", _line("onnx", "onnxruntime", "running an ONNX file (onnxruntime)")]
    assert _snapshot(tmp_path) == before
