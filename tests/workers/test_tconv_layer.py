"""TConv3d, the 2D→3T converter and exports: the layer does what the 3TConv paper's layer does, and the
direction its content moves is the one tconv_stats reports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workers.tconv import TConv3d, build_kernel, export_onnx, find_layers, inflate_2d, sampling_matrix
from workers.tconv.parameters import ThreeTParams
from workers.tconv.statistics import layer_statistics


def _centroid(image: torch.Tensor) -> tuple[float, float]:
    """(x, y) = (column, row) centre of mass of a non-negative 2D image."""
    rows, cols = torch.meshgrid(torch.arange(image.shape[0], dtype=image.dtype), torch.arange(image.shape[1], dtype=image.dtype), indexing="ij")
    total = image.sum()
    return float((image * cols).sum() / total), float((image * rows).sum() / total)


def test_kernel_is_the_authors_sequential_warp() -> None:
    """Slice t = grid_sample(slice t−1, affine_grid(s·R(r)·[I|t])): the tent-matrix form used by the fit agrees."""
    g = torch.Generator().manual_seed(0)
    layer = TConv3d(2, 3, (4, 3, 5)).double()
    with torch.no_grad():
        layer.scale.copy_(1 + 0.1 * torch.randn(3, 3, generator=g))
        for p in (layer.rotate, layer.translate_x, layer.translate_y):
            p.copy_(0.3 * torch.randn(3, 3, generator=g))
    kernel = layer.kernel()
    assert kernel.shape == (3, 2, 4, 3, 5)
    torch.testing.assert_close(kernel[:, :, 0], layer.first_weight[:, :, 0])
    slice_ = layer.first_weight[:, :, 0].reshape(3, 2, 15, 1)
    for t in range(3):
        warp = sampling_matrix(layer.scale[t], layer.rotate[t], layer.translate_x[t], layer.translate_y[t], 3, 5)
        slice_ = warp[:, None] @ slice_
        torch.testing.assert_close(kernel[:, :, t + 1], slice_.reshape(3, 2, 3, 5))
    x = torch.randn(2, 2, 6, 7, 8, generator=g, dtype=torch.float64)
    torch.testing.assert_close(layer(x), F.conv3d(x, kernel, layer.bias))
    assert layer.weight.shape == kernel.shape  # what code reading `.weight` of 3D convs sees


def test_negative_translate_x_moves_content_right_as_the_stats_say() -> None:
    """A blob in the base slice, translate_x = −0.25 on a 9-wide kernel: one unit is (9−1)/2 = 4 px, so the
    content moves +1 px (right) per step; tconv_stats must say +1 px/step, direction 0°."""
    layer = TConv3d(1, 1, (3, 9, 9), bias=False).double()
    yy, xx = torch.meshgrid(torch.arange(9.0), torch.arange(9.0), indexing="ij")
    blob = torch.exp(-((xx - 4) ** 2 + (yy - 4) ** 2) / (2 * 0.7**2)).double()
    with torch.no_grad():
        layer.first_weight.copy_(blob[None, None, None])
        layer.translate_x.fill_(-0.25)
    kernel = layer.kernel().detach()[0, 0]
    assert [_centroid(kernel[t])[0] for t in range(3)] == pytest.approx([4.0, 5.0, 6.0], abs=1e-3)
    assert [_centroid(kernel[t])[1] for t in range(3)] == pytest.approx([4.0, 4.0, 4.0], abs=1e-6)
    params = ThreeTParams(*(p.detach().numpy() for p in (layer.scale, layer.rotate, layer.translate_x, layer.translate_y)), kernel_hw=(9, 9))
    stats = layer_statistics(params).summary
    assert stats["stats"]["translation_px_layer"]["x"]["mean"] == pytest.approx(1.0)
    assert stats["stats"]["translation_px_layer"]["y"]["mean"] == pytest.approx(0.0)
    assert stats["dominant_direction_deg"] == pytest.approx(0.0)
    assert stats["trajectories"][0]["path_px_layer"] == [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]


def test_inflate_2d_keeps_weights_and_per_frame_behaviour() -> None:
    torch.manual_seed(0)
    net2d = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2),
    ).eval()
    net3d = inflate_2d(net2d, temporal_kernel=3, rescale=True).eval()
    conv, norm, _, pool, pointwise, gap = (net3d[i] for i in range(6))
    assert isinstance(conv, TConv3d) and conv.kernel_size == (3, 3, 3) and conv.padding == (1, 1, 1)
    torch.testing.assert_close(conv.first_weight[:, :, 0] * 3, net2d[0].weight)
    for name in ("rotate", "translate_x", "translate_y"):
        assert torch.count_nonzero(getattr(conv, name)) == 0
    torch.testing.assert_close(conv.scale, torch.ones(2, 4))
    assert isinstance(norm, nn.BatchNorm3d) and isinstance(pool, nn.MaxPool3d)
    assert type(pointwise) is nn.Conv3d and pointwise.kernel_size == (1, 1, 1)
    assert isinstance(gap, nn.AdaptiveAvgPool3d)
    # A static video: away from the temporal border every frame gives the 2D network's activations.
    frame = torch.randn(2, 3, 8, 8)
    video = frame[:, :, None].expand(2, 3, 5, 8, 8)
    with torch.no_grad():
        got = net3d[:5](video)
        want = net2d[:5](frame)
    for t in (1, 2, 3):
        torch.testing.assert_close(got[:, :, t], want, atol=1e-5, rtol=1e-5)
    plain = inflate_2d(net2d[0], temporal_kernel=3)  # the paper's choice: K_0 is the 2D weight itself
    assert isinstance(plain, TConv3d)
    torch.testing.assert_close(plain.first_weight[:, :, 0], net2d[0].weight)
    with pytest.raises(ValueError):
        inflate_2d(nn.Conv2d(4, 4, 3, groups=2))


def test_exports_match_torch_and_keep_the_3t_parameters(tmp_path) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(1)
    model = nn.Sequential(TConv3d(2, 3, (3, 3, 3), padding=1), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        model[0].scale.copy_(1 + 0.1 * torch.randn(2, 3, generator=g))
        for p in (model[0].rotate, model[0].translate_x, model[0].translate_y):
            p.copy_(0.3 * torch.randn(2, 3, generator=g))
    x = torch.randn(2, 2, 5, 8, 8, generator=g)
    program = torch.export.export(model, (x,))
    torch.testing.assert_close(program.module()(x), model(x))
    groups, convs = find_layers(dict(program.state_dict))
    assert [grp.name for grp in groups] == ["0"] and convs == []
    diff = export_onnx(model, tmp_path / "m.onnx", x[:1])
    assert diff is not None and diff < 1e-5
    import onnx
    from onnx import numpy_helper

    onnx_model = onnx.load(str(tmp_path / "m.onnx"))
    inits = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in onnx_model.graph.initializer}
    groups, _ = find_layers(inits)
    assert [grp.name for grp in groups] == ["0"]
    np.testing.assert_allclose(groups[0].params.translate_x, model[0].translate_x.detach().numpy(), atol=0)
    assert "GridSample" in {n.op_type for n in onnx_model.graph.node}


def test_build_kernel_runs_on_every_available_device() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        base = torch.randn(2, 1, 1, 3, 3, device=device)
        params = [torch.ones(2, 2, device=device)] + [torch.zeros(2, 2, device=device)] * 3
        kernel = build_kernel(base, *params)
        torch.testing.assert_close(kernel, base.repeat(1, 1, 3, 1, 1))
