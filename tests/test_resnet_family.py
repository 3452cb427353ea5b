"""timm's resnet.py family on the v1 trunk: the registry's names and arguments against timm's,
the options the generic tests do not reach (dilated anti-aliasing, the conv stem pool pruned by
features_only, the aa size rule), and a symbolic batch through ``jax.export``.
Logits of every architecture: tests/test_parity.py; training mode: tests/test_train.py."""
import ast
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnets_jax as rj
from resnets_jax.models.resnet_blocks import BasicBlock, Bottleneck
from resnets_jax.models.resnet_variants import VARIANTS, model_args
from timm_ref import PARITY_TOL, perturb_, rel_err, timm_forward, timm_state_dict

torch = pytest.importorskip("torch")  # the reference (the [dev] extra; make test installs it)
timm = pytest.importorskip("timm")  # the reference (the [dev] extra; make test installs it)

ONE_EACH = (1, 1, 1, 1)
PATTERNS = ["resnet*", "seresne*", "ecaresne*", "resnext*", "wide_resnet*", "resnetaa*", "resnetblur*",
            "resnetrs*", "senet*", "test_resnet"]


def _unpruned(names):
    return [n for n in names if not n.endswith("_pruned")]  # the pruned ECA-ResNets come with sknet.py


@pytest.mark.parametrize("pattern", PATTERNS)
def test_names_equal_timms(pattern):
    ours = [n for n in rj.list_models(pattern) if n in VARIANTS]
    assert ours == _unpruned(timm.list_models(pattern, module="resnet")) and ours


def test_every_resnet_py_architecture_is_registered():
    import timm.models.resnet
    theirs = _unpruned(timm.list_models(module="resnet"))
    assert sorted(VARIANTS) == sorted(theirs) and len(theirs) == 79
    assert all(n in rj.list_models() for n in theirs)


def _timm_model_args():
    """Each timm entrypoint's ``model_args = dict(...)``, read from its source (our spellings:
    'avg'/'blur' for the aa layer classes, ResNet-RS's SE partial as attn_kwargs)."""
    import timm.models.resnet as tr
    src = inspect.getsource(tr)
    out = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.FunctionDef) and node.name in VARIANTS:
            (expr,) = [ast.get_source_segment(src, st.value) for st in node.body
                       if isinstance(st, ast.Assign) and getattr(st.targets[0], "id", "") == "model_args"]
            out[node.name] = expr
    return out


def test_model_args_equal_timms():
    spellings = {"aa_layer=nn.AvgPool2d": "aa_layer='avg'", "aa_layer=BlurPool2d": "aa_layer='blur'",
                 "attn_layer=attn_layer": "attn_layer='se', attn_kwargs=(('rd_ratio', 0.25),)"}
    for name, expr in _timm_model_args().items():
        for theirs, ours in spellings.items():
            expr = expr.replace(theirs, ours)
        args = eval(expr, {"BasicBlock": BasicBlock, "Bottleneck": Bottleneck})  # timm's source, not user input
        args["block"] = tuple(args["block"]) if isinstance(args["block"], list) else args["block"]
        assert model_args(name) == args, name
    assert "resnetrs50" in _timm_model_args() and "partial(get_attn('se'), rd_ratio=0.25)" in inspect.getsource(
        timm.models.resnet.resnetrs50)  # the SE ratio the spelling above stands for


def _pair(name, **kwargs):
    torch.manual_seed(0)
    tmodel = perturb_(timm.create_model(name, layers=ONE_EACH, **kwargs), seed=3).eval()
    model = rj.build_model(name, layers=ONE_EACH, **kwargs)
    return tmodel, model, rj.convert_timm_state_dict(model, timm_state_dict(tmodel))


@pytest.mark.parametrize("name", ["resnetblur18", "resnetblur50", "resnetaa34d", "resnetrs50"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_dilated_anti_aliasing_matches_timm(name, output_stride):
    """In a dilated stage timm's blocks still anti-alias where the dilation changes, at stride 1
    (BlurPool blurs without downsampling; AvgPool2d(1) is the identity)."""
    tmodel, model, variables = _pair(name, output_stride=output_stride)
    x = np.random.default_rng(0).standard_normal((2, 65, 65, 3)).astype(np.float32)
    fmap = jax.jit(lambda v, x: model.apply(v, x, method="forward_features"))(variables, x)
    ref = timm_forward(tmodel, x, method="forward_features")
    assert fmap.shape == ref.shape and fmap.shape[1] in (65 // output_stride, -(-65 // output_stride))
    assert rel_err(fmap, ref) <= PARITY_TOL


@pytest.mark.parametrize("out_indices, pool_kept", [((0,), False), ((0, 1), True)])
def test_features_only_prunes_the_conv_stem_pool_as_timm(out_indices, pool_kept):
    """ResNet-RS's stem pool has weights (``maxpool.0/1``): a features_only model that stops at the
    stem (``act1``) holds none of them, as timm's prune_intermediate_layers drops ``maxpool``."""
    tmodel, _, _ = _pair("resnetrs50")
    fmodel = rj.build_model("resnetrs50", layers=ONE_EACH, features_only=True, out_indices=out_indices)
    sd = timm_state_dict(tmodel)
    shapes = jax.eval_shape(fmodel.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
    assert ("maxpool_0" in shapes["params"]) == pool_kept
    kept = tuple(rj.convert.flax_to_timm_key("params", (m, "")) for m in shapes["params"])
    fvars = rj.convert_timm_state_dict(fmodel, {k: v for k, v in sd.items() if k.startswith(kept)})
    x = np.random.default_rng(1).standard_normal((2, 65, 65, 3)).astype(np.float32)
    from timm.models._features import FeatureListNet
    with torch.no_grad():
        ref = FeatureListNet(tmodel, out_indices=out_indices).eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    out = fmodel.apply(fvars, x)
    assert [o.shape for o in out] == [tuple(r.permute(0, 2, 3, 1).shape) for r in ref]
    for o, r in zip(out, ref):
        assert rel_err(o, r.numpy().transpose(0, 2, 3, 1)) <= PARITY_TOL


def test_avg_anti_aliasing_on_odd_maps_fails_with_one_clear_error():
    """timm's floor-mode AvgPool2d(2) and the ceil-mode avg-down shortcut disagree on odd maps
    (timm raises a tensor size mismatch at 45 px); ours names the block, both sizes and the fix."""
    model = rj.build_model("resnetaa50d", layers=ONE_EACH)
    with pytest.raises(ValueError, match=r"layer2_0: the residual branch gives \(5, 5\) maps, the shortcut \(6, 6\)"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 45, 45, 3), jnp.float32))
    tmodel = timm.create_model("resnetaa50d", layers=ONE_EACH).eval()
    with pytest.raises(RuntimeError, match="must match the size"), torch.no_grad():
        tmodel(torch.zeros(1, 3, 45, 45))


def _export(model, variables, size, train=False):
    from jax import export
    (b,) = export.symbolic_shape("b")
    fn = (lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])) if train else model.apply
    return export.export(jax.jit(fn))(variables, jax.ShapeDtypeStruct((b, size, size, 3), jnp.float32))


@pytest.mark.parametrize("name", ["resnetblur18", "resnetaa50d", "resnetrs50", "ecaresnet26t", "senet154",
                                  "resnet50_gn", "test_resnet"])
def test_symbolic_batch_exports(name):
    """Everything decided at trace time comes from static sizes (H, W, C), never the batch
    (pool and blur padding, the aa size check, the grouped-conv lowering, GroupNorm's groups):
    the model exports with a symbolic batch, in eval and in training mode."""
    model = rj.build_model(name, layers=ONE_EACH, num_classes=7)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.float32))
    for train in (False, True):
        exported = _export(model, variables, 65, train)
        logits = exported.out_avals[0]
        assert logits.shape[1] == 7 and not isinstance(logits.shape[0], int)  # (b, 7)


def test_symbolic_batch_export_runs_at_any_batch():
    """SE-ResNeXt's grouped convs (a lowering chosen per shape on CPU) and SE, exported once with a
    symbolic batch, give the jitted model's logits at batch 1 and 3."""
    model = rj.build_model("seresnext26d_32x4d", layers=ONE_EACH, num_classes=7)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32))
    rng = np.random.default_rng(0)  # any weights (initializing would compile the model once more)
    variables = jax.tree_util.tree_map(lambda s: (0.1 * rng.standard_normal(s.shape) + 1).astype(s.dtype), shapes)
    exported = _export(model, variables, 33)
    for n in (1, 3):
        xs = np.random.default_rng(n).standard_normal((n, 33, 33, 3)).astype(np.float32)
        # the same program up to the grouped convs' lowering: fp32 sums in another order
        np.testing.assert_allclose(exported.call(variables, xs), jax.jit(model.apply)(variables, xs),
                                   rtol=1e-5, atol=1e-5)


def test_cli_lists_converts_predicts_and_embeds_resnet18(tmp_path, capsys):
    """The command line reaches the new architectures through the registry: list, info, convert
    (verified against timm), predict and embed on a converted perturbed resnet18."""
    import json
    from safetensors.torch import save_file
    from resnets_jax.data import sample_image_path
    from resnets_jax.tools import cli
    torch.manual_seed(0)
    tmodel = perturb_(timm.create_model("resnet18"), seed=5).eval()
    save_file(tmodel.state_dict(), str(tmp_path / "model.safetensors"))

    assert cli.main(["list", "resnet1*"]) == 0
    assert capsys.readouterr().out.split() == rj.list_models("resnet1*") == timm.list_models("resnet1*", module="resnet")
    assert cli.main(["info", "resnet18"]) == 0
    info = capsys.readouterr().out
    assert f"parameters: {sum(p.numel() for p in tmodel.parameters()):,}" in info and "timm/resnet18.a1_in1k" in info

    out = tmp_path / "resnet18.safetensors"
    assert cli.main(["convert", "resnet18", "--checkpoint", str(tmp_path / "model.safetensors"), "--output", str(out),
                     "--verify"]) == 0
    assert "max |logit difference|" in capsys.readouterr().out

    assert cli.main(["predict", "resnet18", sample_image_path(), "--weights", str(out), "--top-k", "3", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top_k"]
    x = rj.predict.load_images(rj.build_model("resnet18"), [sample_image_path()], use_test_size=True)
    with torch.no_grad():
        ref = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).softmax(-1).numpy()[0]
    assert [r["index"] for r in top] == list(np.argsort(-ref)[:3])

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "cat.png").write_bytes(open(sample_image_path(), "rb").read())
    assert cli.main(["embed", str(folder), "--model", "resnet18", "--weights", str(out), "--output",
                     str(tmp_path / "emb.npz"), "--no-progress"]) == 0
    emb = np.load(tmp_path / "emb.npz")["embeddings"]
    with torch.no_grad():
        ref = tmodel.forward_head(tmodel.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())),
                                  pre_logits=True).numpy()
    assert emb.shape == (1, 512) and rel_err(emb, ref) <= PARITY_TOL
