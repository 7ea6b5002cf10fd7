"""The one way ume traces a module into ONNX (both `ume export` graphs use it): TorchScript
tracing (not dynamo), opset 17, no autograd, exporter warnings silenced. The exporter warns
about index_add with duplicated indices (an expert's rows are distinct: a frame picks an
expert at most once) and about unfoldable slices: both benign.

Example:
    >>> trace_to_onnx(wrapper, (feats, lens), "enc.onnx", ["feats", "feats_len"],
    ...               ["encoder_out"], {"feats": {1: "T"}, "encoder_out": {1: "T_out"}})
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


def trace_to_onnx(
    module: torch.nn.Module,
    args: tuple,
    out: str | Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
) -> None:
    """Write `module` traced on the example `args` to `out`."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(out),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=17,
            dynamo=False,
        )
