"""``resnets-jax export``: every family as a ``jax.export`` artifact with a symbolic batch, run in
a fresh interpreter that imports neither flax nor resnets_jax, held against timm; ONNX through
timm's exporter, run by onnxruntime; a failed export writes nothing (docs/export.md)."""
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from resnets_jax.io.safetensors import write_safetensors
from resnets_jax.tools import cli
from resnets_jax.tools.export import export_model

torch = pytest.importorskip("torch")  # the reference (the [dev] extra; make test installs it)
timm = pytest.importorskip("timm")
from timm_ref import PARITY_TOL, perturb_, rel_err, timm_state_dict  # noqa: E402

# The smallest registered model of each family line, at 64 px (every stride still runs)
FAMILIES = {"resnest": "resnest14d", "res2net": "res2net50_26w_4s", "resnetv2": "resnetv2_18",
            "bit": "resnetv2_50x1_bit", "resnet-basic": "resnet10t", "resnet-bottleneck": "resnet14t",
            "sk": "skresnet18"}
SIZE = 64
BATCHES = (1, 3)  # 1: the size a tracer would specialise; 3: any other
TRAIN_MODEL, TRAIN_BATCHES = "resnest14d", (2, 3)  # torch's BatchNorm refuses batch 1 in ResNeSt's attention

# What a server runs: JAX, numpy and safetensors only (docs/export.md, "Loading a StableHLO artifact")
LOADER = r"""
import json, sys
import jax, numpy as np
from safetensors.numpy import load_file

def load(path):
    cfg = json.load(open(path + ".json"))
    exported = jax.export.deserialize(bytearray(open(path, "rb").read()))
    weights = load_file(path + ".weights.safetensors")
    options = cfg["compiler_options"].get(jax.default_backend())
    return jax.jit(exported.call, compiler_options=options), weights

inputs = np.load(sys.argv[2])
out = {}
for path in json.loads(sys.argv[1]):
    forward, weights = load(path)
    for key in [k for k in inputs.files if k.startswith(path + "|")]:
        y = forward(weights, inputs[key], *([np.zeros(2, np.uint32)] if path.endswith(".train.stablehlo") else []))
        out[key] = np.asarray(y[0] if isinstance(y, tuple) else y)
assert "flax" not in sys.modules and "resnets_jax" not in sys.modules, "the artifact needs neither"
np.savez(sys.argv[3], **out)
"""


def _perturbed(name, path, seed=0):
    """timm's ``name``, every tensor perturbed, saved as a timm checkpoint at ``path``."""
    tmodel = perturb_(timm.create_model(name), seed=seed).eval()
    write_safetensors(str(path), timm_state_dict(tmodel))
    return tmodel


def _timm(tmodel, x, train=False):
    with torch.no_grad():
        return tmodel.train(train)(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).double().numpy()


def test_stablehlo_every_family_runs_without_our_package(tmp_path):
    """Symbolic batch, eval mode for every family (ResNeSt train mode too, which once asked
    'b - 1 < 1' while tracing): the artifacts run where neither flax nor resnets_jax is imported
    and match timm at batch 1 and 3 within the parity suite's bound (fp32 logits)."""
    rng = np.random.default_rng(0)
    paths, inputs, refs = [], {}, {}
    for name in FAMILIES.values():
        tmodel = _perturbed(name, tmp_path / f"{name}.safetensors")
        for train in ((False, True) if name == TRAIN_MODEL else (False,)):
            out = str(tmp_path / f"{name}{'.train' if train else ''}.stablehlo")
            res = export_model(name, out, weights=str(tmp_path / f"{name}.safetensors"), img_size=SIZE, train=train)
            assert res.files == [out, out + ".json", out + ".weights.safetensors"] and res.batch is None
            paths.append(out)
            with open(out, "rb") as f:  # slices and pads only: LiteRT's converter refuses a gather
                assert "stablehlo.gather" not in jax.export.deserialize(bytearray(f.read())).mlir_module(), out
            for b in (TRAIN_BATCHES if train else BATCHES):
                x = rng.standard_normal((b, SIZE, SIZE, 3), np.float32)
                inputs[f"{out}|{b}"], refs[f"{out}|{b}"] = x, _timm(tmodel, x, train)
    np.savez(tmp_path / "inputs.npz", **inputs)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # resnets_jax not importable either
    # XLA's cheapest code generation: halves the 16 compilations (1 and 3 per artifact); the same
    # ops in the same order, so no less exact (measured: 1e-7 of the optimized build)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    proc = subprocess.run([sys.executable, "-c", LOADER, json.dumps(paths), str(tmp_path / "inputs.npz"),
                           str(tmp_path / "outputs.npz")], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outputs = np.load(tmp_path / "outputs.npz")
    assert sorted(outputs.files) == sorted(refs)
    errors = {k: rel_err(outputs[k], refs[k]) for k in refs}
    assert max(errors.values()) < PARITY_TOL, errors
    cfg = json.load(open(paths[0] + ".json"))
    assert cfg["input"]["shape"] == ["batch", SIZE, SIZE, 3] and cfg["input"]["layout"] == "NHWC"
    assert cfg["data_config"]["input_size"] == [3, SIZE, SIZE] and len(cfg["class_names"]) == 1000
    assert cfg["data_config"]["mean"] == list(timm.data.resolve_data_config({}, model=timm.create_model(
        FAMILIES["resnest"]))["mean"])


def test_onnx_through_the_cli_matches_timm(tmp_path, capsys):
    """``export --format onnx --verify`` (timm's exporter on our weights), then onnxruntime on
    the file at batch 1 and 3 against timm: the ONNX route a user takes."""
    from resnets_jax.export import run_onnx
    name = FAMILIES["resnest"]
    tmodel = _perturbed(name, tmp_path / "w.safetensors", seed=1)
    out = tmp_path / "m.onnx"
    assert cli.main(["export", name, "-o", str(out), "--format", "onnx", "--weights", str(tmp_path / "w.safetensors"),
                     "--img-size", str(SIZE), "--verify"]) == 0
    assert "verified against timm" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.json", "w.safetensors"]
    rng = np.random.default_rng(1)
    for b in BATCHES:
        x = rng.standard_normal((b, SIZE, SIZE, 3), np.float32)
        assert rel_err(run_onnx(str(out), x.transpose(0, 3, 1, 2)), _timm(tmodel, x)) < PARITY_TOL
    assert json.load(open(str(out) + ".json"))["input"]["shape"] == ["batch", 3, SIZE, SIZE]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnest101e", "res2net101_26w_4s", "resnetv2_50"])
def test_onnx_seed_models_match_timm(tmp_path, name, capsys):
    """The seed models at their data config's size through ``resnets-jax export --format onnx``,
    run by onnxruntime at batch 1 and 3 against timm within the parity bound."""
    from resnets_jax.export import run_onnx
    tmodel = _perturbed(name, tmp_path / "w.safetensors", seed=2)
    out = tmp_path / f"{name}.onnx"
    assert cli.main(["export", name, "-o", str(out), "--format", "onnx", "--weights",
                     str(tmp_path / "w.safetensors")]) == 0
    size = json.load(open(str(out) + ".json"))["data_config"]["input_size"][1:]
    rng = np.random.default_rng(2)
    errors = []
    for b in BATCHES:
        x = rng.standard_normal((b, *size, 3), np.float32)
        errors.append(rel_err(run_onnx(str(out), x.transpose(0, 3, 1, 2)), _timm(tmodel, x)))
    print(f"{name} {size}: max |Δlogit| / max |logit| against timm at batch {BATCHES}: {errors}")
    assert max(errors) < PARITY_TOL, errors


def test_failed_export_writes_nothing(tmp_path, capsys):
    """An existing file is never replaced without --force (checked before any work, the data
    config beside it included); a verification that fails leaves no artifact, config, weights or
    temporary file."""
    name = FAMILIES["resnet-basic"]
    _perturbed(name, tmp_path / "w.safetensors")
    (tmp_path / "m.stablehlo.json").write_text("mine")
    before = sorted(os.listdir(tmp_path))
    assert cli.main(["export", name, "-o", str(tmp_path / "m.stablehlo"), "--weights",
                     str(tmp_path / "w.safetensors")]) == 2
    assert "m.stablehlo.json exists; pass --force" in capsys.readouterr().err
    assert cli.main(["export", name, "-o", str(tmp_path / "m.stablehlo"), "--batch", "0"]) == 2
    assert "batch must be a positive integer or 'dynamic', got '0'" in capsys.readouterr().err
    for size in ("0", "-5"):  # 0 is not 'the default size'
        assert cli.main(["export", name, "-o", str(tmp_path / "m.stablehlo"), "--img-size", size]) == 2
        assert f"img_size {size}: expected a size in pixels >= 1" in capsys.readouterr().err
    assert cli.main(["export", name, "-o", str(tmp_path / "m.onnx"), "--format", "stablehlo"]) == 2
    assert "m.onnx: a stablehlo artifact named .onnx" in capsys.readouterr().err  # onnxruntime would get it
    with pytest.raises(ValueError, match="Verification failed .* above 0e[+]00; nothing written"):
        export_model(name, str(tmp_path / "m.stablehlo"), weights=str(tmp_path / "w.safetensors"), img_size=SIZE,
                     batch=2, force=True, verify=True, verify_tol=0.0)
    assert sorted(os.listdir(tmp_path)) == before and (tmp_path / "m.stablehlo.json").read_text() == "mine"


def test_format_follows_the_name():
    from resnets_jax.tools.export import format_of
    assert [format_of(n) for n in ("m.onnx", "M.ONNX", "m.stablehlo", "m")] == ["onnx", "onnx", "stablehlo", "stablehlo"]
    with pytest.raises(ValueError, match="m.stablehlo: an ONNX file is named .onnx"):
        format_of("m.stablehlo", "onnx")


def test_lowering_platforms_bake_in_no_cpu_split():
    """Traced for CPU, a large grouped conv is split into one conv per group (XLA:CPU's faster
    form); traced for CPU and CUDA together, or for a GPU, it stays one grouped conv."""
    from resnets_jax import xla
    big = (1, 64, 64, 64)
    assert xla.split_grouped_conv(big, 2, 3, backend="cpu")
    with xla.lowering_platforms(("cpu",)):
        assert xla.split_grouped_conv(big, 2, 3)
    assert xla.grouped_conv_as_taps(32, 4, backend="cpu")  # few channels per group: taps on CPU only
    for platforms in (("cpu", "cuda"), ("cuda",), ("tpu", "cpu")):
        with xla.lowering_platforms(platforms):
            assert not xla.split_grouped_conv(big, 2, 3), platforms
            assert not xla.grouped_conv_as_taps(32, 4), platforms


@pytest.mark.parametrize("name, kwargs", [("seresnext26d_32x4d", {}), ("ecaresnet26t", {}),
                                          ("resnet26d", {"drop_block_rate": 0.2})])
def test_plain_jax_jit_exports_without_a_gather(name, kwargs):
    """Plain jax.jit traces its own forms (taps for few channels per group, the wide conv, ECA's
    and DropBlock's crops); with a symbolic batch, none of them may index as a gather (LiteRT's
    converter refuses one), in eval or train mode."""
    import resnets_jax as rj
    model = rj.build_model(name, layers=(1, 1, 1, 1), **kwargs)
    variables = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32))
    batch, = jax.export.symbolic_shape("b")
    for train in (False, True):
        forward = jax.jit(lambda v, x, rng: model.apply(v, x, train=train, mutable=["batch_stats"] if train else False,
                                                        rngs={"dropout": rng}))
        module = jax.export.export(forward)(variables, jax.ShapeDtypeStruct((batch, 64, 64, 3), np.float32),
                                            jax.random.key(1)).mlir_module()
        assert not re.findall(r"stablehlo\.(?:dynamic_)?gather(?!<)", module), (name, train)  # the op, not its attribute


def test_train_export_of_a_model_without_batchnorm():
    """Train mode returns the new running statistics; a model with none (BiT's GroupNorm) exports
    too, with an empty dict, rather than failing on a missing collection."""
    import resnets_jax as rj
    from resnets_jax.export import export_stablehlo
    model = rj.build_model(FAMILIES["bit"])  # abstract weights: the program needs only their shapes
    variables = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
    exported, weights = export_stablehlo(model, variables, input_size=(32, 32), train=True)
    logits, stats = jax.tree_util.tree_unflatten(exported.out_tree, exported.out_avals)
    assert stats == {} and logits.shape[1] == model.num_classes and str(logits.shape[0]) == "batch"
    paths = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    assert set(weights) == {"params/" + "/".join(k.key for k in path) for path, _ in paths}  # no batch_stats
