"""What the client accepts as a model, and how it tells the formats apart."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from kernelscope.v1 import models_pb2
from kernelscope import formats
from sdk.errors import ModelSourceError
from sdk.model_source import prepare


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3, 4))


def test_a_module_is_exported_and_its_input_shape_recorded() -> None:
    model = Tiny().eval()
    source = prepare(model, example_input=torch.zeros(1, 3, 4, 8, 8), input_spec={"mean": [0.5] * 3, "std": [0.25] * 3})
    assert source.format == models_pb2.TORCH_EXPORT
    assert list(source.input_spec.shape) == [3, 4, 8, 8]
    assert list(source.input_spec.mean) == [0.5] * 3, "caller's normalisation must survive the shape fill-in"
    data = b"".join(source.chunks())
    assert hashlib.sha256(data).hexdigest() == source.sha256 and len(data) == source.size
    loaded = torch.export.load(io.BytesIO(data)).module()
    x = torch.randn(1, 3, 4, 8, 8)
    assert torch.allclose(loaded(x), model(x), atol=1e-6)


def test_a_module_without_example_input_is_refused_clearly() -> None:
    with pytest.raises(ModelSourceError, match="example_input"):
        prepare(Tiny())


def test_formats_are_told_apart_by_content(tmp_path: Path) -> None:
    model = Tiny().eval()
    torchscript = tmp_path / "a.pt"
    torch.jit.save(torch.jit.script(model), torchscript)
    state = tmp_path / "b.pt"
    torch.save(model.state_dict(), state)
    exported = tmp_path / "c.bin"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 3, 4, 8, 8),)), exported)
    from safetensors.torch import save_file

    safe = tmp_path / "d.bin"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, safe)
    assert prepare(torchscript).format == models_pb2.TORCHSCRIPT
    assert prepare(state).format == models_pb2.STATE_DICT
    assert prepare(exported).format == models_pb2.TORCH_EXPORT
    assert prepare(safe).format == models_pb2.SAFETENSORS
    assert prepare(state, format="torchscript").format == models_pb2.TORCHSCRIPT


def test_a_missing_file_and_an_unknown_object_are_refused() -> None:
    with pytest.raises(ModelSourceError, match="no model file"):
        prepare("/nonexistent/model.pt2")
    with pytest.raises(ModelSourceError, match="cannot upload"):
        prepare(object())


# ---------------------------------------------------------------- formats by content only

class VideoResNet(nn.Module):
    """Named like torchvision's, so that TorchScript writes code/__torch__/torchvision/models/video/resnet.py."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv3d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.stem(x).mean(dim=(2, 3, 4)))


VideoResNet.__module__ = "torchvision.models.video.resnet"
EXAMPLE = torch.zeros(1, 3, 4, 8, 8)


def test_a_torchscript_archive_of_a_torchvision_model_is_torchscript(tmp_path: Path) -> None:
    path = tmp_path / "r3d.pt"
    torch.jit.trace(VideoResNet().eval(), EXAMPLE).save(str(path))
    with zipfile.ZipFile(path) as archive:
        assert any("/code/__torch__/torchvision/models/video/" in n for n in archive.namelist())
    assert prepare(path).format == models_pb2.TORCHSCRIPT
    assert prepare(path.read_bytes()).format == models_pb2.TORCHSCRIPT


def test_the_suffix_is_never_believed(tmp_path: Path) -> None:
    model = Tiny().eval()
    exported = tmp_path / "really_a_pt2.onnx"
    torch.export.save(torch.export.export(model, (EXAMPLE,)), exported)
    assert prepare(exported).format == models_pb2.TORCH_EXPORT
    state = tmp_path / "really_a_state_dict.safetensors"
    torch.save(model.state_dict(), state)
    assert prepare(state).format == models_pb2.STATE_DICT
    legacy = tmp_path / "legacy.pt2"
    torch.save(model.state_dict(), legacy, _use_new_zipfile_serialization=False)
    assert prepare(legacy).format == models_pb2.STATE_DICT
    onnx_file = tmp_path / "model.pt2"
    _export_onnx(model, onnx_file, dynamo=False)
    assert prepare(onnx_file).format == models_pb2.ONNX
    junk = tmp_path / "notes.onnx"
    junk.write_bytes(b"just some text, no model")
    with pytest.raises(ModelSourceError, match="format="):
        prepare(junk)
    assert prepare(junk, format="onnx").format == models_pb2.ONNX  # the caller may insist
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(onnx_file.read_bytes()[:-100])
    with pytest.raises(ModelSourceError, match="truncated ONNX"):
        prepare(cut)


# ---------------------------------------------------------------- ONNX with external data

def _export_onnx(model: nn.Module, path: Path, dynamo: bool = True) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (EXAMPLE,), str(path))  # PyTorch's default: weights in path + ".data"
        else:
            torch.onnx.export(model, (EXAMPLE,), str(path), dynamo=False, input_names=["x"])


@pytest.fixture(scope="module")
def dynamo_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dynamo") / "model.onnx"
    torch.manual_seed(0)
    _export_onnx(VideoResNet().eval(), path)
    assert (path.parent / "model.onnx.data").is_file(), "torch.onnx.export wrote no external data"
    return path


def test_an_onnx_path_with_external_data_is_uploaded_as_one_bundle(dynamo_onnx: Path) -> None:
    import onnx

    source = prepare(dynamo_onnx)
    assert source.format == models_pb2.ONNX and source.name == "model.onnx"
    data = b"".join(source.chunks())
    assert len(data) == source.size and hashlib.sha256(data).hexdigest() == source.sha256
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        infos = bundle.infolist()
        assert [i.filename for i in infos] == ["model.onnx", "model.onnx.data"]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        assert bundle.read("model.onnx") == dynamo_onnx.read_bytes()
        assert bundle.read("model.onnx.data") == (dynamo_onnx.parent / "model.onnx.data").read_bytes()
    assert prepare(dynamo_onnx).sha256 == source.sha256, "the same files must make the same bundle (and model id)"
    # what onnx itself reads from the pair is what the bundle carries
    assert formats.kind_of(data) == "ONNX_BUNDLE"
    assert onnx.load(str(dynamo_onnx)).graph.initializer[0].raw_data


def test_only_the_referenced_data_files_travel(tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(_plain_onnx(tmp_path)))
    path = tmp_path / "net.onnx"
    (tmp_path / "weights").mkdir()
    onnx.save(model, str(path), save_as_external_data=True, location="weights/net.bin", size_threshold=0)
    (tmp_path / "unrelated.bin").write_bytes(b"secret")
    data = b"".join(prepare(path).chunks())
    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        assert bundle.namelist() == ["net.onnx", "weights/net.bin"]


def _plain_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "plain.onnx"
    if not path.exists():
        torch.manual_seed(0)
        _export_onnx(Tiny().eval(), path, dynamo=False)
    return path


def test_a_missing_data_file_says_to_upload_it_with_the_model(tmp_path: Path, dynamo_onnx: Path) -> None:
    lonely = tmp_path / "model.onnx"
    lonely.write_bytes(dynamo_onnx.read_bytes())
    with pytest.raises(ModelSourceError, match=r"model\.onnx\.data") as err:
        prepare(lonely)
    assert "beside" in str(err.value) and "data file" in str(err.value)
    with pytest.raises(ModelSourceError, match=r"model\.onnx\.data.*not uploaded|path"):
        prepare(dynamo_onnx.read_bytes())  # bytes alone cannot carry the data file


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "sub/../../x.bin", "C:/w.bin", "./w.bin"])
def test_a_data_location_outside_the_models_folder_is_refused(tmp_path: Path, location: str) -> None:
    import onnx

    model = onnx.load(str(_plain_onnx(tmp_path)))
    tensor = model.graph.initializer[0]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    tensor.ClearField("raw_data")
    path = tmp_path / "escape.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelSourceError, match="outside|plain relative"):
        prepare(path)


def test_an_onnx_model_proto_is_sent_inline(dynamo_onnx: Path) -> None:
    import onnx

    loaded = onnx.load(str(dynamo_onnx))  # reads the data file in
    source = prepare(loaded)
    assert source.format == models_pb2.ONNX and formats.kind_of(source.data) == "ONNX"
    assert formats.external_data_locations(source.data) == []
    unloaded = onnx.load(str(dynamo_onnx), load_external_data=False)
    with pytest.raises(ModelSourceError, match="load_external_data"):
        prepare(unloaded)


def test_an_onnx_program_from_torch_onnx_export_is_sent_inline() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(VideoResNet().eval(), (EXAMPLE,))
    source = prepare(program)
    assert source.format == models_pb2.ONNX
    assert formats.kind_of(source.data) == "ONNX" and formats.external_data_locations(source.data) == []
