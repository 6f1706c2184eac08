"""kernelscope's own ONNX -> torch interpreter (onnx2torch would drag torchvision and a CUDA torch in).

    build_module(model_proto) -> OnnxModule   an nn.Module running the graph, every node a named submodule
    SUPPORTED_OPS                             the op set; anything else is ModelUnusable(UNSUPPORTED_OP)

Weighted nodes become real layers (nn.Conv3d, nn.Linear, ...) named after the PyTorch module they
were exported from; gradients flow to the input as through the original network.
"""

from workers.onnx_interpreter.build import SUPPORTED_OPS, build_module
from workers.onnx_interpreter.layers import ComputedConv
from workers.onnx_interpreter.module import OnnxModule, OpNode, Scope

__all__ = ["SUPPORTED_OPS", "build_module", "ComputedConv", "OnnxModule", "OpNode", "Scope"]
