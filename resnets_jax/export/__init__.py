"""Artifacts to serve a model without this package (docs/export.md): ``stablehlo`` (``jax.export``,
weights as inputs in safetensors beside it) and ``onnx`` (timm's exporter on timm's module holding
our weights). ``resnets-jax export`` (``tools/export.py``) writes them with their data config."""
from .onnx import export_onnx, run_onnx, timm_module
from .stablehlo import call_compiler_options, export_stablehlo, flat_weights, run_stablehlo

__all__ = ["export_stablehlo", "run_stablehlo", "flat_weights", "call_compiler_options",
           "export_onnx", "run_onnx", "timm_module"]
