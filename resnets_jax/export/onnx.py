"""A model as an ONNX file, by timm's own exporter (``timm.utils.onnx.onnx_export``, TorchScript
route) on timm's module holding our weights (``export_timm_state_dict``, bit-exact): measured
the better route (docs/export.md: smaller graphs, faster in onnxruntime than jax2onnx's, and no
converter bug to work around). Needs torch, timm and onnx at export time (the ``onnx`` extra),
onnxruntime to run it. The graph takes timm's layout, NCHW."""
from typing import Optional, Sequence

import numpy as np

from .._optional import optional_import, require
from ..convert import export_timm_state_dict
from ..registry import get_pretrained_cfg

ONNX_NEEDS = ("ONNX export (timm's exporter)", "torch", "timm", "onnx")
ONNX_RUN_NEEDS = ("running an ONNX file (onnxruntime)", "onnxruntime")
INPUT_NAME, OUTPUT_NAME = "input0", "output0"  # timm's onnx_export names
# The trace's example batch when the graph's batch is dynamic: above 1, so that no size-1
# dimension is specialised by the tracer (timm does the same for its dynamo route)
TRACE_BATCH = 2


def timm_module(model, variables=None):
    """timm's module of ``model``'s architecture (its variant's ``model_args``, class count and
    input channels), in eval mode, holding ``variables`` (``export_timm_state_dict``, strict)
    when given. Needs torch and timm (``MissingExtraError`` naming the extra)."""
    torch = optional_import("torch", "timm's module")
    timm = optional_import("timm", "timm's module")
    cfg = get_pretrained_cfg(model.variant)
    args = {k: v for k, v in cfg.get("model_args", {}).items() if k not in ("num_classes", "in_chans", "global_pool")}
    tmodel = timm.create_model(cfg["architecture"], pretrained=False, num_classes=model.num_classes,
                               in_chans=model.in_chans, global_pool=model.global_pool, **args)
    if variables is not None:
        sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in export_timm_state_dict(model, variables).items()}
        tmodel.load_state_dict(sd, strict=True)
    return tmodel.eval()


def export_onnx(model, variables, output: str, *, input_size: Sequence[int], batch: Optional[int] = None,
                train: bool = False, opset: Optional[int] = None) -> None:
    """Write ``model`` with ``variables`` as an ONNX file at ``output`` (timm's exporter, checked
    by ``onnx.checker``). Input ``input0``: float32 (B, C, H, W), NCHW as timm; output
    ``output0``: (B, num_classes). ``batch`` None: any batch; an int: fixed in the graph.
    ``train``: batch statistics (timm's ``training=True``). Needs the ``onnx`` extra."""
    require(*ONNX_NEEDS)
    import onnx
    import torch
    from timm.utils.onnx import onnx_export
    tmodel = timm_module(model, variables)
    example = torch.zeros((batch or TRACE_BATCH, model.in_chans, *input_size))
    onnx_export(tmodel, output, example_input=example, training=train, check=True, opset=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    if batch is not None:  # timm always names the batch axis dynamic: fix it as asked
        graph = onnx.load(output)
        for value in (*graph.graph.input, *graph.graph.output):
            value.type.tensor_type.shape.dim[0].dim_value = batch
        onnx.checker.check_model(graph, full_check=True)
        onnx.save(graph, output)


def run_onnx(path: str, x_nchw: np.ndarray, threads: Optional[int] = None) -> np.ndarray:
    """``path`` run by onnxruntime (CPU) on float32 NCHW ``x_nchw``; ``threads``: intra-op threads
    (default onnxruntime's). Needs onnxruntime (the ``onnx`` extra)."""
    ort = optional_import("onnxruntime", ONNX_RUN_NEEDS[0])
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x_nchw, np.float32)})[0]
