"""The ONNX ops video exporters emit beyond plain CNNs, each against onnxruntime, with gradients where they flow.

Single-node graphs (built with onnx.helper, seeded random inputs) for indexing and scattering (Swin3D's and
MViT's slice assignments are ScatterND), Einsum (MViT's relative positions), Resize, sequences, and the
control flow (If, Loop) the legacy exporter writes for MViT; plus the rarer activations, normalisations and
reductions. Each case runs in onnxruntime (the reference) and in the interpreter.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from workers.errors import ModelUnusable
from workers.onnx_interpreter import SUPPORTED_OPS, build_module
from workers.onnx_interpreter.module import OnnxModule

torch.set_num_threads(1)

F32, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def f32(rng: np.random.Generator, *shape: int, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    return rng.uniform(lo, hi, size=shape).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def ints(nested: Any) -> np.ndarray:
    return np.array(nested, dtype=np.int64)


def graph_model(nodes: list[onnx.NodeProto], inputs: dict[str, np.ndarray], outputs: list[str],
                inits: dict[str, np.ndarray] | None = None, opset: int = 18) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in inputs.items()],
        [onnx.ValueInfoProto(name=o) for o in outputs],  # untyped: onnxruntime infers each output's type
        [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return model


def single(op: str, inputs: dict[str, np.ndarray], attrs: dict[str, Any] | None = None,
           inits: dict[str, np.ndarray] | None = None, order: list[str] | None = None,
           outputs: int = 1, opset: int = 18) -> onnx.ModelProto:
    names = order or [*inputs, *(inits or {})]
    node = helper.make_node(op, names, [f"y{i}" for i in range(outputs)], name=f"the_{op.lower()}", **(attrs or {}))
    return graph_model([node], inputs, [f"y{i}" for i in range(outputs)], inits, opset)


def check(model: onnx.ModelProto, inputs: dict[str, np.ndarray], atol: float = 1e-5, grad: bool = False) -> OnnxModule:
    """Outputs equal onnxruntime's; with grad, d(sum of float outputs)/d(float inputs) is finite and not all zero."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = session.run(None, inputs)
    module = build_module(model)
    tensors = [torch.from_numpy(v.copy()).requires_grad_(grad and v.dtype.kind == "f") for v in inputs.values()]
    out = module(*tensors)
    ours = list(out) if isinstance(out, tuple) else [out]
    assert len(ours) == len(reference)
    for a, b in zip(ours, reference):
        a_np = a.detach().numpy()
        assert a_np.shape == b.shape, (a_np.shape, b.shape)
        if b.dtype.kind == "f":
            scale = max(1.0, float(np.abs(b).max()) if b.size else 1.0)
            np.testing.assert_allclose(a_np, b, atol=atol * scale, rtol=0)
        else:
            np.testing.assert_array_equal(a_np, b)
    if grad:
        total = sum(o.sum() for o in ours if o.is_floating_point())
        total.backward()  # type: ignore[union-attr]
        grads = [t.grad for t in tensors if t.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)
    return module


# ---------------------------------------------------------------- indexing and scattering

@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_nd(reduction: str) -> None:
    rng = _rng(1)
    data = {"data": f32(rng, 4, 3, 5), "updates": f32(rng, 2, 5)}
    indices = ints([[0, 1], [-1, 2]]) if reduction == "none" else ints([[0, 1], [3, 2]])
    model = single("ScatterND", data, {} if reduction == "none" else {"reduction": reduction}, inits={"i": indices},
                   order=["data", "i", "updates"])
    check(model, data, grad=reduction in ("none", "add"))


def test_scatter_nd_as_swin_and_mvit_write_slices() -> None:
    """x[:, 1:] = y written by the legacy exporter: full index grids of rank 3 over the data's first axes."""
    rng = _rng(2)
    data = {"data": f32(rng, 2, 4, 6), "updates": f32(rng, 2, 3, 6)}
    grid = np.stack(np.meshgrid(np.arange(2), np.arange(1, 4), indexing="ij"), axis=-1).astype(np.int64)
    check(single("ScatterND", data, inits={"i": grid}, order=["data", "i", "updates"]), data, grad=True)


@pytest.mark.parametrize("reduction", ["none", "add"])
def test_scatter_elements_and_gather_elements(reduction: str) -> None:
    rng = _rng(3)
    data = {"data": f32(rng, 3, 4), "updates": f32(rng, 2, 4)}
    idx = ints([[0, 2, -1, 1], [1, 0, 2, 2]]) if reduction == "none" else ints([[0, 0, 1, 1], [0, 2, 1, 1]])
    attrs = {"axis": 0} | ({"reduction": reduction} if reduction != "none" else {})
    check(single("ScatterElements", data, attrs, inits={"i": idx}, order=["data", "i", "updates"]), data, grad=True)
    x = {"x": f32(rng, 3, 4, 2)}
    check(single("GatherElements", x, {"axis": 1}, inits={"i": rng.integers(-4, 4, size=(3, 2, 2))}), x, grad=True)


@pytest.mark.parametrize("batch_dims", [0, 1])
def test_gather_nd(batch_dims: int) -> None:
    rng = _rng(4)
    x = {"x": f32(rng, 2, 3, 4, 5)}
    idx = ints([[[1, 2], [0, -1]], [[2, 3], [1, 0]]]) if batch_dims == 1 else ints([[1, 2], [0, 1]])
    check(single("GatherND", x, {"batch_dims": batch_dims}, inits={"i": idx}), x, grad=True)


@pytest.mark.parametrize(
    "equation,shapes",
    [
        ("bythwc,hkc->bythwk", [(2, 2, 3, 4, 5, 6), (4, 7, 6)]),  # MViT's decomposed relative positions
        ("bythwc,tkc->bythwk", [(1, 2, 3, 3, 2, 4), (3, 5, 4)]),
        ("ij,jk", [(3, 4), (4, 5)]),  # implicit output
        ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 2)]),
        ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
        ("ii->i", [(4, 4)]),
    ],
)
def test_einsum(equation: str, shapes: list[tuple[int, ...]]) -> None:
    rng = _rng(5)
    inputs = {f"x{i}": f32(rng, *s) for i, s in enumerate(shapes)}
    check(single("Einsum", inputs, {"equation": equation}), inputs, grad=True)


@pytest.mark.parametrize("upper,k", [(1, None), (0, None), (1, 1), (0, -1)])
def test_trilu(upper: int, k: int | None) -> None:
    x = {"x": f32(_rng(6), 2, 4, 5)}
    check(single("Trilu", x, {"upper": upper}, inits={} if k is None else {"k": i64(k).reshape(())}), x, grad=True)


@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumsum(exclusive: int, reverse: int) -> None:
    x = {"x": f32(_rng(7), 3, 4, 5)}
    check(single("CumSum", x, {"exclusive": exclusive, "reverse": reverse}, inits={"a": i64(-2).reshape(())}), x, grad=True)
    counts = {"x": ints([[1, 2, 3], [4, 5, 6]])}
    check(single("CumSum", counts, {"exclusive": exclusive, "reverse": reverse}, inits={"a": i64(1).reshape(())}), counts)


def test_arg_reductions_top_k_non_zero_one_hot() -> None:
    rng = _rng(8)
    x = {"x": np.round(f32(rng, 3, 4, 5), 1)}  # ties, so select_last_index matters
    for op in ("ArgMax", "ArgMin"):
        for attrs in ({"axis": 1}, {"axis": -1, "keepdims": 0}, {"axis": 2, "select_last_index": 1}):
            check(single(op, x, attrs), x)
    check(single("TopK", {"x": f32(rng, 3, 6)}, {"axis": 1}, inits={"k": i64(2)}, outputs=2), {"x": f32(_rng(9), 3, 6)})
    check(single("NonZero", {"x": np.array([[0, 1, 0], [2, 0, 3]], np.float32)}), {"x": np.array([[0, 1, 0], [2, 0, 3]], np.float32)})
    hot = {"i": ints([[0, 2], [-1, 5]])}
    check(single("OneHot", hot, {"axis": 1}, inits={"d": i64(4), "v": np.array([-1.0, 2.0], np.float32)}), hot)
    spec = {"x": np.array([1.0, np.inf, -np.inf, np.nan], np.float32)}
    check(single("IsInf", spec, {"detect_negative": 0}), spec)
    check(single("IsNaN", spec), spec)


def test_depth_to_space_and_back() -> None:
    x = {"x": f32(_rng(10), 1, 8, 3, 2)}
    for mode in ("DCR", "CRD"):
        check(single("DepthToSpace", x, {"blocksize": 2, "mode": mode}), x, grad=True)
    check(single("SpaceToDepth", {"x": f32(_rng(11), 1, 2, 4, 6)}, {"blocksize": 2}), {"x": f32(_rng(11), 1, 2, 4, 6)})


# ---------------------------------------------------------------- Resize

RESIZE_CASES = [
    # (x shape, scales or None, sizes or None, attrs)
    ((1, 2, 4, 5), [1, 1, 2, 2], None, {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}),
    ((1, 2, 3, 4, 5), None, [1, 2, 6, 7, 9], {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}),
    ((1, 2, 4, 5), [1, 1, 1.5, 0.6], None, {"mode": "nearest"}),
    ((1, 2, 5, 5), None, [1, 2, 8, 3], {"mode": "nearest", "nearest_mode": "round_prefer_ceil"}),
    ((1, 2, 5, 5), None, [1, 2, 7, 3], {"mode": "nearest", "coordinate_transformation_mode": "tf_half_pixel_for_nn", "nearest_mode": "ceil"}),
    ((2, 3, 4, 6), [1, 1, 2, 0.5], None, {"mode": "linear"}),
    ((2, 3, 4, 6), None, [2, 3, 7, 9], {"mode": "linear", "coordinate_transformation_mode": "align_corners"}),
    ((2, 3, 4, 6), None, [2, 3, 1, 9], {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}),
    ((2, 3, 4, 6), [1, 1, 1.7, 2.3], None, {"mode": "linear", "coordinate_transformation_mode": "asymmetric"}),
    ((1, 2, 3, 4, 5), None, [1, 2, 6, 8, 3], {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"}),
    ((1, 2, 5, 6), [1, 1, 2, 1.5], None, {"mode": "cubic"}),
    ((1, 2, 5, 6), None, [1, 2, 9, 4], {"mode": "cubic", "coordinate_transformation_mode": "align_corners", "cubic_coeff_a": -0.5}),
    ((1, 2, 5, 6), [1, 1, 1.5, 2], None, {"mode": "cubic", "exclude_outside": 1}),
    ((1, 2, 5, 6), None, [7, 4], {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"}),
    ((1, 2, 5, 6), None, [7, 4], {"mode": "nearest", "axes": [2, 3], "keep_aspect_ratio_policy": "not_smaller"}),
]


@pytest.mark.parametrize("x_shape,scales,sizes,attrs", RESIZE_CASES)
def test_resize(x_shape, scales, sizes, attrs) -> None:
    x = {"x": f32(_rng(12), *x_shape)}
    inits: dict[str, np.ndarray] = {"roi": np.zeros(0, np.float32)}
    order = ["x", "roi"]
    if scales is not None:
        inits["scales"] = np.array(scales, np.float32)
        order.append("scales")
    else:
        order += ["", "sizes"]
        inits["sizes"] = i64(*sizes)
    opset = 19 if attrs.get("coordinate_transformation_mode") == "half_pixel_symmetric" else 18
    check(single("Resize", x, attrs, inits=inits, order=order, opset=opset), x, atol=1e-5, grad=attrs["mode"] != "nearest")


def test_resize_crop_and_resize_with_extrapolation() -> None:
    x = {"x": f32(_rng(13), 1, 1, 5, 6)}
    inits = {"roi": np.array([0, 0, -0.2, 0.1, 1, 1, 0.9, 1.3], np.float32), "sizes": i64(1, 1, 4, 5)}
    for mode in ("nearest", "linear"):
        attrs = {"mode": mode, "coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": 7.0}
        check(single("Resize", x, attrs, inits=inits, order=["x", "roi", "", "sizes"]), x)


# ---------------------------------------------------------------- activations, normalisations, reductions

@pytest.mark.parametrize(
    "op,attrs",
    [
        ("Selu", {}), ("Selu", {"alpha": 1.5, "gamma": 0.7}), ("Celu", {"alpha": 0.5}), ("Mish", {}), ("Softsign", {}),
        ("ThresholdedRelu", {"alpha": 0.3}), ("Shrink", {"bias": 0.2, "lambd": 0.4}), ("Asinh", {}), ("Sinh", {}), ("Cosh", {}),
        ("ReduceL1", {"keepdims": 0}), ("ReduceL2", {}), ("ReduceSumSquare", {}), ("ReduceLogSumExp", {}),
        ("LpNormalization", {"axis": 1, "p": 1}), ("LpNormalization", {}), ("MeanVarianceNormalization", {}),
    ],
)
def test_unary_extras(op: str, attrs: dict[str, Any]) -> None:
    x = {"x": f32(_rng(14), 2, 3, 4, 5, lo=-2, hi=2)}
    check(single(op, x, attrs), x, atol=2e-5, grad=True)


def test_bounded_domain_ops_and_axes_inputs() -> None:
    rng = _rng(15)
    for op in ("Asin", "Acos", "Atanh"):
        x = {"x": f32(rng, 3, 4, lo=-0.9, hi=0.9)}
        check(single(op, x), x, grad=True)
    x = {"x": f32(rng, 3, 4, lo=1.1, hi=3)}
    check(single("Acosh", x), x, grad=True)
    check(single("ReduceLogSum", x, inits={"a": i64(1)}), x, grad=True)
    check(single("ReduceL2", x, {"keepdims": 0}, inits={"a": i64(0)}), x, grad=True)


@pytest.mark.parametrize("opset", [18, 21])
def test_group_normalization(opset: int) -> None:
    rng = _rng(16)
    x = {"x": f32(rng, 2, 6, 3, 4, 5)}
    groups = 3
    size = groups if opset == 18 else 6
    model = single("GroupNormalization", x, {"num_groups": groups, "epsilon": 1e-4}, inits={"s": f32(rng, size), "b": f32(rng, size)}, opset=opset)
    check(model, x, atol=2e-5, grad=True)


# ---------------------------------------------------------------- sequences

def test_sequence_ops() -> None:
    rng = _rng(17)
    inputs = {"a": f32(rng, 2, 3), "b": f32(rng, 2, 3)}
    nodes = [
        helper.make_node("SequenceConstruct", ["a", "b"], ["s"]),
        helper.make_node("SequenceInsert", ["s", "a", "minus1"], ["s2"]),  # before the last: [a, a, b]
        helper.make_node("SequenceErase", ["s2", "zero"], ["s3"]),  # [a, b]
        helper.make_node("SequenceAt", ["s2", "minus1"], ["last"]),
        helper.make_node("SequenceLength", ["s2"], ["n"]),
        helper.make_node("ConcatFromSequence", ["s2"], ["cat"], axis=1),
        helper.make_node("ConcatFromSequence", ["s3"], ["stack"], axis=-1, new_axis=1),
        helper.make_node("SplitToSequence", ["cat"], ["parts"], axis=1),  # 9 columns, keepdims
        helper.make_node("ConcatFromSequence", ["parts"], ["back"], axis=0),
        helper.make_node("SplitToSequence", ["cat", "sizes"], ["chunks"], axis=1),
        helper.make_node("SequenceAt", ["chunks", "one"], ["chunk"]),
        helper.make_node("SplitToSequence", ["a"], ["rows"], axis=0, keepdims=0),
        helper.make_node("ConcatFromSequence", ["rows"], ["flat"], axis=0),
        helper.make_node("SequenceEmpty", [], ["empty"], dtype=F32),
        helper.make_node("SequenceInsert", ["empty", "b"], ["single"]),
        helper.make_node("SequenceAt", ["single", "zero"], ["only"]),
    ]
    inits = {"minus1": i64(-1).reshape(()), "zero": i64(0).reshape(()), "one": i64(1).reshape(()), "sizes": i64(4, 5)}
    model = graph_model(nodes, inputs, ["last", "n", "cat", "stack", "back", "chunk", "flat", "only"], inits)
    check(model, inputs, grad=True)
    scalar = graph_model(
        [helper.make_node("SplitToSequence", ["a", "two"], ["s"], axis=1), helper.make_node("SequenceAt", ["s", "minus1"], ["y"])],
        {"a": f32(rng, 2, 5)}, ["y"], {"two": i64(2).reshape(()), "minus1": i64(-1).reshape(())},
    )
    check(scalar, {"a": f32(rng, 2, 5)})


# ---------------------------------------------------------------- control flow

def _if_model() -> onnx.ModelProto:
    """MViT's legacy pool_skip: if the rank-3 input's dim 1 equals 4, one branch, else another, both reading outer values."""
    then_branch = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["t"])], "then", [], [helper.make_tensor_value_info("t", F32, None)]
    )
    else_branch = helper.make_graph(
        [helper.make_node("Sub", ["x", "w"], ["e0"]), helper.make_node("Relu", ["e0"], ["e"])],
        "else", [], [helper.make_tensor_value_info("e", F32, None)],
    )
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["dim"], axis=0),
        helper.make_node("Equal", ["dim", "four"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch, name="branchy"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", F32, ["n", "c", 3])], [helper.make_tensor_value_info("y", F32, None)],
        [numpy_helper.from_array(f32(_rng(18), 3), "w"), numpy_helper.from_array(i64(1).reshape(()), "one"),
         numpy_helper.from_array(i64(4).reshape(()), "four")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_if_runs_the_branch_its_condition_picks_and_gradients_flow() -> None:
    model = _if_model()
    module = check(model, {"x": f32(_rng(19), 2, 4, 3)}, grad=True)  # then: x * w
    check(model, {"x": f32(_rng(20), 2, 5, 3)}, grad=True)  # else: relu(x - w)
    assert "branchy" in repr(module)


def _loop_model(with_cond: bool) -> onnx.ModelProto:
    """The legacy exporter's tensor_split: a Loop appending slices of an outer tensor to a sequence, with a scan output."""
    body = helper.make_graph(
        [
            helper.make_node("Unsqueeze", ["i", "zero"], ["start"]),
            helper.make_node("Add", ["start", "one1"], ["end"]),
            helper.make_node("Slice", ["x", "start", "end", "axis"], ["piece"]),
            helper.make_node("SequenceInsert", ["seq_in", "piece"], ["seq_out"]),
            helper.make_node("Mul", ["acc_in", "piece"], ["acc_out"]),
            helper.make_node("ReduceSum", ["piece"], ["scan"], keepdims=0),
            helper.make_node("Less", ["i", "limit"], ["keep"]) if with_cond else helper.make_node("Identity", ["cond_in"], ["keep"]),
        ],
        "body",
        [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("cond_in", BOOL, []),
         helper.make_tensor_value_info("seq_in", TensorProto.UNDEFINED, None), helper.make_tensor_value_info("acc_in", F32, None)],
        [helper.make_tensor_value_info("keep", BOOL, []), helper.make_tensor_value_info("seq_out", TensorProto.UNDEFINED, None),
         helper.make_tensor_value_info("acc_out", F32, None), helper.make_tensor_value_info("scan", F32, None)],
    )
    body.output[1].type.CopyFrom(helper.make_sequence_type_proto(helper.make_tensor_type_proto(F32, None)))
    body.input[2].type.CopyFrom(helper.make_sequence_type_proto(helper.make_tensor_type_proto(F32, None)))
    nodes = [
        helper.make_node("SequenceEmpty", [], ["seq0"], dtype=F32),
        helper.make_node("Loop", ["trips", "true", "seq0", "ones"], ["seq", "acc", "scans"], body=body, name="looper"),
        helper.make_node("ConcatFromSequence", ["seq"], ["cat"], axis=2),
        helper.make_node("Mul", ["cat", "acc"], ["y"]),
    ]
    inits = {
        "trips": i64(6 if with_cond else 3), "true": np.array(True), "ones": np.ones((2, 3, 1), np.float32),
        "zero": i64(0), "one1": i64(1), "axis": i64(2), "limit": i64(2).reshape(()),
    }
    return graph_model(nodes, {"x": f32(_rng(21), 2, 3, 5)}, ["y", "scans"], inits, opset=17)


@pytest.mark.parametrize("with_cond", [False, True])
def test_loop_with_sequences_scan_outputs_and_a_condition(with_cond: bool) -> None:
    model = _loop_model(with_cond)
    check(model, {"x": f32(_rng(22), 2, 3, 5)}, grad=True)


def test_unsupported_ops_inside_subgraphs_are_named() -> None:
    model = _if_model()
    branch = model.graph.node[-1].attribute[0].g
    branch.node[0].op_type = "RandomUniformLike"
    with pytest.raises(ModelUnusable) as err:
        build_module(model)
    assert err.value.reason == "UNSUPPORTED_OP" and "RandomUniformLike" in err.value.message
    assert ".pt2" in err.value.message


def test_the_op_set_covers_what_video_exporters_emit() -> None:
    emitted = (
        "ScatterND Einsum If Loop SequenceConstruct SequenceAt SequenceInsert SequenceEmpty ConcatFromSequence "
        "SplitToSequence LayerNormalization Gelu Erf Softmax MatMul Transpose Slice Split Expand Where Range Trilu "
        "CumSum Mod Resize GlobalAveragePool ReduceMean HardSigmoid HardSwish Sigmoid Shape Size ConstantOfShape "
        "GatherElements GatherND ScatterElements GroupNormalization Pad Not Neg Equal Cast"
    ).split()
    assert set(emitted) <= SUPPORTED_OPS


# ---------------------------------------------------------------- recurrent layers (CNN + LSTM video classifiers)

RECURRENT_CASES = [
    # (op, attrs, with bias / initial states / peepholes)
    ("LSTM", {}, False),
    ("LSTM", {"direction": "bidirectional", "clip": 0.8}, True),
    ("LSTM", {"direction": "reverse"}, True),
    ("LSTM", {"activations": ["HardSigmoid", "LeakyRelu", "Tanh"], "activation_alpha": [0.3, 0.05], "activation_beta": [0.4]}, True),
    ("GRU", {"linear_before_reset": 1}, True),
    ("GRU", {"direction": "bidirectional"}, True),
    ("GRU", {"direction": "reverse", "clip": 0.5}, False),
    ("RNN", {"direction": "bidirectional", "activations": ["Relu", "Tanh"]}, True),
    ("RNN", {}, False),
]


@pytest.mark.parametrize("op,attrs,extras", RECURRENT_CASES)
def test_recurrent_ops(op: str, attrs: dict[str, Any], extras: bool) -> None:
    rng = _rng(40)
    seq, batch, size, hidden = 5, 2, 3, 4
    dirs = 2 if attrs.get("direction") == "bidirectional" else 1
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    x = {"x": f32(rng, seq, batch, size)}
    inits = {"w": f32(rng, dirs, gates * hidden, size), "r": f32(rng, dirs, gates * hidden, hidden)}
    order = ["x", "w", "r"]
    if extras:
        state = (dirs, batch, hidden)
        inits |= {"b": f32(rng, dirs, 2 * gates * hidden), "lens": np.full(batch, seq, np.int32), "h0": f32(rng, *state)}
        order += ["b", "lens", "h0"]
        if op == "LSTM":
            inits |= {"c0": f32(rng, *state), "p": f32(rng, dirs, 3 * hidden)}
            order += ["c0", "p"]
    outputs = 3 if op == "LSTM" else 2
    model = single(op, x, {"hidden_size": hidden, **attrs}, inits=inits, order=order, outputs=outputs, opset=14)
    check(model, x, atol=2e-5, grad=True)


def test_recurrent_layers_exported_from_torch_match_torch() -> None:
    """nn.LSTM (2 layers, bidirectional, batch first) and nn.GRU over per-frame features, by the legacy exporter."""
    import io
    import warnings

    from torch import nn

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True)
            self.gru = nn.GRU(8, 5, batch_first=True)
            self.fc = nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
            frames = x.mean((3, 4)).transpose(1, 2)
            out, _ = self.lstm(frames)
            out, _ = self.gru(out)
            return self.fc(out[:, -1])

    torch.manual_seed(0)
    net = Recurrent().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 3, 6, 4, 4),), buffer, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "b"}})
    proto = onnx.load_from_string(buffer.getvalue())
    assert {"LSTM", "GRU"} <= {n.op_type for n in proto.graph.node}
    module = build_module(proto)
    x = torch.randn(3, 3, 6, 4, 4)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_ours, out_torch = module(a), net(b)
    torch.testing.assert_close(out_ours, out_torch, atol=1e-5, rtol=1e-4)
    out_ours.sum().backward()
    out_torch.sum().backward()
    torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------- values computed once per input shape

def _shape_graph() -> onnx.ModelProto:
    """x.view(x.size(0), -1) under a dynamic batch (static: depends on x's shape only), and the count of x's
    positive entries (Shape of NonZero: depends on x's values, never reused)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "axes"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Greater", ["x", "zero_f"], ["positive"]),
        helper.make_node("NonZero", ["positive"], ["where"]),
        helper.make_node("Shape", ["where"], ["found"]),
        helper.make_node("Cast", ["found"], ["found_f"], to=F32),
        helper.make_node("ReduceSum", ["flat", "one_axis"], ["sums"], keepdims=0),
        helper.make_node("Mul", ["sums", "found_f_last"], ["y"]),
        helper.make_node("Gather", ["found_f", "one"], ["found_f_last"], axis=0),
    ]
    inits = {"zero": i64(0).reshape(()), "one": i64(1).reshape(()), "axes": i64(0), "minus1": i64(-1),
             "zero_f": np.array(0.0, np.float32), "one_axis": i64(1)}
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", F32, ["n", 3, 4])], [helper.make_tensor_value_info("y", F32, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_values_of_the_input_shapes_alone_are_computed_once_per_shape_and_the_rest_every_call() -> None:
    model = _shape_graph()
    module = build_module(model)
    static = {s.outputs[0] for s in module.steps if s.static}
    assert {"shape", "batch", "batch1", "target"} <= static
    assert not static & {"flat", "positive", "where", "found", "found_f", "found_f_last", "sums", "y"}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = _rng(50)
    for n in (2, 2, 3, 2, 1):  # same shapes again (reused values), new ones, and back
        x = f32(rng, n, 3, 4)
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), session.run(None, {"x": x})[0], rtol=1e-6, atol=1e-6)
    # a hook on a reused node still fires: the hooked node runs on every call
    seen: list[torch.Tensor] = []
    gather = next(s.module for s in module.steps if s.outputs == ("batch",))
    handle = gather.register_forward_hook(lambda m, i, o: seen.append(o))
    module(torch.zeros(5, 3, 4))
    module(torch.zeros(5, 3, 4))
    handle.remove()
    assert [int(v) for v in seen] == [5, 5]
    # after .double() (constants moved and converted) the values are computed again, for the new dtype
    x = f32(rng, 2, 3, 4)
    np.testing.assert_allclose(module.double()(torch.from_numpy(x).double()).numpy(), session.run(None, {"x": x})[0], rtol=1e-6)


def test_loops_whose_iterations_follow_from_shapes_let_later_sizes_be_reused() -> None:
    """The legacy exporter's tensor_split Loop (static trip count) keeps the sizes after it static."""
    model = _loop_model(with_cond=False)
    extra = [helper.make_node("Shape", ["cat"], ["cat_shape"]), helper.make_node("Cast", ["cat_shape"], ["cat_shape_f"], to=F32)]
    model.graph.node.extend(extra)
    model.graph.output.append(onnx.ValueInfoProto(name="cat_shape_f"))
    module = build_module(model)
    static = {o for s in module.steps if s.static for o in s.outputs}
    assert {"cat_shape", "cat_shape_f"} <= static and "seq" not in static and "cat" not in static
    for seed in (23, 24):
        check(model, {"x": f32(_rng(seed), 2, 3, 5)})
    data_loop = _loop_model(with_cond=True)  # the condition is computed in the body from the iteration number: still static
    assert build_module(data_loop) is not None
