"""kernelscope.formats, the one set of content rules the SDK, the service and the worker share."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kernelscope import formats


# ---------------------------------------------------------------- zip kinds, from entry names only

TORCHSCRIPT_OF_TORCHVISION = [
    "r3d/data/0", "r3d/data.pkl", "r3d/code/__torch__/torchvision/models/video/resnet.py",
    "r3d/code/__torch__/torchvision/models/video/resnet.py.debug_pkl", "r3d/constants.pkl", "r3d/version", "r3d/byteorder",
]


@pytest.mark.parametrize(
    "names, kind",
    [
        (TORCHSCRIPT_OF_TORCHVISION, "TORCHSCRIPT"),
        (["m/code/__torch__/models/net.py", "m/data.pkl", "m/version"], "TORCHSCRIPT"),  # no constants.pkl
        (["m/data/weights/weight_0", "m/models/model.json", "m/archive_format", "m/byteorder"], "TORCH_EXPORT"),
        (["m/data/weights/weight_0", "m/models/model.json", "m/version"], "TORCH_EXPORT"),  # no archive_format
        (["m/serialized_exported_program.json", "m/serialized_state_dict.pt"], "TORCH_EXPORT_LEGACY"),
        (["sd/data.pkl", "sd/data/0", "sd/byteorder", "sd/version"], "TORCH_SAVE"),
        (["model.onnx", "model.onnx.data"], "ONNX_BUNDLE"),
        (["net.onnx", "weights/a.bin", "weights/b.bin"], "ONNX_BUNDLE"),
        (["model.onnx.data", "model.onnx"], "UNKNOWN_ZIP"),  # the model must come first
        (["a.onnx", "b.onnx"], "UNKNOWN_ZIP"),  # which one?
        (["dir/model.onnx", "dir/model.onnx.data"], "UNKNOWN_ZIP"),
        (["readme.txt"], "UNKNOWN_ZIP"),
        (["models/x.json"], "UNKNOWN_ZIP"),  # a folder named models/ alone is no export
        ([], "UNKNOWN_ZIP"),
    ],
)
def test_zip_kinds(names: list[str], kind: str) -> None:
    assert formats.zip_kind(names) == kind


def test_zip_root() -> None:
    assert formats.zip_root(["m/a", "m/b/c"]) == "m/"
    assert formats.zip_root(["m/a", "n/b"]) == ""
    assert formats.zip_root(["model.onnx", "w/x.bin"]) == ""
    assert formats.zip_root([]) == ""


# ---------------------------------------------------------------- the first bytes

def _onnx_model() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _safetensors(header_len_delta: int = 0) -> bytes:
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    return struct.pack("<Q", len(header) + header_len_delta) + header + bytes(4)


@pytest.mark.parametrize(
    "data, kind",
    [
        (b"PK\x03\x04" + bytes(40), "ZIP"),
        (b"PK\x05\x06" + bytes(18), "ZIP"),
        (b"\x80\x04\x95" + bytes(64), "PICKLE"),
        (b"\x80\x09junk", "UNKNOWN"),
        (_safetensors(), "SAFETENSORS"),
        (_safetensors(+1000), "SAFETENSORS_TRUNCATED"),
        (_onnx_model(), "ONNX"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "UNKNOWN"),
        (b"just some text", "UNKNOWN"),
        (b"", "UNKNOWN"),
    ],
)
def test_head_kinds(data: bytes, kind: str) -> None:
    assert formats.head_kind(data[: formats.HEAD_BYTES], len(data)) == kind
    assert formats.kind_of(data) == kind if kind != "ZIP" else formats.kind_of(data) in formats.ZIP_KINDS


def test_a_truncated_onnx_is_named_as_such() -> None:
    data = _onnx_model()
    assert formats.head_kind(data, len(data) - 5) == "ONNX_TRUNCATED"  # the graph would run past the end
    assert formats.kind_of(data[:-5]) == "ONNX_TRUNCATED"
    assert formats.head_kind(b"\x3a\xff\x7f", 3) == "ONNX_TRUNCATED"  # a graph of 16 KiB in 3 bytes
    assert formats.head_kind(b"\x32\xff\x7f", 3) == "UNKNOWN"  # a doc string alone says nothing


def test_head_zip_names_reads_the_first_local_headers() -> None:
    buffer = io.BytesIO()
    formats.onnx_bundle(buffer, "model.onnx", _onnx_model(), {"model.onnx.data": bytes(100)})
    data = buffer.getvalue()
    assert formats.head_zip_names(data[: formats.HEAD_BYTES]) == ["model.onnx", "model.onnx.data"]
    assert formats.head_zip_names(data[:40]) == ["model.onnx"]  # the name fits, its data does not
    assert formats.head_zip_names(data[:20]) == []
    assert formats.zip_kind(formats.head_zip_names(data[:40])) == "ONNX_BUNDLE"
    streamed = io.BytesIO()
    with zipfile.ZipFile(streamed, "w") as z, z.open("model.onnx", "w") as f:
        f.write(b"x")
    assert formats.head_zip_names(streamed.getvalue()) == ["model.onnx"]


# ---------------------------------------------------------------- the bundle

def test_a_bundle_is_stored_deterministic_and_refuses_bad_names(tmp_path: Path) -> None:
    data_file = tmp_path / "w.bin"
    data_file.write_bytes(b"\1\2\3\4" * 1000)
    outs = []
    for _ in range(2):
        buffer = io.BytesIO()
        formats.onnx_bundle(buffer, "net.onnx", b"model bytes", {"w.bin": data_file, "x/y.bin": b"abc"})
        outs.append(buffer.getvalue())
    assert outs[0] == outs[1]
    with zipfile.ZipFile(io.BytesIO(outs[0])) as bundle:
        assert bundle.namelist() == ["net.onnx", "w.bin", "x/y.bin"]
        assert {i.compress_type for i in bundle.infolist()} == {zipfile.ZIP_STORED}
        assert bundle.read("w.bin") == data_file.read_bytes() and bundle.read("x/y.bin") == b"abc"
    for model_name, files in [("net.bin", {}), ("d/net.onnx", {}), ("net.onnx", {"../w.bin": b""}), ("net.onnx", {"net.onnx": b""})]:
        with pytest.raises(ValueError):
            formats.onnx_bundle(io.BytesIO(), model_name, b"", files)


@pytest.mark.parametrize(
    "location, plain",
    [("model.onnx.data", True), ("weights/a.bin", True), ("../a.bin", False), ("/etc/passwd", False), ("a/../b", False),
     ("./a", False), ("a//b", False), ("C:/w", False), ("a\\b", False), ("", False), ("a\x00b", False), ("a/", False)],
)
def test_plain_relative_locations(location: str, plain: bool) -> None:
    assert formats.is_plain_relative(location) is plain


# ---------------------------------------------------------------- external data, read from the wire

def _external(tensor: TensorProto, location: str) -> TensorProto:
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(tensor.raw_data)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.ClearField("raw_data")
    return tensor


def _everywhere() -> onnx.ModelProto:
    """External tensors in every place ONNX allows one: initializer, sparse initializer, a Constant, a subgraph
    initializer, a tensor inside a function, an attribute with no `type` set, and an attribute default."""
    arr = lambda name: numpy_helper.from_array(np.ones((2, 2), np.float32), name)  # noqa: E731
    inner = helper.make_graph(
        [helper.make_node("Identity", ["sub_w"], ["sub_y"])], "then", [], [helper.make_tensor_value_info("sub_y", TensorProto.FLOAT, [2, 2])],
        [_external(arr("sub_w"), "then.bin")],
    )
    const = helper.make_node("Constant", [], ["c"], value=_external(arr("c"), "const.bin"))
    cond = helper.make_node("If", ["flag"], ["z"], then_branch=inner, else_branch=inner)
    untyped = helper.make_node("Mystery", [], ["m"], domain="custom")
    attribute = untyped.attribute.add()
    attribute.name = "blob"
    attribute.t.CopyFrom(_external(arr("blob"), "untyped.bin"))  # no attribute.type: onnx's own walk skips it
    sparse = helper.make_sparse_tensor(_external(arr("sv"), "sparse.bin"), numpy_helper.from_array(np.array([0, 1], np.int64), "si"), [2, 2])
    graph = helper.make_graph(
        [const, cond, untyped], "g", [helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 2])],
        [_external(arr("w"), "model.onnx.data"), _external(arr("w2"), "model.onnx.data")],
        sparse_initializer=[sparse],
    )
    function = helper.make_function(
        "custom", "F", ["a"], ["b"], [helper.make_node("Constant", [], ["b"], value=_external(arr("fc"), "function.bin"))],
        [helper.make_opsetid("", 17)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)], functions=[function])
    training = model.training_info.add()
    training.initialization.CopyFrom(helper.make_graph([], "init", [], [], [_external(arr("t"), "training.bin")]))
    return model


def test_external_data_is_found_wherever_onnx_allows_a_tensor() -> None:
    model = _everywhere()
    found = formats.external_data_locations(model.SerializeToString())
    assert sorted(found) == sorted(["model.onnx.data", "sparse.bin", "const.bin", "then.bin", "untyped.bin", "training.bin", "function.bin"])
    # every location onnx's own walk knows is among them (and more: untyped attributes, sparse tensors, training)
    from onnx import external_data_helper

    known = {e.value for t in external_data_helper._get_all_tensors(model) for e in t.external_data if e.key == "location"}
    assert known < set(found)


def test_external_data_of_real_exports(tmp_path: Path) -> None:
    model = onnx.load_from_string(_onnx_model())
    assert formats.external_data_locations(model.SerializeToString()) == []
    model.graph.initializer.append(numpy_helper.from_array(np.ones((64, 64), np.float32), "big"))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="m.weights", size_threshold=0)
    assert formats.external_data_locations(path.read_bytes()) == ["m.weights"]
    flagged = onnx.load_from_string(_onnx_model())
    tensor = numpy_helper.from_array(np.ones(3, np.float32), "no_location")
    tensor.data_location = TensorProto.EXTERNAL
    flagged.graph.initializer.append(tensor)
    assert formats.external_data_locations(flagged.SerializeToString()) == [""]


@pytest.mark.parametrize("cut", [1, 7, 20])
def test_malformed_protobuf_is_a_value_error(cut: int) -> None:
    data = _everywhere().SerializeToString()
    with pytest.raises(ValueError):
        formats.external_data_locations(data[:-cut])
    with pytest.raises(ValueError):
        formats.external_data_locations(b"\x0b\x00")  # wire type 3 (groups) never occurs in ONNX


def test_the_wire_schema_matches_onnx() -> None:
    """Each (message, field number) the reader descends into holds that message in onnx.proto."""
    for message, fields in formats._SCHEMA.items():
        descriptor = getattr(onnx, message).DESCRIPTOR
        for number, child in fields.items():
            field = descriptor.fields_by_number[number]
            assert field.message_type is not None and field.message_type.name == child, (message, number)
    tensor = onnx.TensorProto.DESCRIPTOR.fields_by_number
    assert tensor[formats._TENSOR_EXTERNAL_DATA].name == "external_data"
    assert tensor[formats._TENSOR_DATA_LOCATION].name == "data_location"
    assert onnx.TensorProto.EXTERNAL == formats._EXTERNAL
    # and every field of these messages that holds a tensor-bearing message is in the schema
    bearing = set(formats._SCHEMA) | {"TensorProto"}
    for message in formats._SCHEMA:
        for field in getattr(onnx, message).DESCRIPTOR.fields:
            if field.message_type is not None and field.message_type.name in bearing:
                assert formats._SCHEMA[message].get(field.number) == field.message_type.name, (message, field.name)
