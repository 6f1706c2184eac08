"""What the client accepts as a model, and how it tells the formats apart."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import torch
from torch import nn

from kernelscope.v1 import models_pb2
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
