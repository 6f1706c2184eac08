"""3TConv (Ras et al. 2020): the layer, inflating 2D CNNs into it, and the `tconv_stats` analysis.

The task itself is workers.analyses.tconv_stats (workers.tasks imports it when a job asks for it).
"""

from workers.tconv.convert import inflate_2d
from workers.tconv.export import export_onnx
from workers.tconv.fit import ThreeTFit, fit_3t, sampling_matrix
from workers.tconv.layer import TConv3d, affine_matrix, build_kernel
from workers.tconv.parameters import Conv3dWeight, TConvGroup, ThreeTParams, find_layers
from workers.tconv.statistics import LayerStatistics, layer_statistics, model_statistics, trajectories

__all__ = [
    "Conv3dWeight",
    "LayerStatistics",
    "TConv3d",
    "TConvGroup",
    "ThreeTFit",
    "ThreeTParams",
    "affine_matrix",
    "build_kernel",
    "export_onnx",
    "find_layers",
    "fit_3t",
    "inflate_2d",
    "layer_statistics",
    "model_statistics",
    "sampling_matrix",
    "trajectories",
]
