"""Hostile and broken uploads: each is refused with a clear error and the right status, and nothing runs.

The canary payload creates a file when unpickled (checked once directly, so the tests below can fail);
it is then smuggled into every place a loader could unpickle it. The canary must never appear.
"""

from __future__ import annotations

import io
import json
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from workers.archive import ArchiveLimits, check_archive
from workers.errors import ModelRejected, ModelUnusable, TaskError
from workers.loader import load_model

torch.set_num_threads(1)


class Canary:
    """Unpickling this runs exec(), which writes the canary file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({str(self.path)!r}, 'w').write('pwned')",))


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(3, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(2, 2)).eval()


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A valid file of every format for the same tiny network."""
    root = tmp_path_factory.mktemp("good")
    net = _tiny()
    example = torch.zeros(1, 3, 4, 8, 8)
    paths = {k: root / name for k, name in [("pt2", "m.pt2"), ("ts", "m.pt"), ("sd", "sd.pt"), ("legacy", "legacy.pt"),
                                            ("st", "m.safetensors"), ("onnx", "m.onnx"), ("pickled", "pickled.pt")]}
    torch.export.save(torch.export.export(net, (example,)), paths["pt2"])
    paths["pt2dyn"] = root / "dyn.pt2"
    dynamic = {"input": {0: torch.export.Dim("batch")}}
    torch.export.save(torch.export.export(net, (torch.zeros(2, 3, 4, 8, 8),), dynamic_shapes=dynamic), paths["pt2dyn"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(net).save(str(paths["ts"]))
        torch.onnx.export(net, (example,), paths["onnx"], dynamo=False, opset_version=20, input_names=["x"])
    torch.save(net.state_dict(), paths["sd"])
    torch.save(net.state_dict(), paths["legacy"], _use_new_zipfile_serialization=False)
    torch.save(net, paths["pickled"])
    from safetensors.torch import save_file

    save_file(net.state_dict(), str(paths["st"]))
    return paths


@pytest.fixture()
def canary(tmp_path: Path) -> Path:
    return tmp_path / "canary"


def _refused(
    path: Path, fmt: str, reasons: set[str], kind: type[TaskError] = ModelRejected, header: dict | None = None
) -> TaskError:
    with pytest.raises(kind) as err:
        load_model(path, fmt, {"shape": [3, 4, 8, 8]} if header is None else header)
    assert err.value.code == "FAILED_PRECONDITION", err.value
    assert err.value.reason in reasons, err.value
    assert err.value.message
    return err.value


def _rewrite_zip(src: Path, dst: Path, edit: Callable[[str, bytes], bytes | None], add: dict[str, bytes] | None = None) -> None:
    """Copy the archive entry by entry (stored, like torch writes), editing or dropping (None) entries."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
        for name, data in (add or {}).items():
            zout.writestr(name, data)


def _torch_save_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# ---------------------------------------------------------------- the canary


def test_the_canary_payload_really_fires(tmp_path: Path) -> None:
    target = tmp_path / "proof"
    pickle.loads(pickle.dumps(Canary(target)))
    assert target.read_text() == "pwned"


@pytest.mark.parametrize("fmt", ["STATE_DICT", "TORCH_EXPORT", "TORCHSCRIPT", "SAFETENSORS", "ONNX"])
def test_raw_pickle_canary_is_never_unpickled(tmp_path: Path, canary: Path, fmt: str) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(pickle.dumps(Canary(canary), protocol=4))
    _refused(path, fmt, {"UNSAFE_PICKLE", "WRONG_FORMAT"})
    assert not canary.exists()


@pytest.mark.parametrize("fmt", ["STATE_DICT", "TORCH_EXPORT", "TORCHSCRIPT"])
def test_torch_save_canary_is_never_unpickled(tmp_path: Path, canary: Path, fmt: str) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(_torch_save_bytes({"weight": torch.zeros(2), "evil": Canary(canary)}))
    err = _refused(path, fmt, {"UNSAFE_PICKLE"})
    assert "builtins.exec" in err.message
    assert not canary.exists()


def test_canary_in_torch_export_sample_inputs(tmp_path: Path, canary: Path, good: dict[str, Path]) -> None:
    """torch.export.load falls back to weights_only=False for sample inputs: this file WOULD fire in plain torch."""
    path = tmp_path / "evil.pt2"
    payload = _torch_save_bytes(Canary(canary))
    _rewrite_zip(good["pt2"], path, lambda name, data: payload if "/data/sample_inputs/" in name else data)
    _refused(path, "TORCH_EXPORT", {"UNSAFE_PICKLE"})
    assert not canary.exists()


def test_canary_as_a_pickled_weight_in_torch_export(tmp_path: Path, canary: Path, good: dict[str, Path]) -> None:
    path = tmp_path / "evil.pt2"
    payload = _torch_save_bytes(Canary(canary))

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        return data

    _rewrite_zip(good["pt2"], path, edit)
    with zipfile.ZipFile(path) as z:
        config = json.loads(next(z.read(n) for n in z.namelist() if n.endswith("_weights_config.json")))
    weight_file = next(m["path_name"] for m in config["config"].values() if m["use_pickle"])
    path2 = tmp_path / "evil2.pt2"
    _rewrite_zip(path, path2, lambda name, data: payload if name.endswith("/data/weights/" + weight_file) else data)
    _refused(path2, "TORCH_EXPORT", {"UNSAFE_PICKLE"})
    assert not canary.exists()


def test_canary_as_an_opaque_constant_in_torch_export(tmp_path: Path, canary: Path, good: dict[str, Path]) -> None:
    path = tmp_path / "evil.pt2"

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("_constants_config.json"):
            return json.dumps({"config": {"evil": {"path_name": "opaque_obj_0", "use_pickle": True}}}).encode()
        return data

    root = zipfile.ZipFile(good["pt2"]).namelist()[0].split("/")[0]
    _rewrite_zip(good["pt2"], path, edit, add={f"{root}/data/constants/opaque_obj_0": pickle.dumps(Canary(canary))})
    _refused(path, "TORCH_EXPORT", {"UNSAFE_PICKLE"})
    assert not canary.exists()


def test_canary_in_a_torchscript_archive(tmp_path: Path, canary: Path, good: dict[str, Path]) -> None:
    path = tmp_path / "evil.pt"
    payload = pickle.dumps(Canary(canary), protocol=2)
    _rewrite_zip(good["ts"], path, lambda name, data: payload if name.endswith("/data.pkl") else data)
    _refused(path, "TORCHSCRIPT", {"UNSAFE_PICKLE"})
    assert not canary.exists()


def test_code_in_a_symbolic_shape_is_never_evaluated(tmp_path: Path, canary: Path, good: dict[str, Path]) -> None:
    """torch.export.load passes symbolic shapes to sympy.sympify (eval): in plain torch this file runs the payload."""
    symbol = b"Symbol('s"
    payload = f"0*len(__import__('builtins').exec(\"open({str(canary)!r}, 'w')\") or 'x') + "

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith(".json") and "/models/" in name:
            assert symbol in data
            return data.replace(symbol, json.dumps(payload)[1:-1].encode() + symbol, 1)
        return data

    path = tmp_path / "evil.pt2"
    _rewrite_zip(good["pt2dyn"], path, edit)
    err = _refused(path, "TORCH_EXPORT", {"ARCHIVE_UNSAFE"}, header={})
    assert "symbolic shape" in err.message and "nothing was loaded" in err.message
    assert not canary.exists()


@pytest.mark.parametrize(
    "where,code",
    [
        ("guard", "__import__('os').makedirs({canary!r}) or True"),
        ("target", "builtins.exec"),
        ("target", "torch.os.system"),
        ("target", "torch.ops.load_library"),
        ("target", "_operator.attrgetter"),
    ],
)
def test_code_in_guards_and_call_targets_is_refused(tmp_path: Path, canary: Path, good: dict[str, Path], where: str, code: str) -> None:
    """Guard code (exec'd when torch builds the module) and node targets (called when it runs): only data passes."""
    code = code.format(canary=str(canary))

    def edit(name: str, data: bytes) -> bytes:
        if not (name.endswith(".json") and "/models/" in name):
            return data
        program = json.loads(data)
        if where == "guard":
            program["guards_code"] = [code]
        else:
            program["graph_module"]["graph"]["nodes"][0]["target"] = code
        return json.dumps(program).encode()

    path = tmp_path / "evil.pt2"
    _rewrite_zip(good["pt2"], path, edit)
    err = _refused(path, "TORCH_EXPORT", {"ARCHIVE_UNSAFE", "UNSAFE_OPERATOR"})
    assert "nothing was loaded" in err.message
    assert not canary.exists()


def test_compiled_code_inside_a_torch_export_archive_is_refused(tmp_path: Path, good: dict[str, Path]) -> None:
    root = zipfile.ZipFile(good["pt2"]).namelist()[0].split("/")[0]
    path = tmp_path / "aoti.pt2"
    _rewrite_zip(good["pt2"], path, lambda n, d: d, add={f"{root}/data/aotinductor/model/model.so": b"\x7fELF"})
    err = _refused(path, "TORCH_EXPORT", {"ARCHIVE_UNSAFE"})
    assert "aotinductor" in err.message


# ---------------------------------------------------------------- pickled modules

@pytest.mark.parametrize("fmt", ["STATE_DICT", "TORCH_EXPORT", "TORCHSCRIPT"])
def test_pickled_module_is_refused_with_export_instructions(good: dict[str, Path], fmt: str) -> None:
    err = _refused(good["pickled"], fmt, {"PICKLED_MODULE"})
    assert "torch.export.save(torch.export.export(" in err.message and "torch.onnx.export(" in err.message


# ---------------------------------------------------------------- archives

def test_zip_bomb_is_refused_before_decompressing(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb/archive_format", "pt2")
        z.writestr("bomb/data/weights/weight_0", b"\0" * (20 * 2**20))
    assert path.stat().st_size < 100_000
    err = _refused(path, "TORCH_EXPORT", {"ARCHIVE_UNSAFE"})
    assert "zip bomb" in err.message


def test_declared_sizes_are_checked(tmp_path: Path) -> None:
    """Entries that declare ~4 GB each (sizes patched in the central directory) are refused by their declaration."""
    path = tmp_path / "declared.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for i in range(5):
            z.writestr(f"m/data/weights/weight_{i}", b"x")
    data = bytearray(path.read_bytes())
    start = 0
    while (pos := data.find(b"PK\x01\x02", start)) >= 0:  # central directory headers
        data[pos + 20 : pos + 28] = (0xF0000000).to_bytes(4, "little") * 2  # compressed, uncompressed size
        start = pos + 4
    path.write_bytes(bytes(data))
    with pytest.raises(ModelRejected) as err:
        check_archive(path, "test archive")
    assert err.value.reason == "ARCHIVE_UNSAFE" and "declare" in err.value.message


def test_too_many_entries_and_escaping_names(tmp_path: Path) -> None:
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as z:
        for i in range(30):
            z.writestr(f"m/{i}", b"")
    with pytest.raises(ModelRejected) as err:
        check_archive(many, "test archive", ArchiveLimits(max_entries=20))
    assert err.value.reason == "ARCHIVE_UNSAFE"
    for name in ("../evil.py", "m/../../evil.py", "/etc/evil", "C:\\evil", "m\\..\\..\\evil"):
        path = tmp_path / "escape.pt"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("m/data.pkl", pickle.dumps({}))
            z.writestr(name, b"x")
        with pytest.raises(ModelRejected) as err:
            load_model(path, "STATE_DICT", {})
        assert err.value.reason == "ARCHIVE_UNSAFE", name


# ---------------------------------------------------------------- truncated and mislabelled files

@pytest.mark.parametrize(
    "key,fmt",
    [("pt2", "TORCH_EXPORT"), ("ts", "TORCHSCRIPT"), ("sd", "STATE_DICT"), ("legacy", "STATE_DICT"),
     ("st", "SAFETENSORS"), ("onnx", "ONNX")],
)
def test_truncated_files(tmp_path: Path, good: dict[str, Path], key: str, fmt: str) -> None:
    load_model(good[key], fmt, {"shape": [3, 4, 8, 8]})  # the complete file loads
    data = good[key].read_bytes()
    path = tmp_path / good[key].name
    path.write_bytes(data[: len(data) // 2])
    err = _refused(path, fmt, {"TRUNCATED"})
    assert "truncated" in err.message.lower()


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    _refused(path, "ONNX", {"TRUNCATED"})


@pytest.mark.parametrize(
    "key,fmt,named",
    [
        ("onnx", "TORCH_EXPORT", "not a zip"),
        ("pt2", "ONNX", "TORCH_EXPORT"),
        ("ts", "STATE_DICT", "TORCHSCRIPT"),
        ("sd", "TORCHSCRIPT", "STATE_DICT"),
        ("st", "STATE_DICT", "SAFETENSORS"),
        ("sd", "SAFETENSORS", "STATE_DICT"),
        ("onnx", "SAFETENSORS", "not"),
    ],
)
def test_wrong_format_names_what_the_file_is(good: dict[str, Path], key: str, fmt: str, named: str) -> None:
    err = _refused(good[key], fmt, {"WRONG_FORMAT"})
    assert named in err.message


def test_an_image_uploaded_as_onnx(tmp_path: Path) -> None:
    path = tmp_path / "cat.onnx"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    _refused(path, "ONNX", {"WRONG_FORMAT"})


# ---------------------------------------------------------------- ONNX specifics

def test_onnx_with_external_data_is_refused(tmp_path: Path, good: dict[str, Path]) -> None:
    model = onnx.load(str(good["onnx"]))
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    assert (tmp_path / "weights.bin").exists()
    err = _refused(path, "ONNX", {"EXTERNAL_DATA"})
    assert "weights.bin" in err.message


def test_onnx_with_an_unsupported_op_names_op_and_node(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "conv.weight")
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight"], ["c"], name="conv"),
        helper.make_node("Hardmax", ["c"], ["y"], name="mystery_norm", axis=1),
    ]
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "unsupported.onnx"
    onnx.save(model, str(path))
    err = _refused(path, "ONNX", {"UNSUPPORTED_OP"}, kind=ModelUnusable, header={})
    assert "Hardmax" in err.message and "mystery_norm" in err.message


def test_onnx_that_fails_the_checker(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x", "x", "x"], ["y"], name="r")], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    _refused(path, "ONNX", {"ONNX_INVALID"})


# ---------------------------------------------------------------- ONNX bundles: external data only from inside the upload

def _externalised(good: dict[str, Path], location: str) -> tuple[onnx.ModelProto, bytes]:
    """The good ONNX model with every initializer's data moved to `location` (one file), and that file's bytes."""
    model = onnx.load(str(good["onnx"]))
    blob = b""
    for tensor in model.graph.initializer:
        raw = tensor.raw_data or numpy_helper.to_array(tensor).tobytes()
        tensor.ClearField("raw_data")
        for field in ("float_data", "int64_data", "int32_data", "double_data"):
            tensor.ClearField(field)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(len(blob))), ("length", str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        blob += raw
    return model, blob


def _bundle(path: Path, model: onnx.ModelProto, files: dict[str, bytes]) -> Path:
    from kernelscope import formats

    with open(path, "wb") as out:
        formats.onnx_bundle(out, "m.onnx", model.SerializeToString(), files)
    return path


def test_an_onnx_bundle_loads_what_the_inline_model_computes(tmp_path: Path, good: dict[str, Path]) -> None:
    model, blob = _externalised(good, "m.onnx.data")
    bundled = load_model(_bundle(tmp_path / "bundle", model, {"m.onnx.data": blob}), "ONNX", {"shape": [3, 4, 8, 8]})
    inline = load_model(good["onnx"], "ONNX", {"shape": [3, 4, 8, 8]})
    assert bundled.state_dict.keys() == inline.state_dict.keys()
    x = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(bundled.module(x), inline.module(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "location",
    ["../../etc/passwd", "/etc/passwd", "secret.bin", "weights/../m.onnx.data", "m.onnx", "C:\\data.bin", "link.bin"],
)
def test_external_data_outside_the_upload_is_refused(tmp_path: Path, good: dict[str, Path], location: str) -> None:
    model, blob = _externalised(good, location)
    # every target exists where a loader resolving paths on disk would find it, with the right bytes
    (tmp_path / "secret.bin").write_bytes(blob)
    (tmp_path / "weights").mkdir()
    path = _bundle(tmp_path / "bundle", model, {"m.onnx.data": blob})
    if location == "link.bin":  # a member that is a symbolic link to the secret, as `zip --symlinks` stores it
        with zipfile.ZipFile(path, "a") as archive:
            info = zipfile.ZipInfo("link.bin")
            info.external_attr = 0o120777 << 16
            archive.writestr(info, str(tmp_path / "secret.bin"))
    err = _refused(path, "ONNX", {"EXTERNAL_DATA_OUTSIDE_UPLOAD"})
    assert ("link" if location == "link.bin" else repr(location)) in err.message


def test_a_bundle_whose_data_file_is_short_is_truncated(tmp_path: Path, good: dict[str, Path]) -> None:
    model, blob = _externalised(good, "m.onnx.data")
    err = _refused(_bundle(tmp_path / "bundle", model, {"m.onnx.data": blob[:-4]}), "ONNX", {"TRUNCATED"})
    assert "m.onnx.data" in err.message


def test_a_bundle_is_checked_like_every_archive(tmp_path: Path, good: dict[str, Path]) -> None:
    model, blob = _externalised(good, "m.onnx.data")
    path = tmp_path / "bomb"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("m.onnx", model.SerializeToString())
        archive.writestr("m.onnx.data", blob + bytes(64 << 20))
    _refused(path, "ONNX", {"ARCHIVE_UNSAFE"})
    two = tmp_path / "two"
    with zipfile.ZipFile(two, "w") as archive:
        archive.writestr("m.onnx", model.SerializeToString())
        archive.writestr("other.onnx", model.SerializeToString())
        archive.writestr("m.onnx.data", blob)
    _refused(two, "ONNX", {"WRONG_FORMAT"})


def test_a_bare_onnx_with_its_data_beside_it_on_disk_is_still_refused(tmp_path: Path, good: dict[str, Path]) -> None:
    model, blob = _externalised(good, "m.onnx.data")
    (tmp_path / "m.onnx.data").write_bytes(blob)  # beside the blob in the worker's cache, say: never read
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    err = _refused(path, "ONNX", {"EXTERNAL_DATA"})
    assert "upload the data file with it" in err.message and "m.onnx.data" in err.message
    # an external tensor that onnx's own walk misses (a sparse initializer) is found too
    hidden = onnx.load(str(good["onnx"]))
    values = numpy_helper.from_array(np.ones(2, np.float32), "sparse_values")
    values.ClearField("raw_data")
    values.data_location = TensorProto.EXTERNAL
    entry = values.external_data.add()
    entry.key, entry.value = "location", "m.onnx.data"
    indices = numpy_helper.from_array(np.array([0, 1], np.int64), "sparse_indices")
    hidden.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4]))
    path.write_bytes(hidden.SerializeToString())
    err = _refused(path, "ONNX", {"EXTERNAL_DATA"})
    assert "sparse_values" in err.message


# ---------------------------------------------------------------- issue 13: operators, TorchScript, bombs, memory
# A .pt2 is a program: the attacker writes its JSON. These build the files as an attacker would (export a
# harmless module, then edit the serialised graph) and check that nothing runs and no file changes.


@pytest.fixture(autouse=True)
def _torchscript_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The TorchScript tests above check what happens once an operator has turned TorchScript on."""
    monkeypatch.setenv("KERNELSCOPE_ALLOW_TORCHSCRIPT", "1")


class _Zeros(nn.Module):
    """torch.zeros(4, uint8), filled with 65 in place, summed into the output: the node an attacker rewrites."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.zeros(4, dtype=torch.uint8)
        t.fill_(65)
        return x + t.float().sum()


def _program_edit(src: Path, dst: Path, change: Callable[[dict], None]) -> None:
    def edit(name: str, data: bytes) -> bytes:
        if not (name.endswith(".json") and "/models/" in name):
            return data
        program = json.loads(data)
        change(program)
        return json.dumps(program).encode()

    _rewrite_zip(src, dst, edit)


def _from_file_pt2(tmp_path: Path, victim: Path, shared: bool) -> Path:
    """aten.zeros rewritten to aten.from_file(victim, shared, 4, uint8): read it, or (shared) overwrite it with fill_."""
    clean = tmp_path / "zeros.pt2"
    torch.export.save(torch.export.export(_Zeros(), (torch.zeros(1, 2),)), clean)

    def change(program: dict) -> None:
        node = next(n for n in program["graph_module"]["graph"]["nodes"] if n["target"] == "torch.ops.aten.zeros.default")
        node["target"] = "torch.ops.aten.from_file.default"
        node["inputs"] = [
            {"name": "filename", "arg": {"as_string": str(victim)}, "kind": 1},
            {"name": "shared", "arg": {"as_bool": shared}, "kind": 1},
            {"name": "size", "arg": {"as_int": 4}, "kind": 1},
            {"name": "dtype", "arg": {"as_scalar_type": 1}, "kind": 2},
        ]

    evil = tmp_path / "evil.pt2"
    _program_edit(clean, evil, change)
    return evil


def _load_and_run(path: Path) -> TaskError | None:
    """What a job does: load, then run the model. Returns the refusal, or None when the model ran."""
    try:
        model = load_model(path, "TORCH_EXPORT", {})
    except TaskError as exc:
        return exc
    model.module(torch.zeros(1, 2))
    return None


@pytest.mark.parametrize("shared", [False, True], ids=["read", "overwrite"])
def test_a_pt2_calling_from_file_is_refused_and_the_file_is_untouched(tmp_path: Path, shared: bool) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"secret, do not touch")
    evil = _from_file_pt2(tmp_path, victim, shared)
    err = _load_and_run(evil)
    assert victim.read_bytes() == b"secret, do not touch"  # before the fix: "AAAAet, do not touch"
    assert err is not None and err.code == "FAILED_PRECONDITION" and err.reason == "UNSAFE_OPERATOR", err
    assert "aten.from_file" in err.message and "secret" not in err.message


def test_a_pt2_calling_an_operator_outside_the_list_is_refused_by_name(tmp_path: Path) -> None:
    """aten.save exists and its namespace is a real one: namespace checks let it through, the list does not."""
    clean = tmp_path / "zeros.pt2"
    torch.export.save(torch.export.export(_Zeros(), (torch.zeros(1, 2),)), clean)
    marker = tmp_path / "marker.pt"

    def change(program: dict) -> None:
        node = next(n for n in program["graph_module"]["graph"]["nodes"] if n["target"] == "torch.ops.aten.fill_.Scalar")
        node["target"] = "torch.ops.aten.save.default"
        node["inputs"] = [node["inputs"][0], {"name": "filename", "arg": {"as_string": str(marker)}, "kind": 1}]

    evil = tmp_path / "evil.pt2"
    _program_edit(clean, evil, change)
    err = _refused(evil, "TORCH_EXPORT", {"UNSAFE_OPERATOR"}, header={})
    assert "aten.save" in err.message
    assert not marker.exists()


def test_the_loaded_graph_is_checked_inside_subgraphs_too() -> None:
    """What runs is checked as well as the file: a call in a higher-order op's body is found."""
    from torch import fx

    from workers.loader.torch_export import _check_graph

    body = fx.Graph()
    x = body.placeholder("x")
    body.output(body.call_function(torch.ops.aten.from_file.default, ("/etc/passwd",)))
    top = fx.Graph()
    y = top.placeholder("y")
    top.get_attr("true_graph_0")
    top.output(top.call_function(torch.ops.aten.relu.default, (y,)))
    root = nn.Module()
    root.add_module("true_graph_0", fx.GraphModule(nn.Module(), body))
    graph_module = fx.GraphModule(root, top)
    del x
    with pytest.raises(ModelRejected) as err:
        _check_graph(graph_module)
    assert err.value.reason == "UNSAFE_OPERATOR" and "aten.from_file" in err.value.message
    clean = fx.Graph()  # a graph of allowed operators passes
    clean.output(clean.call_function(torch.ops.aten.relu.default, (clean.placeholder("y"),)))
    _check_graph(fx.GraphModule(nn.Module(), clean))


def test_the_operator_list_covers_a_higher_order_op_and_refuses_storage_overloads() -> None:
    from workers import operators

    assert operators.allowed("torch.ops.higher_order.wrap_with_set_grad_enabled")
    assert operators.allowed("torch.ops.aten.conv3d.default") and operators.allowed("_operator.getitem")
    for bad in ("torch.ops.aten.from_file.default", "torch.ops.aten.set_.source_Storage", "torch.ops.aten._copy_from.default",
                "torch.ops.mylib.anything.default", "torch.ops.higher_order.run_const_graph", "builtins.open",
                "torch.ops.aten.save.default", "torch.ops.aten.empty_strided.default", "torch.ops.prims.empty_strided.default"):
        assert not operators.allowed(bad), bad
    assert operators.target_name(torch.ops.aten.add.Tensor) == "torch.ops.aten.add.Tensor"
    assert operators.target_name(torch.ops.higher_order.cond) == "torch.ops.higher_order.cond"
    import operator as op

    assert operators.target_name(op.getitem) == "_operator.getitem"


from workers.samples.zoo import names as _zoo_names  # noqa: E402 - this section's own import


@pytest.mark.slow
@pytest.mark.parametrize("name", _zoo_names())
def test_every_zoo_architecture_still_loads(tmp_path: Path, name: str) -> None:
    """The list holds what torch.export emits for the zoo (CNNs and video transformers). Dynamic batch only: its
    operators are a superset of the batch-1 export's (sym_size), and the zoo matrix's describe cells load both."""
    from workers.samples.zoo.export import export_zoo_model

    exported = export_zoo_model(name, "pt2_dynamic", tmp_path)
    assert load_model(exported.path, "TORCH_EXPORT", {}).module is not None


@pytest.mark.parametrize("use_pickle", [True, False])
def test_weights_named_outside_the_archive_are_refused(tmp_path: Path, good: dict[str, Path], use_pickle: bool) -> None:
    """A path_name of ../../../../etc/passwd was an uncaught KeyError (INTERNAL); the message names no outside file."""

    def edit(name: str, data: bytes) -> bytes:
        if not name.endswith("_weights_config.json"):
            return data
        config = json.loads(data)
        first = next(iter(config["config"].values()))
        first["path_name"] = "../../../../etc/passwd"
        first["use_pickle"] = use_pickle
        return json.dumps(config).encode()

    path = tmp_path / "escape.pt2"
    _rewrite_zip(good["pt2"], path, edit)
    err = _refused(path, "TORCH_EXPORT", {"ARCHIVE_UNSAFE"})
    assert "passwd" not in err.message and "root:" not in err.message


def _bomb_pt2(src: Path, dst: Path, members: int) -> None:
    """The outsider's bomb, smaller: a valid program plus `members` zero-filled 1 MiB extra/ entries, deflated."""
    root = zipfile.ZipFile(src).namelist()[0].split("/")[0]
    zero = bytes(2**20)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
        for i in range(members):
            zout.writestr(f"{root}/extra/pad{i}", zero, compress_type=zipfile.ZIP_DEFLATED)


def test_an_extra_folder_bomb_is_refused_before_torch_reads_it(tmp_path: Path, good: dict[str, Path]) -> None:
    """300 zero-filled 1 MiB extra/ members (each under the per-entry ratio floor) in ~0.5 MB: refused unread."""
    import subprocess
    import sys
    import textwrap

    bomb = tmp_path / "bomb.pt2"
    _bomb_pt2(good["pt2"], bomb, 300)
    assert bomb.stat().st_size < 2 * 2**20
    code = textwrap.dedent(
        f"""
        import resource, torch
        torch.set_num_threads(1)
        from workers.loader import load_model
        from workers.errors import TaskError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            load_model({str(bomb)!r}, "TORCH_EXPORT", {{}})
            print("loaded yes")
        except TaskError as exc:
            print("refused", exc.reason)
        print("grew_kib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        """
    )
    root = Path(__file__).resolve().parents[2]
    env = {**__import__("os").environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert lines.get("refused") == "ARCHIVE_UNSAFE", out.stdout
    assert int(lines["grew_kib"]) < 100 * 1024, out.stdout  # before the fix torch.export.load read all 300 MiB


def test_a_whole_archive_ratio_limit_catches_many_small_members(tmp_path: Path) -> None:
    """Each member stays under the per-entry ratio floor; together they are a bomb."""
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(80):
            zf.writestr(f"m/extra/pad{i}", bytes(2**20))
    with pytest.raises(ModelRejected) as err:
        check_archive(path, "an archive")
    assert err.value.reason == "ARCHIVE_UNSAFE" and "zip bomb" in err.value.message


def test_torchscript_is_refused_by_default_with_export_instructions(good: dict[str, Path], canary: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KERNELSCOPE_ALLOW_TORCHSCRIPT", raising=False)
    err = _refused(good["ts"], "TORCHSCRIPT", {"TORCHSCRIPT_DISABLED"})
    assert "torch.export.export" in err.message and "KERNELSCOPE_ALLOW_TORCHSCRIPT=1" in err.message
    monkeypatch.setenv("KERNELSCOPE_ALLOW_TORCHSCRIPT", "1")
    assert load_model(good["ts"], "TORCHSCRIPT", {"shape": [3, 4, 8, 8]}).format == "TORCHSCRIPT"


class _Huge(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.full((5 * 2**30,), 1.0).sum()  # 20 GB of float32


@pytest.mark.slow
def test_a_model_outgrowing_the_job_memory_limit_is_resource_exhausted(tmp_path: Path) -> None:
    """Run as a job runs a task, under workers.limits' memory limit: RESOURCE_EXHAUSTED / MEMORY_LIMIT, not TASK_CRASHED."""
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "huge.pt2"
    torch.export.save(torch.export.export(_Huge(), (torch.zeros(1, 2),)), path)
    code = textwrap.dedent(
        f"""
        import json
        from pathlib import Path
        from workers.limits import apply_limits
        apply_limits(memory_bytes=3 * 2**30, cpu_seconds=None)
        import torch
        torch.set_num_threads(1)
        from workers import job, tasks
        from workers.analyses.describe import Options
        from workers.analysis import Analysis, Outcome
        from workers.loader import load_model

        class ForwardProbe(Analysis):
            options = Options

            def run(self, ctx, options):
                return Outcome({{"sum": float(ctx.model.module(torch.zeros(1, 2)).sum())}})

        tasks.get = lambda name: ForwardProbe()  # a task that only runs the model forward

        class Progress:
            def report(self, *a, **k):
                pass

        model = load_model({str(path)!r}, "TORCH_EXPORT", {{}})
        out = Path({str(tmp_path / "out")!r}); out.mkdir()
        from kernelscope.v1 import tasks_pb2
        probe = tasks_pb2.Task(name="describe", describe=tasks_pb2.DescribeOptions())  # run as ForwardProbe (above)
        result = job._run_task(probe, model, None, torch.device("cpu"), out, Progress())
        print(json.dumps(result["error"]))
        """
    )
    root = Path(__file__).resolve().parents[2]
    env = {**__import__("os").environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    error = json.loads(out.stdout.strip().splitlines()[-1])
    assert error is not None and error["code"] == "RESOURCE_EXHAUSTED" and error["reason"] == "MEMORY_LIMIT", error


class _ZerosWithoutGrad(nn.Module):
    """The same payload node, inside torch.no_grad(): export puts it in a wrap_with_set_grad_enabled body."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = torch.zeros(4, dtype=torch.uint8)
            t.fill_(65)
            y = x + t.float().sum()
        return y * 2


def test_a_call_hidden_in_a_higher_order_op_body_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"secret, do not touch")
    clean = tmp_path / "nested.pt2"
    torch.export.save(torch.export.export(_ZerosWithoutGrad(), (torch.zeros(1, 2),)), clean)
    found: list[dict] = []

    def change(program: dict) -> None:
        stack: list[object] = [program["graph_module"]]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                if item.get("target") == "torch.ops.aten.zeros.default":
                    item["target"] = "torch.ops.aten.from_file.default"
                    item["inputs"] = [
                        {"name": "filename", "arg": {"as_string": str(victim)}, "kind": 1},
                        {"name": "shared", "arg": {"as_bool": True}, "kind": 1},
                        {"name": "size", "arg": {"as_int": 4}, "kind": 1},
                        {"name": "dtype", "arg": {"as_scalar_type": 1}, "kind": 2},
                    ]
                    found.append(item)
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
        top = [n["target"] for n in program["graph_module"]["graph"]["nodes"]]
        assert "torch.ops.aten.from_file.default" not in top  # the payload is only in the subgraph

    evil = tmp_path / "evil.pt2"
    _program_edit(clean, evil, change)
    assert found
    err = _load_and_run(evil)
    assert victim.read_bytes() == b"secret, do not touch"
    assert err is not None and err.reason == "UNSAFE_OPERATOR" and "aten.from_file" in err.message, err


# ---------------------------------------------------------------- issue 13: the sandboxed model process (workers/sandbox.py)
# Whole jobs through workers.job.run with a stand-in for the service: the model loads and runs in the sandbox. Each
# fails without it (checked with workers.sandbox._confine made a no-op: the victim is overwritten, the secret leaks).


class _Thief(nn.Module):
    """TorchScript an operator has allowed: its compiled __setstate__ (run by torch.jit.load) overwrites one file
    (aten.from_file, shared) and reads another into the error message."""

    def __init__(self, secret: str, victim: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 2, 3, padding=1)
        self.secret, self.victim = secret, victim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, str, bool]:
        return (self.secret, self.victim, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, str, bool]) -> None:
        self.secret, self.victim, self.training = state[0], state[1], state[2]
        smashed = torch.from_file(self.victim, True, 4, dtype=torch.uint8)
        smashed.fill_(65)
        stolen = torch.from_file(self.secret, False, 22, dtype=torch.uint8)
        raise RuntimeError("stolen: " + str(stolen))


class _FakeService:
    """workers.connection.ServiceConnection's blob and artifact calls, in memory."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.fetches: list[str] = []
        self.artifacts: list[tuple[str, bytes]] = []

    def add(self, data: bytes) -> str:
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return sha

    def fetch_blob(self, sha256: str, dest: Path) -> None:
        self.fetches.append(sha256)
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(self.blobs[sha256])
        tmp.replace(dest)

    def write_artifact(self, job_id: str, task: str, name: str, path: Path, media_type: str) -> dict:
        self.artifacts.append((name, path.read_bytes()))
        return {"name": name, "media_type": media_type, "size_bytes": path.stat().st_size, "sha256": "", "task": task}

    def close(self) -> None:
        return None


@pytest.fixture()
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> _FakeService:
    from workers import job

    fake = _FakeService()
    monkeypatch.setattr(job, "ServiceConnection", type("Connection", (), {"from_settings": staticmethod(lambda: fake)}))
    monkeypatch.setenv("KERNELSCOPE_WORKER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("KERNELSCOPE_DEVICE", "cpu")
    return fake


_WEIGHT_TASK = {"name": "tconv_stats", "options": {"layers": ["0"], "restarts": 0, "fit_steps": 5}}


def _job(sha: str, fmt: str, tasks: list[dict]) -> Any:
    """workers.job.run on the JobSpec the service would send; its JobManifest (kernelscope.contract both ways)."""
    from google.protobuf import json_format
    from kernelscope import contract
    from kernelscope.v1 import common_pb2, models_pb2, tasks_pb2, worker_pb2
    from workers import job

    model = models_pb2.Model(sha256=sha, format=models_pb2.ModelFormat.Value(fmt), input_spec=common_pb2.InputSpec(shape=[3, 4, 8, 8]))
    typed = [json_format.ParseDict({"name": t["name"], t["name"]: t["options"]}, tasks_pb2.Task()) for t in tasks]
    spec = worker_pb2.JobSpec(job_id="j" + sha[:8], model=model, tasks=typed)
    return contract.manifest_from_json(job.run(contract.to_json(spec)))


def test_hostile_torchscript_in_a_job_cannot_read_or_smash_files(tmp_path: Path, good: dict[str, Path], service: _FakeService) -> None:
    from workers.cache import BlobCache

    tenant_b = service.add(good["pt2"].read_bytes())
    assert not _job(tenant_b, "TORCH_EXPORT", [_WEIGHT_TASK]).HasField("error")  # tenant B's model is now in the shared cache
    victim = BlobCache().path(tenant_b)
    secret = tmp_path / "secret.txt"
    secret.write_text("the worker's secret!!!")
    thief = tmp_path / "thief.pt"
    torch.jit.script(_Thief(str(secret), str(victim))).save(str(thief))
    manifest = _job(service.add(thief.read_bytes()), "TORCHSCRIPT", [_WEIGHT_TASK, {"name": "kernel_viz", "options": {"layers": ["conv1"], "channels": [0], "steps": 2}}])
    assert "116, 104, 101" not in str(manifest) and "stolen" not in str(manifest)  # b"the" as the tensor prints
    assert victim.read_bytes() == good["pt2"].read_bytes()  # before the sandbox: "AAAA" at its start
    assert manifest.sandbox.landlock and manifest.sandbox.network == "no-sockets"
    again = _job(tenant_b, "TORCH_EXPORT", [_WEIGHT_TASK])  # tenant B's next job
    assert not again.HasField("error") and not again.results[0].HasField("error"), again


def test_a_cache_entry_corrupted_in_place_is_refetched_by_the_next_job(
    good: dict[str, Path], service: _FakeService, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import os

    from workers.cache import BlobCache

    sha = service.add(good["pt2"].read_bytes())
    assert not _job(sha, "TORCH_EXPORT", [_WEIGHT_TASK]).results[0].HasField("error")
    cached = BlobCache().path(sha)
    os.chmod(cached, 0o644)
    with open(cached, "r+b") as f:  # what the from_file payload did to another tenant's entry before the fix
        f.write(b"AAAA")
    with caplog.at_level(logging.WARNING, logger="workers.cache"):
        manifest = _job(sha, "TORCH_EXPORT", [_WEIGHT_TASK])
    assert not manifest.HasField("error") and not manifest.results[0].HasField("error"), manifest
    assert service.fetches == [sha, sha]
    assert any("corrupt" in r.getMessage() for r in caplog.records)


class _Hog(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x + torch.ones(2**30).sum())  # 4 GiB of float32, before the layer a task hooks


@pytest.mark.slow
def test_a_model_outgrowing_memory_in_a_job_is_resource_exhausted(tmp_path: Path, service: _FakeService, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNELSCOPE_JOB_MEMORY_BYTES", str(2 << 30))
    hog = tmp_path / "hog.pt2"
    torch.export.save(torch.export.export(_Hog(), (torch.zeros(1, 3, 4, 8, 8),)), hog)
    manifest = _job(service.add(hog.read_bytes()), "TORCH_EXPORT", [{"name": "kernel_viz", "options": {"layers": ["conv1"], "channels": [0], "steps": 2}}])
    errors = [manifest.error] + [r.error for r in manifest.results]
    found = [e for e in errors if e.code]
    assert found and (found[0].code, found[0].reason) == ("RESOURCE_EXHAUSTED", "MEMORY_LIMIT"), manifest
