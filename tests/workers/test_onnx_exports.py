"""Video-model code patterns exported by both of torch's ONNX exporters, loaded as the service loads them.

One small network holds the patterns of the architectures users bring (torchvision's VideoResNet, S3D, Swin3D
and MViT, pytorchvideo's X3D and ResNets): nested Sequentials with BatchNorm folded into the convs (and a
zero-gamma BatchNorm, whose folded conv weights are equal zeros), a Swin-style attention applying its
children's parameters functionally (F.linear(x, self.qkv.weight, self.qkv.bias), zero qkv biases that the
exporters merge), MViT's einsum relative positions, a slice assignment (ScatterND), MViT's pooling that
splits off the class token (tensor_split: the legacy exporter's Loop over a sequence), a squeeze on a
dynamic axis (the legacy exporter's If), Linears on channels-last 5-D tensors (MatMul + Add, pytorchvideo's
head), nearest upsampling (Resize), CumSum, Trilu and `x.view(x.size(0), -1)` under a dynamic batch.

Each exporter's file goes through workers.loader.load_model (onnx.checker, the interpreter, the check against
onnxruntime); then the interpreter's layers must carry the torch module's own names, its outputs match the
torch module's at another batch size, and input gradients match the torch module's.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workers.loader import load_model
from workers.onnx_interpreter import ComputedConv

torch.set_num_threads(1)


class ResBlock(nn.Module):
    """torchvision VideoResNet's BasicBlock names: conv1 = Sequential(conv, bn, relu), conv2 = Sequential(conv, bn)."""

    def __init__(self, c: int, bias: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv3d(c, c, 3, padding=1, bias=bias), nn.BatchNorm3d(c), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv3d(c, c, (3, 1, 1), padding=(1, 0, 0), bias=False), nn.BatchNorm3d(c))
        self.downsample = nn.Sequential(nn.Conv3d(c, c, 1, bias=False), nn.BatchNorm3d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(self.conv1(x)) + self.downsample(x))


class Attention(nn.Module):
    """Swin's functional use of child parameters, MViT's einsum relative positions, a slice assignment."""

    def __init__(self, c: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.rel_pos_h = nn.Parameter(torch.randn(4, 3, c // heads) * 0.1)
        nn.init.zeros_(self.qkv.bias)  # torchvision's init: equal zero biases, which the exporters merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, H, W, C)
        b, t, h, w, c = x.shape
        d = c // self.heads
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias)
        q, k, v = qkv.reshape(b, t * h * w, 3, self.heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * d**-0.5) @ k.transpose(-2, -1)
        rel = torch.einsum("bnthwc,hkc->bnthwk", q.reshape(b, self.heads, t, h, w, d), self.rel_pos_h[:h])
        attn = attn.reshape(b, self.heads, t, h, w, t * h * w)
        attn[:, :, :, :, :, :3] += rel
        attn = attn.reshape(b, self.heads, t * h * w, t * h * w).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, t, h, w, c))


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(c)
        self.attn = Attention(c)
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(x)


class Pool(nn.Module):
    """MViT's Pool: split the class token off, pool the rest with a depthwise Conv3d, put it back, squeeze."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.pool = nn.Conv3d(c, c, 3, padding=1, groups=c, bias=False)
        self.norm = nn.LayerNorm(c)

    def forward(self, x: torch.Tensor, thw: tuple[int, int, int]) -> torch.Tensor:
        x = x.unsqueeze(1)
        cls, rest = torch.tensor_split(x, indices=(1,), dim=2)
        b, n, _, c = rest.shape
        rest = self.pool(rest.reshape(b * n, *thw, c).permute(0, 4, 1, 2, 3))
        x = torch.cat([cls, rest.flatten(2).transpose(1, 2).reshape(b, n, -1, c)], dim=2)
        return self.norm(x).squeeze(1)


class VideoPatterns(nn.Module):
    def __init__(self, c: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Sequential(nn.Conv3d(3, c, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(c), nn.ReLU()),
            nn.Conv3d(c, c, (3, 1, 1), padding=(1, 0, 0), groups=c),
            nn.Hardswish(),
        )
        self.layer1 = nn.Sequential(ResBlock(c, bias=True), ResBlock(c, bias=False))
        self.up = nn.Upsample(scale_factor=(1, 2, 2), mode="nearest")
        self.blocks = nn.ModuleList([Block(c), Block(c)])
        self.pool = Pool(c)
        self.cls_token = nn.Parameter(torch.randn(1, 1, c))
        self.proj = nn.ModuleDict({"head": nn.Linear(c, c)})  # pytorchvideo: a Linear on channels-last features
        self.head = nn.Sequential(nn.Dropout(0.0), nn.Linear(c, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.stem(x))
        x = (x + self.up(x)[:, :, :, ::2, ::2]).permute(0, 2, 3, 4, 1)
        x = self.proj["head"](x)
        for block in self.blocks:
            x = block(x)
        b, t, h, w, c = x.shape
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), x.reshape(b, t * h * w, c)], dim=1)
        tokens = self.pool(tokens, (t, h, w))
        features = tokens[:, 1:].mean(1).sigmoid() * tokens[:, 0]
        logits = self.head(features.view(features.size(0), -1))
        return logits.cumsum(-1) + torch.triu(torch.ones(3, 3)).sum(0)


def _network() -> nn.Module:
    torch.manual_seed(0)
    net = VideoPatterns().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        for block in net.layer1:
            block.conv2[1].weight.zero_()  # zero_init_residual: the folded conv2 weights are equal (zero)
    return net


EXAMPLE = torch.randn(2, 3, 2, 4, 4, generator=torch.Generator().manual_seed(1))


def _export(net: nn.Module, exporter: str, path: Path) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=64)
            program = torch.onnx.export(net, (EXAMPLE,), dynamo=True, input_names=["x"], dynamic_shapes=({0: batch},))
            proto = program.model_proto
        else:
            buffer = io.BytesIO()
            torch.onnx.export(net, (EXAMPLE,), buffer, dynamo=False, opset_version=17, input_names=["x"],
                              dynamic_axes={"x": {0: "batch"}})
            proto = onnx.load_from_string(buffer.getvalue())
    onnx.save(proto, str(path))
    return proto


def _layers(module: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in module.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, ComputedConv))}


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_video_patterns_load_with_the_torch_module_names_outputs_and_gradients(exporter: str, tmp_path: Path) -> None:
    net = _network()
    proto = _export(net, exporter, tmp_path / "patterns.onnx")
    ops = {n.op_type for n in proto.graph.node}
    assert {"ScatterND", "Einsum", "Resize", "CumSum"} <= ops
    if exporter == "legacy":
        assert {"Loop", "If", "SequenceInsert", "SequenceAt"} <= ops

    loaded = load_model(tmp_path / "patterns.onnx", "ONNX", {})  # runs the onnxruntime cross-check
    assert loaded.info["onnx_max_abs_diff"] <= loaded.info["onnx_tolerance"]
    module = loaded.module

    # one naming: the interpreter's layers are the torch module's, by its own module paths
    ours, theirs = _layers(module), _layers(net)
    assert sorted(ours) == sorted(theirs)
    assert sorted(loaded.info["layer_kinds"]) == sorted(theirs)
    for name in ("proj.head", "blocks.1.attn.proj", "blocks.0.mlp.0", "head.1"):  # MatMul + Add is the Linear, bias included
        torch.testing.assert_close(ours[name].bias, theirs[name].bias)
    torch.testing.assert_close(ours["blocks.1.attn.qkv"].weight, theirs["blocks.1.attn.qkv"].weight)

    # outputs at another batch size, and input gradients, as the torch module's
    x = torch.randn(3, 3, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    x_ours, x_theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_ours, out_theirs = module(x_ours), net(x_theirs)
    torch.testing.assert_close(out_ours, out_theirs, atol=1e-5, rtol=1e-4)
    weights = torch.arange(1.0, 4.0)
    (out_ours * weights).sum().backward()
    (out_theirs * weights).sum().backward()
    assert x_ours.grad is not None and x_theirs.grad is not None
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, atol=1e-5, rtol=1e-4)


def test_an_interpreter_disagreeing_with_onnxruntime_is_refused_and_told_to_upload_a_pt2(tmp_path: Path, monkeypatch) -> None:
    """The load-time check stays: a wrong Einsum (planted) is caught, and the refusal names the format to use."""
    from workers.errors import ModelRejected
    from workers.onnx_interpreter import ops as onnx_ops

    torch.manual_seed(0)

    class RelPos(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(4, 8)
            self.table = nn.Parameter(torch.randn(3, 5, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W) video in, logits out
            q = self.proj(x.permute(0, 2, 3, 4, 1))
            return torch.einsum("bthwc,hkc->bk", q, self.table)

    path = tmp_path / "relpos.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(RelPos().eval(), (torch.randn(2, 4, 2, 3, 3),), str(path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    assert load_model(path, "ONNX", {}).info["onnx_max_abs_diff"] < 1e-4
    monkeypatch.setitem(onnx_ops.OPS, "Einsum", lambda node, *xs: 1.01 * torch.einsum(str(node.attrs["equation"]), *xs))
    with pytest.raises(ModelRejected) as err:
        load_model(path, "ONNX", {})
    assert err.value.reason == "ONNX_MISMATCH" and "differ by up to" in err.value.message
    assert "torch.export" in err.value.message and ".pt2" in err.value.message
