"""The ONNX -> torch interpreter against onnxruntime: op by op, on whole exported CNNs, and for gradients.

Op cases are single-node graphs with seeded random inputs; each is run by onnxruntime (the reference)
and by the interpreter. Whole-model cases export PyTorch networks (a 3D CNN, a 2D ResNet-ish net with
BatchNorm and residual connections, a 3TConv layer, a dynamic-batch export by the default exporter) and
check outputs against onnxruntime and input gradients against the original torch module.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from workers.errors import ModelUnusable
from workers.onnx_interpreter import ComputedConv, OnnxModule, OpNode, build_module
from workers.onnx_interpreter import ops as onnx_ops

torch.set_num_threads(1)
OPSET = 20

F32 = TensorProto.FLOAT
I64 = TensorProto.INT64


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def single_node(
    op: str,
    inputs: dict[str, np.ndarray],
    attrs: dict[str, Any] | None = None,
    inits: dict[str, np.ndarray] | None = None,
    order: list[str] | None = None,
    outputs: int = 1,
    out_type: int = F32,
    opset: int = OPSET,
) -> onnx.ModelProto:
    """A one-node model: `inputs` become graph inputs, `inits` initializers, `order` the node's input order."""
    inits = inits or {}
    names = order or [*inputs, *inits]
    node = helper.make_node(op, names, [f"y{i}" for i in range(outputs)], name=f"the_{op.lower()}", **(attrs or {}))
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info(f"y{i}", out_type, None) for i in range(outputs)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def run_both(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray], OnnxModule]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = session.run(None, inputs)
    module = build_module(model)
    with torch.no_grad():
        out = module(*[torch.from_numpy(v) for v in inputs.values()])
    ours = [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]
    return ours, reference, module


def assert_matches(model: onnx.ModelProto, inputs: dict[str, np.ndarray], atol: float = 1e-5) -> OnnxModule:
    ours, reference, module = run_both(model, inputs)
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        assert a.shape == b.shape, (a.shape, b.shape)
        if b.dtype.kind == "f":
            scale = max(1.0, float(np.abs(b).max()) if b.size else 1.0)
            np.testing.assert_allclose(a, b, atol=atol * scale, rtol=0)
        else:
            np.testing.assert_array_equal(a, b)
    return module


def f32(rng: np.random.Generator, *shape: int, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    return rng.uniform(lo, hi, size=shape).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


# ---------------------------------------------------------------- convolutions

CONV_CASES = [
    # (x shape, w shape, bias, attrs)
    ((2, 4, 5, 7, 6), (6, 2, 3, 3, 2), False, {"group": 2, "pads": [1, 0, 1, 0, 1, 1], "strides": [1, 2, 1], "dilations": [1, 1, 2]}),
    ((1, 3, 9, 8), (4, 3, 3, 3), True, {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((1, 3, 9, 8), (4, 3, 2, 4), False, {"auto_pad": "SAME_LOWER", "strides": [2, 3]}),
    ((2, 3, 10), (5, 3, 4), True, {"pads": [2, 1]}),
    ((1, 2, 6, 6), (4, 2, 3, 3), True, {"pads": [1, 1, 1, 1], "strides": [2, 2], "dilations": [2, 1]}),
    ((1, 2, 5, 5, 5), (3, 2, 1, 3, 3), True, {"auto_pad": "VALID"}),
]


@pytest.mark.parametrize("x_shape,w_shape,bias,attrs", CONV_CASES)
def test_conv_with_initializer_weight_is_a_torch_conv_layer(x_shape, w_shape, bias, attrs) -> None:
    rng = _rng(1)
    inits = {"w": f32(rng, *w_shape)}
    if bias:
        inits["b"] = f32(rng, w_shape[0])
    x = {"x": f32(rng, *x_shape)}
    module = assert_matches(single_node("Conv", x, attrs, inits), x)
    rank = len(w_shape) - 2
    layer = dict(module.named_modules())[module.tensor_modules["y0"]]
    assert isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)[rank - 1])
    assert tuple(layer.weight.shape) == w_shape


def test_conv_with_a_computed_weight_runs_as_computed_conv() -> None:
    rng = _rng(2)
    x = {"x": f32(rng, 2, 3, 4, 6, 6), "w": f32(rng, 5, 3, 2, 3, 3)}
    module = assert_matches(single_node("Conv", x, {"pads": [0, 1, 1, 1, 1, 0]}), x)
    layer = dict(module.named_modules())[module.tensor_modules["y0"]]
    assert isinstance(layer, ComputedConv) and layer.kind == "Conv3d"
    assert tuple(layer.weight.shape) == (5, 3, 2, 3, 3)


CONV_TRANSPOSE_CASES = [
    ((1, 4, 5, 5), (4, 3, 3, 3), True, {"strides": [2, 2], "pads": [1, 0, 1, 0], "output_padding": [1, 1]}),
    ((1, 4, 3, 4, 4), (4, 1, 2, 3, 3), False, {"group": 2, "strides": [1, 2, 2], "dilations": [1, 1, 2]}),
    ((1, 2, 4, 4), (2, 2, 3, 3), True, {"strides": [2, 2], "output_shape": [8, 8]}),
    ((2, 3, 7), (3, 2, 4), True, {"strides": [3], "auto_pad": "SAME_UPPER"}),
]


@pytest.mark.parametrize("x_shape,w_shape,bias,attrs", CONV_TRANSPOSE_CASES)
def test_conv_transpose(x_shape, w_shape, bias, attrs) -> None:
    rng = _rng(3)
    inits = {"w": f32(rng, *w_shape)}
    if bias:
        inits["b"] = f32(rng, w_shape[1] * attrs.get("group", 1))
    x = {"x": f32(rng, *x_shape)}
    module = assert_matches(single_node("ConvTranspose", x, attrs, inits), x)
    layer = dict(module.named_modules())[module.tensor_modules["y0"]]
    assert isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[len(w_shape) - 3])


# ---------------------------------------------------------------- pooling

POOL_CASES = [
    ("MaxPool", (1, 2, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [0, 1, 1, 0]}),
    ("MaxPool", (1, 2, 8, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1}),
    ("MaxPool", (1, 2, 6, 6, 6), {"kernel_shape": [2, 2, 2], "dilations": [1, 2, 2]}),
    ("MaxPool", (1, 2, 7, 9), {"kernel_shape": [3, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ("AveragePool", (1, 2, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 0, 1]}),
    ("AveragePool", (1, 2, 6, 7, 5), {"kernel_shape": [3, 3, 3], "pads": [1, 1, 1, 1, 1, 1], "count_include_pad": 1}),
    ("AveragePool", (1, 2, 6, 7, 5), {"kernel_shape": [2, 3, 3], "strides": [2, 2, 2], "pads": [0, 1, 1, 0, 1, 1]}),
    ("AveragePool", (1, 3, 9), {"kernel_shape": [4], "strides": [2], "auto_pad": "SAME_LOWER"}),
    ("GlobalAveragePool", (2, 3, 4, 5, 6), {}),
    ("GlobalMaxPool", (2, 3, 4, 5), {}),
]


@pytest.mark.parametrize("op,x_shape,attrs", POOL_CASES)
def test_pooling(op, x_shape, attrs) -> None:
    x = {"x": f32(_rng(4), *x_shape)}
    assert_matches(single_node(op, x, attrs), x)


# ---------------------------------------------------------------- elementwise, activations

UNARY = [
    ("Relu", {}), ("LeakyRelu", {"alpha": 0.2}), ("Sigmoid", {}), ("Tanh", {}), ("HardSwish", {}),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}), ("Gelu", {}), ("Gelu", {"approximate": "tanh"}), ("Erf", {}),
    ("Elu", {"alpha": 0.7}), ("Softplus", {}), ("Sin", {}), ("Cos", {}), ("Neg", {}), ("Abs", {}), ("Exp", {}),
    ("Identity", {}), ("Floor", {}), ("Ceil", {}), ("Sign", {}),
    ("Softmax", {"axis": 1}), ("LogSoftmax", {}), ("Flatten", {"axis": 2}), ("Transpose", {"perm": [2, 0, 3, 1]}),
    ("Transpose", {}), ("ReduceMax", {}), ("ReduceMin", {"keepdims": 0}),
]


@pytest.mark.parametrize("op,attrs", UNARY, ids=[f"{op}-{i}" for i, (op, _) in enumerate(UNARY)])
def test_unary(op, attrs) -> None:
    x = {"x": f32(_rng(5), 2, 3, 4, 5, lo=-3, hi=3)}
    assert_matches(single_node(op, x, attrs), x)


@pytest.mark.parametrize(
    "op,attrs",
    [
        ("ReduceMax", {"axes": [1, 3]}),
        ("ReduceMin", {"keepdims": 0, "axes": [2]}),
        ("ReduceMean", {"axes": [-1]}),
        ("Softmax", {"axis": 1}),  # before opset 13: flattened at the axis, normalised over the rest
        ("LogSoftmax", {"axis": 2}),
        ("Squeeze", {"axes": [1]}),
        ("Unsqueeze", {"axes": [0, 3]}),
    ],
)
def test_older_opset_attribute_forms(op, attrs) -> None:
    x = {"x": f32(_rng(5), 2, 1, 4, 5, lo=-3, hi=3)}
    assert_matches(single_node(op, x, attrs, opset=11), x)


def test_positive_domain_ops() -> None:
    for op in ("Sqrt", "Log", "Reciprocal"):
        x = {"x": f32(_rng(6), 3, 4, lo=0.1, hi=4)}
        assert_matches(single_node(op, x), x)


def test_binary_ops_broadcast() -> None:
    rng = _rng(7)
    for op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean"):
        x = {"a": f32(rng, 2, 3, 4), "b": f32(rng, 3, 1, lo=0.5, hi=2)}
        assert_matches(single_node(op, x), x)
    x = {"a": f32(rng, 2, 3, lo=0.5, hi=2), "b": f32(rng, 2, 3)}
    assert_matches(single_node("Pow", x), x)
    x = {"a": f32(rng, 2, 3), "b": f32(rng, 2, 3), "c": f32(rng, 1, 3)}
    assert_matches(single_node("Max", x), x)


def test_clip_prelu_where_equal_cast() -> None:
    rng = _rng(8)
    x = {"x": f32(rng, 2, 3, 4, 4, lo=-3, hi=3)}
    assert_matches(single_node("Clip", x, inits={"lo": np.array(-0.5, np.float32), "hi": np.array(1.5, np.float32)}), x)
    assert_matches(single_node("PRelu", x, inits={"slope": f32(rng, 3, 1, 1)}), x)
    cond = rng.uniform(size=(3, 4, 4)) > 0.5
    assert_matches(single_node("Where", x, inits={"c": cond, "other": f32(rng, 4)}, order=["c", "x", "other"]), x)
    y = {"x": np.array([1, 2, 3, 4], np.int64)}
    assert_matches(single_node("Equal", y, inits={"k": np.array([1, 0, 3, 0], np.int64)}, out_type=TensorProto.BOOL), y)
    assert_matches(single_node("Cast", x, {"to": TensorProto.INT64}, out_type=I64), x)


# ---------------------------------------------------------------- dense and normalisation

def test_gemm_becomes_linear_and_general_gemm_runs() -> None:
    rng = _rng(9)
    a = {"a": f32(rng, 4, 5)}
    module = assert_matches(single_node("Gemm", a, {"transB": 1}, inits={"w": f32(rng, 6, 5), "c": f32(rng, 6)}), a)
    assert isinstance(dict(module.named_modules())[module.tensor_modules["y0"]], nn.Linear)
    at = {"a": f32(rng, 5, 4)}
    general = single_node("Gemm", at, {"transA": 1, "alpha": 0.5, "beta": 2.0}, inits={"w": f32(rng, 5, 3), "c": f32(rng, 1, 3)})
    module = assert_matches(general, at)
    assert not isinstance(dict(module.named_modules())[module.tensor_modules["y0"]], nn.Linear)


def test_matmul_with_initializer_is_linear_and_batched_matmul_runs() -> None:
    rng = _rng(10)
    x = {"x": f32(rng, 2, 4, 5)}
    module = assert_matches(single_node("MatMul", x, inits={"w": f32(rng, 5, 3)}), x)
    assert isinstance(dict(module.named_modules())[module.tensor_modules["y0"]], nn.Linear)
    xy = {"x": f32(rng, 2, 3, 4), "y": f32(rng, 2, 4, 5)}
    assert_matches(single_node("MatMul", xy), xy)


def test_normalisations() -> None:
    rng = _rng(11)
    x = {"x": f32(rng, 2, 3, 4, 5, 6)}
    stats = {"s": f32(rng, 3), "b": f32(rng, 3), "m": f32(rng, 3), "v": f32(rng, 3, lo=0.5, hi=2)}
    assert_matches(single_node("BatchNormalization", x, {"epsilon": 1e-3}, inits=stats), x)
    assert_matches(single_node("InstanceNormalization", x, inits={"s": f32(rng, 3), "b": f32(rng, 3)}), x)
    assert_matches(single_node("LayerNormalization", x, {"axis": -2}, inits={"s": f32(rng, 5, 6), "b": f32(rng, 5, 6)}), x)


# ---------------------------------------------------------------- shapes and layout

def test_shape_ops() -> None:
    rng = _rng(12)
    x = {"x": f32(rng, 2, 3, 4, 5)}
    assert_matches(single_node("Reshape", x, inits={"s": i64(0, -1, 5)}), x)
    assert_matches(single_node("Squeeze", {"x": f32(rng, 2, 1, 4, 1)}, inits={"a": i64(1, -1)}), {"x": f32(rng, 2, 1, 4, 1)})
    assert_matches(single_node("Unsqueeze", x, inits={"a": i64(-1, 0)}), x)
    xy = {"x": f32(rng, 2, 3, 4), "y": f32(rng, 2, 5, 4)}
    assert_matches(single_node("Concat", xy, {"axis": 1}), xy)
    assert_matches(single_node("Split", {"x": f32(rng, 2, 5)}, {"axis": 1}, inits={"s": i64(2, 3)}, outputs=2), {"x": f32(rng, 2, 5)})
    z = {"x": f32(rng, 2, 7)}
    assert_matches(single_node("Split", z, {"axis": 1, "num_outputs": 3}, outputs=3), z)
    assert_matches(single_node("Shape", x, {"start": 1, "end": -1}, out_type=I64), x)
    assert_matches(single_node("Gather", x, {"axis": 1}, inits={"i": np.array([[0, -1], [2, 1]], np.int64)}), x)
    assert_matches(single_node("Gather", x, {"axis": 2}, inits={"i": np.array(-2, np.int64)}), x)
    # `x.view(x.size(0), -1)` with a dynamic batch: Shape, then a 0-d Gather on the 1-d shape vector (a scalar)
    assert_matches(single_node("Gather", {"s": i64(8, 3, 4)}, {"axis": 0}, inits={"i": np.array(0, np.int64)}, out_type=I64), {"s": i64(8, 3, 4)})
    assert_matches(single_node("Expand", {"x": f32(rng, 3, 1)}, inits={"s": i64(2, 1, 4)}), {"x": f32(rng, 3, 1)})
    assert_matches(single_node("Tile", {"x": f32(rng, 2, 3)}, inits={"r": i64(2, 3)}), {"x": f32(rng, 2, 3)})
    assert_matches(single_node("ReduceMean", x, {"keepdims": 0}, inits={"a": i64(1, 3)}), x)
    assert_matches(single_node("ReduceSum", x, inits={"a": i64(-1)}), x)
    shape = {"s": i64(2, 3)}
    fill = numpy_helper.from_array(np.array([1.5], np.float32), "value")
    assert_matches(single_node("ConstantOfShape", shape, {"value": fill}), shape)


@pytest.mark.parametrize(
    "starts,ends,axes,steps",
    [
        ([1, 0], [3, 100], [1, 3], [1, 2]),
        ([-1], [-1000], [2], [-1]),
        ([3, 2], [0, -100], [3, 1], [-2, -1]),
        ([0], [2], None, None),
    ],
)
def test_slice(starts, ends, axes, steps) -> None:
    x = {"x": f32(_rng(13), 3, 4, 5, 6)}
    inits = {"s": i64(*starts), "e": i64(*ends)}
    if axes is not None:
        inits["a"] = i64(*axes)
    if steps is not None:
        inits["t"] = i64(*steps)
    assert_matches(single_node("Slice", x, inits=inits), x)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad(mode: str) -> None:
    x = {"x": f32(_rng(14), 1, 2, 5, 6)}
    inits: dict[str, np.ndarray] = {"p": i64(0, 0, 2, 1, 0, 0, 1, 3)}
    if mode == "constant":
        inits["v"] = np.array(0.25, np.float32)
    assert_matches(single_node("Pad", x, {"mode": mode}, inits=inits), x)


# ---------------------------------------------------------------- sampling (3TConv exports)

@pytest.mark.parametrize("align", [0, 1])
def test_affine_grid_and_grid_sample_2d_and_3d(align: int) -> None:
    rng = _rng(15)
    theta = {"t": f32(rng, 2, 2, 3)}
    assert_matches(single_node("AffineGrid", theta, {"align_corners": align}, inits={"s": i64(2, 3, 5, 6)}), theta)
    theta3 = {"t": f32(rng, 1, 3, 4)}
    assert_matches(single_node("AffineGrid", theta3, {"align_corners": align}, inits={"s": i64(1, 2, 3, 4, 5)}), theta3)
    for padding in ("zeros", "border"):
        xg = {"x": f32(rng, 2, 3, 5, 6), "g": f32(rng, 2, 4, 4, 2, lo=-1.2, hi=1.2)}
        assert_matches(single_node("GridSample", xg, {"align_corners": align, "padding_mode": padding}), xg)
    xg3 = {"x": f32(rng, 1, 2, 3, 4, 5), "g": f32(rng, 1, 2, 3, 3, 3, lo=-1.1, hi=1.1)}
    assert_matches(single_node("GridSample", xg3, {"align_corners": align}), xg3)


def test_constant_node_and_dropout_chain() -> None:
    x = helper.make_tensor_value_info("x", F32, [2, 3])
    nodes = [
        helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.full((3,), 2.0, np.float32))),
        helper.make_node("Mul", ["x", "c"], ["m"], name="scale"),
        helper.make_node("Dropout", ["m"], ["y"], name="drop"),
    ]
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", F32, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    inputs = {"x": f32(_rng(16), 2, 3)}
    assert_matches(model, inputs)


def test_unsupported_op_names_the_op_and_the_node_and_the_format_to_use() -> None:
    x = {"x": f32(_rng(17), 1, 2, 4, 4)}
    model = single_node("RandomNormalLike", x)
    with pytest.raises(ModelUnusable) as err:
        build_module(model)
    assert err.value.reason == "UNSUPPORTED_OP"
    assert "RandomNormalLike" in err.value.message and "the_randomnormallike" in err.value.message
    assert "torch.export" in err.value.message and ".pt2" in err.value.message


def test_every_op_of_the_issue_is_supported() -> None:
    from workers.onnx_interpreter import SUPPORTED_OPS

    required = (
        "Conv ConvTranspose BatchNormalization MaxPool AveragePool GlobalAveragePool GlobalMaxPool Relu LeakyRelu "
        "Sigmoid Tanh Clip HardSwish Gelu Erf Gemm MatMul Add Sub Mul Div Flatten Reshape Transpose Squeeze Unsqueeze "
        "Concat Pad Slice Shape Gather ReduceMean Softmax Dropout Identity Constant Sin Cos AffineGrid GridSample"
    ).split()
    assert set(required) <= SUPPORTED_OPS
    assert set(onnx_ops.OPS) <= SUPPORTED_OPS


# ---------------------------------------------------------------- whole exported networks

class _Block(nn.Module):
    def __init__(self, c: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c if stride == 1 else c // 2, c, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.down = None if stride == 1 else nn.Sequential(nn.Conv2d(c // 2, c, 1, stride=stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.down is None else self.down(x)
        return torch.relu(skip + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ResNetish(nn.Module):
    """A 2D CNN with residual connections and BatchNorm (running statistics made non-trivial)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = nn.Sequential(_Block(8), _Block(16, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)
        gen = torch.Generator().manual_seed(0)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        return self.fc(torch.flatten(self.pool(self.layer1(x)), 1))


def _legacy_onnx(model: nn.Module, example: torch.Tensor, **kw: Any) -> onnx.ModelProto:
    """torch's TorchScript-based exporter (fast); dynamic batch axis on input "x"."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(), (example,), buffer, dynamo=False, opset_version=OPSET, input_names=["x"],
            output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, **kw,
        )
    return onnx.load_from_string(buffer.getvalue())


def _check_against_ort_and_torch(proto: onnx.ModelProto, original: nn.Module, x: torch.Tensor) -> OnnxModule:
    """Outputs match onnxruntime to 1e-4 (of the output scale) and input gradients match torch's."""
    ours, reference, module = run_both(proto, {"x": x.numpy()})
    scale = max(1.0, float(np.abs(reference[0]).max()))
    assert float(np.abs(ours[0] - reference[0]).max()) <= 1e-4 * scale
    xi = x.clone().requires_grad_(True)
    module(xi).square().sum().backward()
    xt = x.clone().requires_grad_(True)
    original(xt).square().sum().backward()
    assert xi.grad is not None and xt.grad is not None and float(xt.grad.abs().max()) > 0
    torch.testing.assert_close(xi.grad, xt.grad, atol=1e-4 * float(xt.grad.abs().max()), rtol=1e-4)
    return module


def test_3d_cnn_matches_onnxruntime_and_torch_gradients() -> None:
    from workers.samples.models import C3DSmall

    torch.manual_seed(0)
    model = C3DSmall().eval()
    proto = _legacy_onnx(model, torch.zeros(1, 3, 8, 32, 32))
    x = torch.randn(3, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    module = _check_against_ort_and_torch(proto, model, x)
    assert {"conv1", "conv2", "conv3", "fc"} <= set(module.layers)
    assert isinstance(dict(module.named_modules())["conv2"], nn.Conv3d)


def test_resnet_with_batchnorm_matches_onnxruntime_and_hooks_see_torch_activations() -> None:
    torch.manual_seed(0)
    model = ResNetish().eval()
    # Without constant folding the BatchNormalization nodes stay in the graph (folded, they vanish into Conv).
    proto = _legacy_onnx(model, torch.zeros(1, 3, 16, 16), do_constant_folding=False)
    assert "BatchNormalization" in {n.op_type for n in proto.graph.node}
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    module = _check_against_ort_and_torch(proto, model, x)
    # Layer names are the PyTorch paths; a hook there sees what the torch module computes.
    seen: dict[str, torch.Tensor] = {}
    ours = dict(module.named_modules())["layer1.1.conv2"]
    ours.register_forward_hook(lambda m, i, o: seen.setdefault("onnx", o))
    model.layer1[1].conv2.register_forward_hook(lambda m, i, o: seen.setdefault("torch", o))
    with torch.no_grad():
        module(x)
        model(x)
    torch.testing.assert_close(seen["onnx"], seen["torch"], atol=1e-5, rtol=1e-5)


def test_3tconv_export_builds_its_kernel_in_the_graph() -> None:
    from workers.tconv.layer import TConv3d

    class TNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = TConv3d(3, 4, (3, 3, 3), padding=1)
            self.fc = nn.Linear(4, 2)
            gen = torch.Generator().manual_seed(3)
            with torch.no_grad():
                self.conv1.scale.copy_(0.8 + 0.4 * torch.rand(self.conv1.scale.shape, generator=gen))
                self.conv1.rotate.copy_(0.6 * torch.rand(self.conv1.rotate.shape, generator=gen) - 0.3)
                self.conv1.translate_x.copy_(0.4 * torch.rand(self.conv1.translate_x.shape, generator=gen) - 0.2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.conv1(x)).mean(dim=(2, 3, 4)))

    torch.manual_seed(0)
    model = TNet().eval()
    proto = _legacy_onnx(model, torch.zeros(1, 3, 4, 8, 8), do_constant_folding=False)
    op_types = {n.op_type for n in proto.graph.node}
    assert {"AffineGrid", "GridSample", "Sin", "Cos", "Conv"} <= op_types
    x = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    module = _check_against_ort_and_torch(proto, model, x)
    assert module.layers["conv1"]["kind"] == "TConv3d"
    conv = dict(module.named_modules())["conv1"]
    torch.testing.assert_close(conv.weight, model.conv1.kernel().detach(), atol=1e-6, rtol=1e-5)


def test_layer_names_follow_the_torch_module_paths_each_exporter_records() -> None:
    """Weight initializer names, the default exporter's name-scope metadata, the legacy exporter's node names."""
    from workers.onnx_interpreter import naming

    def node(name: str, scopes: str | None = None) -> onnx.NodeProto:
        n = helper.make_node("Conv", ["x", "w"], ["y"], name=name)
        if scopes is not None:
            entry = n.metadata_props.add()
            entry.key, entry.value = "pkg.torch.onnx.name_scopes", scopes
        return n

    assert naming.layer_path(node("node_Conv_69"), "layer1.0.conv1.weight") == "layer1.0.conv1"
    assert naming.layer_path(node("node_conv3d", "['', 'blocks', 'blocks.2', 'conv3d']"), "val_7") == "blocks.2"
    assert naming.layer_path(node("/layer1/layer1.0/conv1/Conv"), "onnx::Conv_49") == "layer1.0.conv1"
    # nested Sequentials and ModuleLists, as torchvision's VideoResNet and S3D export them
    assert naming.layer_path(node("/layer1/layer1.0/conv1/conv1.0/Conv"), "onnx::Conv_49") == "layer1.0.conv1.0"
    assert naming.layer_path(node("/layer1/layer1.0/down.0/down.0.0/Conv"), None) == "layer1.0.down.0.0"
    assert naming.layer_path(node("/features/features.0/features.0.1/features.0.1.0/Conv"), None) == "features.0.1.0"
    assert naming.layer_path(node("weird name!"), None) == "weird_name"
    assert naming.tensor_module_name("/layer1/Relu_output_0") == "layer1_Relu_output_0"

    # the dynamo exporter's FX node names the parameter a module applies functionally (Swin's F.linear in "attn")
    linear = node("node_MatMul_37", "['', 'features', 'features.0', 'features.0.attn', 'linear']")
    fx = linear.metadata_props.add()
    fx.key = "pkg.torch.onnx.fx_node"
    fx.value = ("%linear : [num_users=1] = call_function[target=torch.ops.aten.linear.default](args = "
                "(%view, %p_features_0_attn_qkv_weight, %p_features_0_attn_qkv_bias), kwargs = {})")
    assert naming.layer_path(linear, "val_40") == "features.0.attn.qkv"
    fx.value = fx.value.replace("aten.linear.default", "aten._native_batch_norm_legit_no_training.default")
    assert naming.layer_path(linear, "val_40") == "features.0.attn"  # a BatchNorm's FX node names no conv
    # the dynamo exporter's "namespace" metadata, when name scopes are missing
    spaced = helper.make_node("Conv", ["x", "w"], ["y"], name="node_conv3d")
    entry = spaced.metadata_props.add()
    entry.key = "namespace"
    entry.value = ": m.Net/layer1: torch.nn.Sequential/layer1.0: m.Block/layer1.0.conv1: torch.nn.Conv3d/conv3d: aten.conv3d.default"
    assert naming.layer_path(spaced, "val_3") == "layer1.0.conv1"


def _linear_chain(blocks: list[tuple[str, str, str]], shared: dict[str, np.ndarray], identities: dict[str, str]) -> onnx.ModelProto:
    """x -> (MatMul by a fresh matrix, Add of a bias) per block: (scope of the node names, weight name, bias name)."""
    rng = _rng(30)
    nodes, inits = [], {k: v for k, v in shared.items()}
    nodes += [helper.make_node("Identity", [src], [dst], name=f"Identity_{i}") for i, (dst, src) in enumerate(identities.items())]
    current = "x"
    for i, (scope, weight, bias) in enumerate(blocks):
        inits[weight] = f32(rng, 4, 4)
        nodes.append(helper.make_node("MatMul", [current, weight], [f"m{i}"], name=f"{scope}/MatMul"))
        nodes.append(helper.make_node("Add", [f"m{i}", bias], [f"a{i}"], name=f"{scope}/Add"))
        current = f"a{i}"
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", F32, [2, 3, 4])], [helper.make_tensor_value_info(current, F32, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_layers_whose_parameters_the_exporter_merged_keep_their_module_paths() -> None:
    """Exporters merge equal initializers (torchvision's zero biases): the dynamo exporter under one of the names,
    the legacy one through Identity nodes named after each parameter. Each MatMul + Add is one nn.Linear, named
    by its module path: a shared name's owner, seen from the module applying it functionally ("attn" applies
    "attn.qkv"), names the same place in its sibling blocks, and nothing in other kinds of module ("head.1")."""
    zero = {"blocks.0.attn.qkv.bias": np.zeros(4, np.float32), "onnx::MatMul_9": np.zeros((4, 4), np.float32)}
    blocks = [
        ("/blocks.0/attn", "onnx::MatMul_10", "blocks.0.attn.qkv.bias"),
        ("/blocks.1/attn", "onnx::MatMul_11", "blocks.0.attn.qkv.bias"),  # merged, as the dynamo exporter does
        ("/blocks.2/attn", "onnx::MatMul_12", "blocks.2.attn.qkv.bias"),  # merged through an Identity (legacy)
        ("/head/head.1", "onnx::MatMul_13", "blocks.0.attn.qkv.bias"),  # a Linear module whose zero bias was merged
    ]
    model = _linear_chain(blocks, zero, {"blocks.2.attn.qkv.bias": "blocks.0.attn.qkv.bias"})
    module = assert_matches(model, {"x": f32(_rng(31), 2, 3, 4)})
    linears = {n for n, m in module.named_modules() if isinstance(m, nn.Linear)}
    assert linears == {"blocks.0.attn.qkv", "blocks.1.attn.qkv", "blocks.2.attn.qkv", "head.1"}
    assert all(dict(module.named_modules())[n].bias is not None for n in linears)
    assert module.layers["blocks.2.attn.qkv"]["weights"] == ["onnx::MatMul_12", "blocks.0.attn.qkv.bias"]
    assert not [m for m in module.modules() if isinstance(m, OpNode) and m.op_type == "Add"]


def test_legacy_export_of_nested_sequentials_keeps_every_module_path() -> None:
    """The interpreter's conv layers carry exactly the torch module's conv names (legacy exporter, BatchNorm folded)."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Sequential(nn.Conv3d(4, 4, 3, padding=1, bias=False), nn.BatchNorm3d(4), nn.ReLU())
            self.down = nn.ModuleList([nn.Sequential(nn.Conv3d(4, 4, 1))])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.down[0](self.conv1(x))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv3d(3, 4, 1)
            self.layer1 = nn.Sequential(Block(), Block())
            self.features = nn.Sequential(nn.Sequential(nn.Conv3d(4, 4, 1), nn.Sequential(nn.Conv3d(4, 4, 1))))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.features(self.layer1(self.stem(x)))

    torch.manual_seed(0)
    net = Net().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 4, 8, 8),), buffer, dynamo=False)
    module = build_module(onnx.load_from_string(buffer.getvalue()))
    ours = sorted(name for name, m in module.named_modules() if isinstance(m, (nn.Conv3d, ComputedConv)))
    theirs = sorted(name for name, m in net.named_modules() if isinstance(m, nn.Conv3d))
    assert ours == theirs
