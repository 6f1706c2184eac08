"""The tconv_stats task end to end: 3TConv layers of runnable and weights-only models, 3T fits of Conv3d
layers with planted filters, user errors, and a briefly trained 3TConv model whose translations show."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from workers.context import TaskContext
from workers.errors import BadOptions, ModelUnusable
from workers.input_spec import InputSpec
from workers.job import perform
from workers.model import LoadedModel
from workers.tconv import TConv3d, build_kernel

SCHEMA = Path(__file__).resolve().parents[2] / "sdk" / "schemas" / "tconv_stats.v1.json"
SPEC = InputSpec(shape=(3, 6, 16, 16))


def _run(model: LoadedModel, tmp_path: Path, **options: Any) -> dict[str, Any]:
    return perform("tconv_stats", TaskContext(model=model, out_dir=tmp_path), options)


def _check_schema(summary: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    if SCHEMA.exists():
        jsonschema.validate(summary, json.loads(SCHEMA.read_text()))


class _TwoScales(nn.Module):
    """tconv1 on the input, then a 2× spatial pool, then tconv2: strides 1 and 2."""

    def __init__(self) -> None:
        super().__init__()
        self.tconv1 = TConv3d(3, 4, (3, 3, 3), padding=1)
        self.pool = nn.MaxPool3d((1, 2, 2))
        self.tconv2 = TConv3d(4, 2, (3, 5, 5), padding=(1, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tconv2(self.pool(self.tconv1(x)))


def _hand_set() -> _TwoScales:
    torch.manual_seed(0)
    model = _TwoScales()
    with torch.no_grad():
        model.tconv1.translate_x.fill_(-0.5)  # 3-wide: 1 unit = 1 px → +0.5 px/step, right
        model.tconv2.translate_y.fill_(0.25)  # 5-wide: 1 unit = 2 px → −0.5 px/step, up; ×2 in model px
    return model.eval()


def test_tconv_layers_of_a_runnable_model(tmp_path: Path) -> None:
    summary = _run(LoadedModel.from_module(_hand_set(), SPEC), tmp_path)
    _check_schema(summary)
    first, second = summary["layers"]
    assert (first["name"], first["kind"], first["kernel_shape"]) == ("tconv1", "TConv3d", [4, 3, 3, 3, 3])
    assert first["stride_px_model"] == [1.0, 1.0] and second["stride_px_model"] == [2.0, 2.0]
    assert first["stats"]["translation_px_layer"]["x"]["mean"] == pytest.approx(0.5)
    assert first["dominant_direction_deg"] == pytest.approx(0.0)
    assert second["stats"]["translation_px_layer"]["y"]["mean"] == pytest.approx(-0.5)
    assert second["stats"]["translation_px_model"]["y"]["mean"] == pytest.approx(-1.0)
    assert second["dominant_direction_deg"] == pytest.approx(270.0)
    assert second["trajectories"][0]["path_px_model"] == [[0.0, 0.0], [0.0, -1.0], [0.0, -2.0]]
    assert summary["model"]["translation_units"] == "px_model"
    assert summary["model"]["tconv_layers"] == 2 and summary["model"]["fitted_layers"] == 0
    assert summary["model"]["near_identity_share"] == 0.0
    for layer in summary["layers"]:
        for name in layer["artifacts"]:
            assert (tmp_path / name).stat().st_size > 0, name
    assert sorted(first["artifacts"]) == [
        "tconv_stats/tconv1.npz", "tconv_stats/tconv1_histograms.png",
        "tconv_stats/tconv1_trajectories.png", "tconv_stats/tconv1_translation_joint.png",
    ]
    with np.load(tmp_path / "tconv_stats" / "tconv2.npz") as z:
        np.testing.assert_allclose(z["ty_px_model"], -1.0)
        assert z["trajectory_px_layer"].shape == (2, 3, 2)
    on_disk = json.loads((tmp_path / "tconv_stats" / "tconv_stats.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))


def test_weights_only_model_reports_layer_pixels_and_says_why(tmp_path: Path) -> None:
    state = {k: v.detach() for k, v in _hand_set().state_dict().items()}
    summary = _run(LoadedModel(input_spec=SPEC, state_dict=state, module=None, format="STATE_DICT"), tmp_path, layers=["tconv2"])
    _check_schema(summary)
    (layer,) = summary["layers"]
    assert layer["stride_px_model"] is None and layer["stats"]["translation_px_model"] is None
    assert layer["stats"]["translation_px_layer"]["y"]["mean"] == pytest.approx(-0.5)
    assert summary["model"]["translation_units"] == "px_layer"
    assert any("translation_px_model is null" in note for note in summary["notes"])


def _planted_conv3d() -> nn.Conv3d:
    """Filter 0: 3T with content moving right (tx = −0.6 → +0.6 px/step); 1: inflated; 2: [W, 0, −W]; 3: noise."""
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv3d(8, 4, 3, padding=1)
    base = torch.randn(4, 8, 1, 3, 3, generator=g)
    ones, zeros = torch.ones(2, 1), torch.zeros(2, 1)
    moving = build_kernel(base[:1], ones, zeros, torch.full((2, 1), -0.6), zeros)
    with torch.no_grad():
        conv.weight[0] = moving[0]
        conv.weight[1] = base[1].repeat(1, 3, 1, 1)
        conv.weight[2] = torch.cat([base[2], 0 * base[2], -base[2]], dim=1)
        conv.weight[3] = torch.randn(8, 3, 3, 3, generator=g)
    return conv


def test_conv3d_fit_explains_planted_filters(tmp_path: Path) -> None:
    model = nn.Sequential(_planted_conv3d(), nn.ReLU()).eval()
    spec = InputSpec(shape=(8, 4, 8, 8))
    summary = _run(LoadedModel.from_module(model, spec), tmp_path, restarts=2, fit_steps=100, seed="3")
    _check_schema(summary)
    (layer,) = summary["layers"]
    assert (layer["name"], layer["kind"], layer["filters"]) == ("0", "Conv3d-fit", 4)
    assert layer["explainable_share"] == {"plain": 0.5, "gain": 0.75}
    assert layer["filters_included"] == 2
    assert layer["residual"]["plain"]["min"] < 1e-3 and layer["residual"]["gain"]["count"] == 4
    assert layer["zero_filters"] == 0
    with np.load(tmp_path / "tconv_stats" / "0.npz") as z:
        plain, gained = z["residual_plain"], z["residual_gain"]
        assert plain[0] < 1e-3 and plain[1] < 1e-3 and plain[2] > 0.5 and plain[3] > 0.3
        assert gained[2] < 1e-3 and np.all(gained <= plain + 1e-9)  # the gain variant starts from the plain fit
        np.testing.assert_allclose(z["fit_translate_x"][:, 0], -0.6, atol=5e-3)
        np.testing.assert_allclose(z["gain_fit_gain"][:, 2], [1.0, 0.0, -1.0], atol=1e-4)
        assert list(z["filter_index"]) == [0, 1]
    tracks = {t["filter"]: t for t in layer["trajectories"]}
    assert tracks[0]["displacement_px_layer"] == pytest.approx([1.2, 0.0], abs=0.01)
    assert tracks[0]["direction_deg"] == pytest.approx(0.0, abs=1.0)
    assert layer["near_identity_share"] == pytest.approx(0.5)  # filter 1 (inflated) of the two included
    assert "tconv_stats/0_residuals.png" in layer["artifacts"]
    assert summary["model"]["explainable_share"] == {"plain": 0.5, "gain": 0.75}
    assert summary["options"]["seed"] == 3


@pytest.mark.parametrize(
    ("options", "error", "reason"),
    [
        ({"layers": ["nope"]}, BadOptions, "UNKNOWN_LAYER"),
        ({"residual_threshold": -1}, BadOptions, "BAD_RESIDUAL_THRESHOLD"),
        ({"restarts": -2}, BadOptions, "BAD_RESTARTS"),
        ({"fit_steps": 0}, BadOptions, "BAD_FIT_STEPS"),
        ({"fit_conv3d": False}, ModelUnusable, "NO_TEMPORAL_LAYERS"),
        ({"fit_conv3d": "false"}, ModelUnusable, "NO_TEMPORAL_LAYERS"),  # the text "false" is false, not a true string
        ({"fit_conv3d": "no"}, BadOptions, "BAD_TASK_OPTIONS"),
    ],
)
def test_user_errors(tmp_path: Path, options: dict[str, Any], error: type[Exception], reason: str) -> None:
    model = LoadedModel.from_module(nn.Sequential(nn.Conv3d(2, 2, 3)), InputSpec(shape=(2, 4, 8, 8)))
    with pytest.raises(error) as err:
        _run(model, tmp_path, **options)
    assert err.value.reason == reason  # type: ignore[attr-defined]


def test_model_without_temporal_layers(tmp_path: Path) -> None:
    model = LoadedModel.from_module(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv3d(4, 4, (1, 3, 3))), InputSpec(shape=(3, 8, 8)))
    with pytest.raises(ModelUnusable) as err:
        _run(model, tmp_path)
    assert err.value.reason == "NO_TEMPORAL_LAYERS"


def test_briefly_trained_tconv_model_shows_learned_translations(tmp_path: Path) -> None:
    from workers.samples.tconv_model import INPUT_SPEC, train_tconv

    model, metrics = train_tconv(seed=0, n_per_class=12, epochs=3, eval_per_class=4)
    assert metrics["mean_abs_translation"] > 0.02
    summary = _run(LoadedModel.from_module(model, INPUT_SPEC), tmp_path, fit_conv3d=False)
    _check_schema(summary)
    moved = summary["model"]["departure_from_identity"]
    assert summary["model"]["near_identity_share"] < 0.5
    assert moved["abs_tx_px_model"]["mean"] > 0.05 and moved["abs_ty_px_model"]["mean"] > 0.05
    assert math.isfinite(summary["layers"][0]["dominant_direction_deg"])
