"""tconv_stats' statistics on parameters set by hand, checked against values computed by hand (units
included), and against what the real layer does with those parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workers.errors import ModelUnusable
from workers.tconv import TConv3d, find_layers
from workers.tconv.parameters import ThreeTParams
from workers.tconv.statistics import layer_statistics, model_statistics

DEG = 180.0 / math.pi

# 5 filters, k_t = 3, 9×9 kernels: one normalised unit is (9 − 1)/2 = 4 px of the layer input.
#   f0: translate_x = −0.25 twice       → content moves +1 px (right) per step
#   f1: translate_y = +0.125 twice      → content moves −0.5 px (up) per step
#   f2: translate_x = −0.25, then s = 0.8 → +1 px, then content grows by 1.25: (1,0) → (1.25,0) px (a plain sum says 1)
#   f3: translate_x = −0.25, r = 0.1 twice → (1,0) px, then rotated by −0.1 rad: (cos .1, −sin .1) px
#   f4: translate_x = +0.005 twice      → near identity (below the 0.05 tolerance)
SCALE = np.array([[1, 1, 1, 1, 1], [1, 1, 0.8, 1, 1]], dtype=np.float64)
ROTATE = np.array([[0, 0, 0, 0.1, 0], [0, 0, 0, 0.1, 0]], dtype=np.float64)
TX = np.array([[-0.25, 0, -0.25, -0.25, 0.005], [-0.25, 0, 0, 0, 0.005]], dtype=np.float64)
TY = np.array([[0, 0.125, 0, 0, 0], [0, 0.125, 0, 0, 0]], dtype=np.float64)
END = [(2.0, 0.0), (0.0, -1.0), (1.25, 0.0), (math.cos(0.1), -math.sin(0.1)), (-0.04, 0.0)]


def _params() -> ThreeTParams:
    return ThreeTParams(SCALE, ROTATE, TX, TY, kernel_hw=(9, 9))


def test_hand_set_layer_statistics() -> None:
    s = layer_statistics(_params(), stride=(2.0, 2.0), identity_tolerance=0.05).summary
    stats = s["stats"]
    assert s["filters_included"] == 5
    assert stats["inv_scale"]["count"] == 10
    assert stats["inv_scale"]["mean"] == pytest.approx(1.025)
    assert stats["inv_scale"]["max"] == pytest.approx(1.25)
    assert stats["inv_scale"]["median"] == pytest.approx(1.0)
    # Degrees, not radians; content turns by −r.
    assert stats["rotation_deg"]["min"] == pytest.approx(-0.1 * DEG, abs=1e-5)
    assert stats["rotation_deg"]["mean"] == pytest.approx(-0.02 * DEG, abs=1e-5)
    tx, ty = stats["translation_px_layer"]["x"], stats["translation_px_layer"]["y"]
    assert tx["mean"] == pytest.approx(0.396) and tx["max"] == pytest.approx(1.0) and tx["min"] == pytest.approx(-0.02)
    assert ty["mean"] == pytest.approx(-0.1) and ty["min"] == pytest.approx(-0.5)
    assert stats["translation_px_layer"]["magnitude"]["mean"] == pytest.approx(0.504)
    assert stats["translation_px_model"]["x"]["mean"] == pytest.approx(0.792)
    assert stats["translation_px_model"]["y"]["min"] == pytest.approx(-1.0)
    dep = s["departure_from_identity"]
    assert dep["abs_one_minus_inv_scale"] == {"mean": pytest.approx(0.025), "std": pytest.approx(0.075)}
    assert dep["abs_rotation_deg"]["mean"] == pytest.approx(0.02 * DEG, abs=1e-5)
    assert dep["abs_tx_px_layer"]["mean"] == pytest.approx(0.404)
    assert dep["abs_ty_px_layer"]["mean"] == pytest.approx(0.1)
    assert s["near_identity_share"] == pytest.approx(0.2)
    # Sector around 0° holds f0, f2, f3 (weights 2 + 1.25 + 1 of 5.29); direction of their summed displacement.
    assert s["dominant_direction_share"] == pytest.approx(4.25 / 5.29, abs=1e-6)
    assert s["dominant_direction_deg"] == pytest.approx(360.0 + math.degrees(math.atan2(-math.sin(0.1), 3.25 + math.cos(0.1))), abs=1e-4)
    hist = s["direction_histogram"]
    assert hist[0] == pytest.approx(4.25 / 5.29, abs=1e-6) and hist[9] == pytest.approx(1.0 / 5.29, abs=1e-6)
    assert hist[6] == pytest.approx(0.04 / 5.29, abs=1e-6)
    tracks = {t["filter"]: t for t in s["trajectories"]}
    assert [t["filter"] for t in s["trajectories"]] == [0, 2, 3, 1, 4]  # by path length, most-moving first
    assert tracks[0]["path_px_layer"] == [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]
    assert tracks[0]["path_px_model"] == [[0.0, 0.0], [2.0, 0.0], [4.0, 0.0]]
    assert tracks[2]["path_px_layer"] == [[0.0, 0.0], [1.0, 0.0], [1.25, 0.0]]  # composed, not summed
    assert tracks[2]["cumulative_inv_scale"] == [1.0, 1.0, 1.25]
    assert tracks[3]["displacement_px_layer"] == pytest.approx([math.cos(0.1), -math.sin(0.1)], abs=1e-6)
    assert tracks[3]["cumulative_rotation_deg"] == pytest.approx([0.0, -0.1 * DEG, -0.2 * DEG], abs=1e-5)
    assert tracks[1]["direction_deg"] == pytest.approx(270.0)  # up (motion_clips' convention: 90 = down)
    assert tracks[4]["direction_deg"] == pytest.approx(180.0)


def test_trajectories_are_what_the_layer_does() -> None:
    """Centroid of a blob through the real TConv3d slices = the composed trajectory the stats report."""
    layer = TConv3d(1, 5, (3, 9, 9), bias=False).double()
    yy, xx = torch.meshgrid(torch.arange(9.0), torch.arange(9.0), indexing="ij")
    blob = torch.exp(-((xx - 4) ** 2 + (yy - 4) ** 2) / (2 * 0.7**2)).double()
    with torch.no_grad():
        layer.first_weight.copy_(blob.expand(5, 1, 1, 9, 9))
        for name, value in (("scale", SCALE), ("rotate", ROTATE), ("translate_x", TX), ("translate_y", TY)):
            getattr(layer, name).copy_(torch.from_numpy(value))
    kernel = layer.kernel().detach()[:, 0, -1]
    tracks = {t["filter"]: t for t in layer_statistics(_params()).summary["trajectories"]}
    for f in range(4):
        image = kernel[f]
        cy = float((image * yy).sum() / image.sum()) - 4
        cx = float((image * xx).sum() / image.sum()) - 4
        assert (cx, cy) == pytest.approx(END[f], abs=0.05), f
        assert tracks[f]["displacement_px_layer"] == pytest.approx(list(END[f]), abs=1e-6)


def test_model_statistics_pool_layers_and_fall_back_to_layer_pixels() -> None:
    a = layer_statistics(_params(), stride=(2.0, 2.0))
    b = layer_statistics(_params(), stride=None)
    both = model_statistics([a, a])
    assert both["translation_units"] == "px_model"
    assert both["filters_included"] == 10
    assert both["stats"]["translation_px_model"]["x"]["mean"] == pytest.approx(0.792)
    assert both["near_identity_share"] == pytest.approx(0.2)
    mixed = model_statistics([a, b])
    assert mixed["translation_units"] == "px_layer"
    assert mixed["stats"]["translation_px_model"] is None
    assert mixed["departure_from_identity"]["abs_tx_px_layer"]["mean"] == pytest.approx(0.404)


def _group_tensors(prefix: str, c_out: int = 3, k_t: int = 3) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}first_weight": torch.randn(c_out, 2, 1, 3, 3),
        f"{prefix}scale": torch.ones(k_t - 1, c_out),
        f"{prefix}rotate": torch.zeros(k_t - 1, c_out),
        f"{prefix}translate_x": torch.full((k_t - 1, c_out), -0.5),
        f"{prefix}translate_y": torch.zeros(k_t - 1, c_out),
    }


def test_parameter_groups_in_any_naming() -> None:
    state = {
        **_group_tensors("features.3."),
        "features.3.weight": torch.randn(3, 2, 3, 3, 3),  # the authors' layer keeps a stale full kernel
        "features.3.bias": torch.zeros(3),
        **_group_tensors("p_block_tconv_"),  # ONNX/torch.export-style flattened names
        "head.weight": torch.randn(4, 3, 5, 3, 3),  # a plain Conv3d
        "flat.weight": torch.randn(4, 3, 1, 3, 3),
        "onnx::Conv_7": torch.randn(2, 2, 3, 3, 3),
        "fc.weight": torch.randn(2, 4),
    }
    groups, convs = find_layers(state)
    assert [g.name for g in groups] == ["features.3", "p_block_tconv"]
    assert groups[0].kernel_shape == (3, 2, 3, 3, 3)
    np.testing.assert_allclose(groups[0].params.translate_x, -0.5)
    assert [(c.name, c.kernel_shape[2]) for c in convs] == [("head", 5), ("flat", 1), ("onnx::Conv_7", 3)]
    top_groups, top_convs = find_layers(_group_tensors(""))
    assert [g.name for g in top_groups] == [""] and top_convs == []


def test_malformed_group_is_a_clear_error() -> None:
    state = _group_tensors("conv.")
    state["conv.scale"] = torch.ones(2, 5)  # C_out disagrees with first_weight
    with pytest.raises(ModelUnusable) as err:
        find_layers(state)
    assert err.value.reason == "TCONV_PARAMETERS_MALFORMED" and "conv" in err.value.message
