"""timm's pruned ECA-ResNets: our width tables against the files timm builds them from
(``timm/models/_pruned/*.txt``, read by ``adapt_model_from_file``), entry by entry, through the
shapes of the model we build. Logits: tests/test_parity.py; the model API: tests/test_model_api.py."""
import pkgutil

import jax
import jax.numpy as jnp
import pytest

import resnets_jax as rj
from resnets_jax.convert.keys import flat_variables, flax_to_timm_key, timm_shape
from resnets_jax.models.resnet_pruned import PRUNED_WIDTHS

pytest.importorskip("timm")  # the reference (the [dev] extra; make test installs it)


def _timm_file(name: str) -> dict:
    """timm's own reading of the file (``adapt_model_from_string``): 'key:[shape]' entries split by '***'."""
    text = pkgutil.get_data("timm.models", f"_pruned/{name}.txt").decode("utf-8").strip()
    entries = {}
    for entry in text.split("***"):
        key, shape = entry.split(":")
        entries[key] = tuple(int(i) for i in shape[1:-1].split(",") if i.strip())
    return entries


@pytest.mark.parametrize("name", sorted(PRUNED_WIDTHS))
def test_pruned_widths_match_timms_file(name):
    """Every weight timm's file lists has that shape in our model (conv/linear weights in timm's
    layout; ECA's 1-d kernel too, which timm's pruning leaves at the unpruned size), and every
    weight of our model is listed: the table is the file."""
    entries = {k: v for k, v in _timm_file(name).items() if not k.endswith("_M.weight")}  # no layer: the
    # files' per-stage summaries (layer1_2_conv3_M: [unpruned, pruned] width)
    model = rj.build_model(name)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
    ours = {flax_to_timm_key(*k): timm_shape(k, v.shape) for k, v in flat_variables(shapes).items()}
    weights = {k: v for k, v in ours.items() if k.endswith(".weight")}
    assert sorted(weights) == sorted(entries)
    assert {k: weights[k] for k in entries} == entries
    assert model.num_features == entries["fc.weight"][1]


def test_pruned_depths_must_fit_the_table():
    with pytest.raises(ValueError, match=r"layers=\(3, 5, 6, 3\) does not fit the pruned widths, which hold "
                                         r"\(3, 4, 6, 3\) blocks per stage"):
        rj.build_model("ecaresnet50d_pruned", layers=(3, 5, 6, 3))
