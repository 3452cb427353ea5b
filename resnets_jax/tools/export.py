"""``resnets-jax export``: a model (hub weights, or a timm / resnets_jax checkpoint file) as an
artifact to serve without our package: ``stablehlo`` (``jax.export``, weights beside it in
safetensors) or ``onnx`` (timm's exporter), with its data config beside it as JSON, optionally
run in its own runtime and held against timm before anything is moved into place. A failed
export writes nothing; an existing file is replaced only with ``force`` (docs/export.md)."""
import contextlib
import dataclasses
import json
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from safetensors.numpy import load_file

from .. import __version__
from .._optional import available, require
from ..data import resolve_data_config
from ..export.onnx import ONNX_NEEDS, ONNX_RUN_NEEDS, export_onnx, run_onnx, timm_module
from ..export.stablehlo import (
    BATCH_SYMBOL,
    DROPOUT_KEY_SHAPE,
    call_compiler_options,
    export_stablehlo,
    resolve_platforms,
    run_stablehlo,
)
from ..io.files import atomic_output, check_output
from ..io.safetensors import write_safetensors
from ..xla import jit
from .predict import class_names
from .weights import load_model
from .verify import VERIFY_TOL

FORMATS = ("stablehlo", "onnx")
SERIALIZE_NEEDS = ("serializing a jax.export artifact", "flatbuffers")
CONFIG_SUFFIX, WEIGHTS_SUFFIX = ".json", ".weights.safetensors"  # beside the artifact, its stem + these
VERIFY_BATCHES = (1, 3)  # a dynamic batch is checked at 1 (the size a tracer would specialise) and above
# train mode: torch's BatchNorm refuses one value per channel (ResNeSt's attention at batch 1)
VERIFY_TRAIN_BATCHES = (2, 3)


@dataclasses.dataclass
class ExportResult:
    name: str
    format: str
    files: List[str]         # the artifact first, then what lies beside it
    batch: Optional[int]     # None: any batch
    seconds: float
    parity: Optional[Dict[int, float]] = None  # batch -> max |Δlogit| / max |logit|, when verified
    reference: str = ""      # what --verify held the artifact against: 'timm' or 'resnets_jax'


def sidecar_paths(output: str, format: str) -> Tuple[str, ...]:
    """The artifact and the files beside it, named after it whole (so that ``m.onnx`` and
    ``m.stablehlo`` can share a folder): ``m.stablehlo`` -> (``m.stablehlo``, ``m.stablehlo.json``,
    ``m.stablehlo.weights.safetensors``); ``m.onnx`` -> (``m.onnx``, ``m.onnx.json``)."""
    output = os.path.abspath(os.fspath(output))
    return (output, output + CONFIG_SUFFIX) + ((output + WEIGHTS_SUFFIX,) if format == "stablehlo" else ())


def format_of(output: str, format: Optional[str] = None) -> str:
    """The format to write ``output`` in: ``format``, or None for the name's (``.onnx``: onnx,
    anything else: stablehlo). ``ValueError`` for an unknown format or one the name contradicts
    (a StableHLO file named ``.onnx`` would be handed to onnxruntime)."""
    named = "onnx" if output.lower().endswith(".onnx") else None
    format = format or named or "stablehlo"
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if named and format != "onnx":
        raise ValueError(f"{output}: a {format} artifact named .onnx (onnxruntime would be handed it); "
                         "name it otherwise, e.g. .stablehlo")
    if format == "onnx" and not named:
        raise ValueError(f"{output}: an ONNX file is named .onnx")
    return format


def parse_batch(batch) -> Optional[int]:
    """``'dynamic'``/None -> None (any batch); a positive int (or its string) -> that int."""
    if batch is None or batch == "dynamic":
        return None
    try:
        n = int(batch)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(batch).strip() != str(n):
        raise ValueError(f"batch must be a positive integer or 'dynamic', got {batch!r}")
    return n


def artifact_config(name: str, model, format: str, batch: Optional[int], train: bool, input_size, files,
                    platforms: Sequence[str] = (), data_config: Optional[dict] = None,
                    label_names: Optional[Sequence[str]] = None) -> dict:
    """What a server needs beside the artifact: the preprocessing (timm's data config at the
    exported size), class names, the inputs and outputs, and for StableHLO the platforms and the
    compiler options to call it with. ``data_config``/``label_names``: what the weights file
    records (default: the tag's)."""
    data = data_config or resolve_data_config(model)
    layout = "NHWC" if format == "stablehlo" else "NCHW"
    x_shape = [batch or BATCH_SYMBOL, *input_size, model.in_chans]
    if layout == "NCHW":
        x_shape = [x_shape[0], model.in_chans, *input_size]
    cfg = dict(model=name, architecture=model.variant, format=format, mode="train" if train else "eval",
               files=dict(artifact=os.path.basename(files[0]),
                          **({"weights": os.path.basename(files[2])} if format == "stablehlo" else {})),
               input=dict(shape=x_shape, dtype="float32", layout=layout, normalized=True),
               output=dict(shape=[batch or BATCH_SYMBOL, model.num_classes], kind="logits"),
               data_config=dict(data, input_size=(model.in_chans, *input_size)),
               num_classes=model.num_classes, class_names=list(label_names) if label_names else class_names(model),
               resnets_jax_version=__version__)
    if format == "stablehlo":
        cfg.update(platforms=list(platforms), compiler_options=call_compiler_options(platforms),
                   jax_version=jax.__version__)
        if train:
            cfg["input"]["dropout_key"] = dict(shape=list(DROPOUT_KEY_SHAPE), dtype="uint32",
                                               impl="threefry2x32")
    return cfg


def export_model(name: str, output: str, *, format: Optional[str] = None, batch=None, train: bool = False,
                 weights: Optional[str] = None, num_classes: Optional[int] = None, img_size: Optional[int] = None,
                 platforms: Optional[Sequence[str]] = None, force: bool = False, verify: bool = False,
                 use_ema: bool = True, verify_tol: float = VERIFY_TOL,
                 log: Callable[[str], None] = lambda s: None) -> ExportResult:
    """Export ``name`` (``arch``, ``arch.tag``, ``hf-hub:org/repo``) with ``weights`` (a timm or
    resnets_jax checkpoint file, or a fine-tuning run directory; None: the tag's hub weights;
    ``num_classes`` for a file that records none, as ``tools.weights.load_model``) to ``output`` in ``format``
    ('stablehlo' or 'onnx'), its data config beside it (``OUTPUT.json``; StableHLO's weights in
    ``OUTPUT.weights.safetensors``). ``batch``: an int or 'dynamic'/None; ``img_size``: H = W
    (default the data config's); ``platforms``: StableHLO's (default this backend's; 'cpu,cuda'
    bakes in no CPU-only lowering). ``verify``: run the artifact in its runtime (jax.export.deserialize,
    onnxruntime) at batch 1 and 3 (train: 2 and 3; or ``batch``) on random inputs and hold it against timm (ours
    where timm is not installed) within ``verify_tol``, before anything is moved into place.

    Raises ``ValueError`` for bad arguments, an existing output without ``force``, or a failed
    verification; ``MissingExtraError`` (before any work) for a missing optional package."""
    start = time.perf_counter()
    format = format_of(output, format)
    batch = parse_batch(batch)
    if img_size is not None and img_size < 1:  # 0 too: not taken for 'the default'
        raise ValueError(f"img_size {img_size}: expected a size in pixels >= 1")
    if format == "stablehlo":
        require(*SERIALIZE_NEEDS)
        platforms = resolve_platforms(platforms)
        if verify and jax.default_backend().replace("gpu", "cuda") not in platforms:
            raise ValueError(f"--verify runs the artifact here ({jax.default_backend()}), "
                             f"which is not among its platforms {platforms}")
    else:
        if platforms:
            raise ValueError("platforms apply to StableHLO; an ONNX file's runtime picks its own")
        if verify:  # the runtime first: a missing one is named as what --verify needs
            require(*ONNX_RUN_NEEDS)
        require(*ONNX_NEEDS)
    files = [check_output(f, force) for f in sidecar_paths(output, format)]  # fail fast, before any work
    loaded = load_model(name, weights, num_classes=num_classes, use_ema=use_ema, use_test_size=False, log=log)
    model, variables = loaded.model, loaded.variables
    input_size = (img_size, img_size) if img_size is not None else tuple(loaded.data_config["input_size"][1:])
    config = artifact_config(name, model, format, batch, train, input_size, files, platforms or (),
                             loaded.data_config, loaded.label_names)
    parity, reference = None, ""
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_output(f, force)) for f in reversed(files)][::-1]
        log(f"exporting {name} as {format} ({'batch ' + str(batch) if batch else 'any batch'}, "
            f"{'x'.join(map(str, input_size))}, {'train' if train else 'eval'} mode)")
        if format == "stablehlo":
            exported, flat = export_stablehlo(model, variables, input_size=input_size, batch=batch, train=train,
                                              platforms=platforms)
            with open(tmps[0], "wb") as f:
                f.write(exported.serialize())
            write_safetensors(tmps[2], flat)
            del flat
        else:
            export_onnx(model, variables, tmps[0], input_size=input_size, batch=batch, train=train)
        with open(tmps[1], "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        if verify:
            log(f"verifying the {format} artifact in its runtime")
            parity, reference = _verify(model, variables, format, tmps, config, batch, train, input_size)
            worst = max(parity.values())
            if not worst <= verify_tol:
                raise ValueError(f"Verification failed for {name}: max |logit difference| / max |logit| = "
                                 f"{worst:.2e} against {reference}, above {verify_tol:.0e}; nothing written")
    return ExportResult(name=name, format=format, files=files, batch=batch, seconds=time.perf_counter() - start,
                        parity=parity, reference=reference)


def _verify(model, variables, format, tmps, config, batch, train, input_size):
    """batch -> max |Δ| / max |reference| of the artifact, run in its runtime, against timm
    (train mode: timm's batch statistics; a model with dropout or drop path: ours, same key)."""
    rng = np.random.default_rng(0)
    stochastic = train and (getattr(model, "drop_rate", 0) or getattr(model, "drop_path_rate", 0) or batch == 1)
    reference = "timm" if available("torch", "timm") and not stochastic else "resnets_jax"
    key_data = np.zeros(DROPOUT_KEY_SHAPE, np.uint32)
    tmodel = timm_module(model, variables).train(train) if reference == "timm" else None
    parity = {}
    if format == "stablehlo":  # as a server loads it: the written files only
        with open(tmps[0], "rb") as f:
            exported = jax.export.deserialize(bytearray(f.read()))
        w, options = load_file(tmps[2]), config["compiler_options"].get(jax.default_backend())
    for b in ((batch,) if batch else VERIFY_TRAIN_BATCHES if train else VERIFY_BATCHES):
        x = rng.standard_normal((b, *input_size, model.in_chans), np.float32)
        if format == "stablehlo":
            y = run_stablehlo(exported, w, x, options, extra=(key_data,) if train else ())
            y = y[0] if train else y
        else:
            y = run_onnx(tmps[0], x.transpose(0, 3, 1, 2))
        if tmodel is not None:
            import torch
            with torch.no_grad():
                ref = tmodel(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).double().numpy()
        else:
            f = (lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                          rngs={"dropout": jax.random.wrap_key_data(key_data)})[0]) if train \
                else model.apply
            with jax.default_matmul_precision("highest"):
                ref = np.asarray(jit(f)(variables, x), np.float64)
        parity[b] = float(np.abs(np.asarray(y, np.float64) - ref).max() / np.abs(ref).max())
    return parity, reference
