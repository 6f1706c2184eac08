"""The CI gate: policy parsing, three-valued checks, baseline regressions, exit codes and every output.

Unit tests judge hand-made job results whose metric values are planted; the end-to-end tests at the
bottom run `kernelscope gate` for real (embedded stack, a C3D model with planted dead kernels).
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from kernelscope.v1 import jobs_pb2
from sdk import metrics
from sdk.cli import main as cli_main
from sdk.gate import ERROR, FAIL, PASS, SKIP, WARN, GateReport, Policy, PolicyError, evaluate
from sdk.result import Result

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------- planted results
def class_filters_summary(accuracy_full: float = 0.9, accuracy_restricted: float = 0.88, mis: float = 0.4, mis_shuffled: float = 0.02) -> dict[str, Any]:
    classes = [
        {
            "class": c,
            "name": name,
            "subset_k": [c * 5 + i for i in range(5)],
            "coverage_size": 4 + c,
            "retention_size": 3 + c,
            "recall_full": accuracy_full,
            "recall_restricted": accuracy_restricted,
            "ablation": {"subset_drop": 0.5, "random_drop": 0.02, "complement_drop": 0.1},
            "stability_jaccard": 0.8,
            "mi_top_k_jaccard": 0.6,
        }
        for c, name in enumerate(["right", "down"])
    ]
    return {
        "layer": "fc:input",
        "num_filters": 64,
        "num_classes": 2,
        "class_names": ["right", "down"],
        "ranking": "contribution",
        "attribution": "exact_logit_split",
        "restriction": "decomposed_head",
        "mi_estimator": "binned",
        "k": 5,
        "fit_samples": 56,
        "eval_samples": 24,
        "classes": classes,
        "global": {
            "mis": mis,
            "mis_shuffled": mis_shuffled,
            "psi_0_5": 0.2,
            "density": 10 / 64,
            "mean_overlap": 0.0,
            "accuracy_full": accuracy_full,
            "accuracy_restricted": accuracy_restricted,
            "compute_saving": 1 - 10 / 128,
            "selectivity": {"mean": 0.3, "median": 0.25},
        },
    }


def kernel_viz_summary(dead: dict[str, list[int]], channels: int = 4) -> dict[str, Any]:
    """Layers whose listed channels are dead; live channels get ratio 2 + index and speed 0.5."""

    def channel(i: int, is_dead: bool) -> dict[str, Any]:
        live = not is_dead
        return {
            "index": i, "activation": 3.0 if live else 0.0, "random_activation": 1.0 if live else 0.0,
            "ratio": 2.0 + i if live else None, "direction_deg": 90.0 if live else None,
            "speed_px_per_frame": 0.5 if live else None, "direction_selectivity": 0.2 if live else None,
            "motion_dependence": 0.4 if live else None, "order_dependence": 0.3 if live else None,
            "flow_coherence": 0.9 if live else None, "reconstruction_error": 0.25 if live else None,
            "dead": is_dead,
        }

    timing = dict.fromkeys(("receptive_field_s", "stage1_s", "stage2_s", "evaluation_s", "figures_s", "total_s", "channels_per_s"), 1.0)
    layers = [
        {
            "name": name, "kind": "conv3d", "canvas": [5, 5, 5], "receptive_field": [3, 3, 3], "jitter": [1, 1, 1],
            "placed_in_full_input": False, "flow_scale_px_per_frame": 1.0,
            "channels": [channel(i, i in dead_channels) for i in range(channels)], "timing": timing,
        }
        for name, dead_channels in dead.items()
    ]
    return {"objective": "NEURON", "steps": 8, "seed": 0, "tv_weight": 0.1, "device": "cpu", "layers": layers}


def tconv_summary(residuals: dict[str, tuple[float, int, int]], motion_px: dict[str, list[tuple[float, float]]] | None = None) -> dict[str, Any]:
    """Conv3d-fit layers: name -> (mean plain residual, filters, all-zero filters). Without `motion_px` nothing is
    below the threshold; with it, a layer's listed filters are explainable (residual 0.05) and move by (dx, dy)
    layer pixels over each of their 2 steps."""

    def summary(mean: float | None, count: int) -> dict[str, Any]:
        return {"count": count, "mean": mean, "std": 0.0 if count else None, **{k: mean for k in ("min", "q05", "q25", "median", "q75", "q95", "max")}}

    def motion() -> dict[str, Any]:
        empty = summary(None, 0)
        translation = {"x": empty, "y": empty, "magnitude": empty}
        return {
            "filters_included": 0,
            "stats": {"inv_scale": empty, "rotation_deg": empty, "translation_px_layer": translation, "translation_px_model": translation},
            "departure_from_identity": {k: {"mean": None, "std": None} for k in ("abs_one_minus_inv_scale", "abs_rotation_deg", "abs_tx_px_layer", "abs_ty_px_layer")},
            "near_identity_share": None, "dominant_direction_deg": None, "dominant_direction_share": None,
            "direction_histogram": [0.0] * 12, "displacement_px_layer": empty, "trajectories": [],
        }

    def params(name: str, filters: int, zero: int, mean: float) -> dict[str, Any]:
        moves = (motion_px or {}).get(name)
        residual = [None] * zero + ([0.05 if moves else mean] * (filters - zero))
        step = lambda value: [[value, value] for _ in range(filters)]  # noqa: E731 - 2 steps per filter
        tx = [[m[0], m[0]] for m in moves] if moves else step(0.0)
        ty = [[m[1], m[1]] for m in moves] if moves else step(0.0)
        variant = {"inv_scale": step(1.0), "rotation_deg": step(0.0), "tx_px_layer": tx, "ty_px_layer": ty, "residual": residual}
        return {"count": filters, "listed": filters, "plain": variant, "gain": {**variant, "gain": [[1.0, 1.0, 1.0] for _ in range(filters)]}}

    layers = [
        {
            **motion(), "name": name, "kind": "Conv3d-fit", "layer_kind": "Conv3d", "analysed": True, "filters": filters, "kernel_shape": [filters, 3, 3, 3, 3],
            "stride_px_model": [1.0, 1.0], "artifacts": [],
            "residual": {"plain": summary(mean, filters - zero), "gain": summary(mean / 2, filters - zero)},
            "explainable_share": {"plain": 0.0, "gain": 0.5}, "zero_filters": zero, "gain_variant": {**motion(), "gains": []},
            "filter_params": params(name, filters, zero, mean),
        }
        for name, (mean, filters, zero) in residuals.items()
    ]
    model = {"layers": len(layers), "filters_included": 0, "tconv_layers": 0, "fitted_layers": len(layers), "explainable_share": {"plain": 0.0, "gain": 0.5}}
    options = {"layers": list(residuals), "fit_conv3d": True, "residual_threshold": 0.2, "restarts": 0, "fit_steps": 5, "seed": 0, "identity_tolerance": 0.05}
    from workers.analyses.tconv_stats import CONVENTIONS

    return {"layers": layers, "model": model, "options": options, "conventions": CONVENTIONS, "units": {}, "notes": []}


def make_result(summaries: dict[str, dict[str, Any]], errors: dict[str, tuple[str, str, str]] | None = None, job_id: str = "job_model", model_id: str = "mdl_model") -> Result:
    job = jobs_pb2.Job(id=job_id, model_id=model_id, state=jobs_pb2.SUCCEEDED)
    for task, summary in summaries.items():
        job.results.add(task=task, summary_json=json.dumps(summary), duration_seconds=2.5)
    for task, (code, reason, message) in (errors or {}).items():
        job.state = jobs_pb2.FAILED
        result = job.results.add(task=task, duration_seconds=0.1)
        result.error.code, result.error.reason, result.error.message = code, reason, message
    return Result(job, client=None)  # type: ignore[arg-type]


def policy(text: str, tmp_path: Path | None = None) -> Policy:
    if tmp_path is None:
        return Policy.parse(text)
    path = tmp_path / "gate.toml"
    path.write_text(text)
    return Policy.load(path)


# ---------------------------------------------------------------------- parsing
def test_example_policy_parses_and_names_real_metrics() -> None:
    parsed = Policy.load(ROOT / "examples" / "gate.toml")
    assert parsed.checks
    assert all(metrics.find(c.metric) for c in parsed.checks)
    assert {"kernel_viz", "tconv_stats", "class_filters"} <= set(parsed.tasks)
    assert any(c.relative for c in parsed.checks) and any(not c.relative for c in parsed.checks)


def test_unknown_metric_is_an_error_listing_the_valid_names() -> None:
    with pytest.raises(PolicyError) as caught:
        policy('[[checks]]\nmetric = "class_filters.accuracy"\nmin = 0.5\n')
    message = str(caught.value)
    assert "unknown metric 'class_filters.accuracy'" in message
    for name in metrics.names():
        assert name in message


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[[checks]\nmetric = 1", "not valid TOML"),
        ('[[checks]]\nmetric = "class_filters.mis"\n', "has no bound"),
        ('[[checks]]\nmetric = "class_filters.mis"\nmin = "high"\n', "must be a number"),
        ('[[checks]]\nmetric = "class_filters.mis"\nmin = 0.3\nwarn_min = 0.1\n', "a warning comes before a failure"),
        ('[[checks]]\nmetric = "class_filters.mis"\nminimum = 0.3\n', "unknown key(s) minimum"),
        ('fail_on = "sometimes"\n[[checks]]\nmetric = "class_filters.mis"\nmin = 0.3\n', "fail_on is one of"),
        ('[[checks]]\nmetric = "class_filters.psi"\nmax_regression = 0.1\n', "cannot regress"),
        ('[[checks]]\nmetric = "class_filters.mis"\nlayer = "conv1"\nmin = 0.1\n', "takes no layer"),
        ('[tasks.kernel_vis]\nsteps = 3\n[[checks]]\nmetric = "class_filters.mis"\nmin = 0.1\n', "unknown task [tasks.kernel_vis]"),
        ("version = 2\n", "version 2 is not supported"),
        ('dataset = "x.npz"\n', "no checks"),
        ('[[checks]]\nmetric = "class_filters.mis"\nmin = 0.1\n[[checks]]\nmetric = "class_filters.mis"\nmin = 0.2\n', "must be unique"),
    ],
)
def test_broken_policies_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(PolicyError, match=None) as caught:
        policy(text)
    assert fragment in str(caught.value)


def test_policy_collects_tasks_options_and_dataset(tmp_path: Path) -> None:
    parsed = policy(
        'dataset = "clips.npz"\n[tasks.class_filters]\nk = 3\n[[checks]]\nmetric = "class_filters.mis"\nmin = 0.1\n',
        tmp_path,
    )
    assert parsed.tasks == ["class_filters"]
    assert parsed.task_specs() == [{"class_filters": {"k": 3}}]
    assert parsed.dataset == tmp_path / "clips.npz"
    assert parsed.checks[0].line == 4


# ---------------------------------------------------------------------- the metric catalogue
def test_planted_summaries_are_schema_valid() -> None:
    """The hand-made summaries below must look like real ones (real ones are checked in tests/e2e)."""
    import jsonschema

    from sdk import schemas

    for task, summary in (
        ("kernel_viz", kernel_viz_summary({"conv1": [0, 2]})),
        ("tconv_stats", tconv_summary({"conv1": (0.7, 16, 4)})),
        ("class_filters", class_filters_summary()),
    ):
        jsonschema.validate(summary, schemas.load(task))


def test_dead_kernels_are_counted_from_the_channel_flags_per_layer_and_in_all() -> None:
    summary = kernel_viz_summary({"conv1": [0, 2], "conv2": [3]})
    assert metrics.value("kernel_viz.dead_kernels", summary) == 3
    assert metrics.value("kernel_viz.dead_kernels", summary, "conv1") == 2
    assert metrics.value("kernel_viz.dead_kernels", summary, "conv2") == 1
    assert metrics.value("kernel_viz.dead_share", summary) == pytest.approx(3 / 8)
    assert metrics.value("kernel_viz.dead_kernels", summary, "conv9") is None  # a layer not analysed
    # live channels only: conv1 live 1, 3 -> ratios 3, 5; conv2 live 0, 1, 2 -> 2, 3, 4
    assert metrics.value("kernel_viz.median_activation_ratio", summary) == pytest.approx(3.0)
    assert metrics.value("kernel_viz.median_activation_ratio", summary, "conv1") == pytest.approx(4.0)
    assert metrics.value("kernel_viz.mean_reconstruction_error", summary) == pytest.approx(0.25)


def test_tconv_residual_pools_filters_not_layers() -> None:
    summary = tconv_summary({"conv1": (0.2, 10, 0), "conv2": (0.8, 30, 2)})
    assert metrics.value("tconv_stats.mean_residual", summary, "conv1") == pytest.approx(0.2)
    assert metrics.value("tconv_stats.mean_residual", summary) == pytest.approx((0.2 * 10 + 0.8 * 28) / 38)
    assert metrics.value("tconv_stats.mean_residual_gain", summary, "conv2") == pytest.approx(0.4)
    assert metrics.value("tconv_stats.zero_filters", summary) == 2
    assert metrics.value("tconv_stats.explainable_share_gain", summary) == pytest.approx(0.5)
    assert metrics.value("tconv_stats.near_identity_share", summary) is None  # no filter in the statistics


def test_extract_all_names_per_layer_values() -> None:
    result = make_result({"kernel_viz": kernel_viz_summary({"conv1": [1], "conv2": []})})
    values = metrics.extract_all(result)["kernel_viz"]
    assert values["kernel_viz.dead_kernels"] == 1
    assert values["kernel_viz.dead_kernels[conv1]"] == 1 and values["kernel_viz.dead_kernels[conv2]"] == 0


def test_every_metric_has_a_description_and_a_known_direction() -> None:
    for metric in metrics.catalogue():
        assert metric.task in ("kernel_viz", "tconv_stats", "class_filters"), metric.name
        assert metric.better in ("lower", "higher", None) and metric.description.endswith(".")


def test_per_layer_check_on_a_real_layer_name() -> None:
    text = '[[checks]]\nmetric = "kernel_viz.dead_kernels"\nlayer = "conv2"\nmax = 0\n'
    report = evaluate(policy(text), make_result({"kernel_viz": kernel_viz_summary({"conv1": [1], "conv2": [0, 1]})}))
    [check] = report.results
    assert check.status == FAIL and check.value == 2 and check.check.name == "kernel_viz.dead_kernels[conv2]"


# ---------------------------------------------------------------------- judging
THRESHOLDS = """
[[checks]]
name = "restricted accuracy"
metric = "class_filters.accuracy_restricted"
min = 0.8
warn_min = 0.85

[[checks]]
name = "MIS"
metric = "class_filters.mis"
min = 0.1

[[checks]]
name = "MIS margin"
metric = "class_filters.mis_margin"
min = 0.05
"""


@pytest.mark.parametrize(
    "restricted, mis, expected",
    [
        (0.88, 0.4, [PASS, PASS, PASS]),
        (0.83, 0.4, [WARN, PASS, PASS]),
        (0.70, 0.4, [FAIL, PASS, PASS]),
        (0.88, 0.05, [PASS, FAIL, FAIL]),
    ],
)
def test_absolute_bounds_are_three_valued(restricted: float, mis: float, expected: list[str]) -> None:
    result = make_result({"class_filters": class_filters_summary(accuracy_restricted=restricted, mis=mis)})
    report = evaluate(policy(THRESHOLDS), result)
    assert [r.status for r in report.results] == expected
    assert report.results[0].value == pytest.approx(restricted)
    assert report.results[2].value == pytest.approx(mis - 0.02)


def test_exit_codes_and_fail_on_warning() -> None:
    warned = evaluate(policy(THRESHOLDS), make_result({"class_filters": class_filters_summary(accuracy_restricted=0.83)}))
    assert warned.status() == WARN and warned.exit_code() == 0
    assert warned.status("warning") == FAIL and warned.exit_code("warning") == 1
    strict = evaluate(policy('fail_on = "warning"\n' + THRESHOLDS), make_result({"class_filters": class_filters_summary(accuracy_restricted=0.83)}))
    assert strict.exit_code() == 1
    failed = evaluate(policy(THRESHOLDS), make_result({"class_filters": class_filters_summary(accuracy_restricted=0.5)}))
    assert failed.exit_code() == 1 and [r.check.name for r in failed.failing()] == ["restricted accuracy"]


def test_a_task_that_could_not_run_never_passes() -> None:
    result = make_result({}, errors={"class_filters": ("FAILED_PRECONDITION", "DATASET_REQUIRED", "class_filters needs a labelled dataset")})
    report = evaluate(policy(THRESHOLDS), result)
    assert {r.status for r in report.results} == {ERROR}
    assert "DATASET_REQUIRED" in report.results[0].message
    assert report.exit_code() == 1
    lenient = evaluate(policy('could_not_run = "warn"\n' + THRESHOLDS), result)
    assert lenient.exit_code() == 0 and lenient.status() == WARN


def test_a_job_that_never_started_its_tasks_says_why() -> None:
    result = make_result({})
    result.job.state = jobs_pb2.FAILED
    result.job.error.code, result.job.error.reason, result.job.error.message = "FAILED_PRECONDITION", "UNSUPPORTED_OP", "op Foo is not supported"
    [check, *_] = evaluate(policy(THRESHOLDS), result).results
    assert check.status == ERROR and "UNSUPPORTED_OP" in check.message and "FAILED" in check.message


def test_an_absent_metric_could_not_run() -> None:
    summary = class_filters_summary()
    summary["global"]["mis"] = None  # the worker writes None for a non-finite value
    report = evaluate(policy(THRESHOLDS), make_result({"class_filters": summary}))
    assert [r.status for r in report.results] == [PASS, ERROR, ERROR]
    assert "absent" in report.results[1].message


RELATIVE = """
[[checks]]
name = "accuracy vs baseline"
metric = "class_filters.accuracy_full"
max_regression = 0.10
warn_regression = 0.02
"""


@pytest.mark.parametrize("accuracy, expected", [(0.95, PASS), (0.90, PASS), (0.87, WARN), (0.80, FAIL)])
def test_relative_bounds_against_a_baseline(accuracy: float, expected: str) -> None:
    base = make_result({"class_filters": class_filters_summary(accuracy_full=0.90)}, job_id="job_base", model_id="mdl_base")
    model = make_result({"class_filters": class_filters_summary(accuracy_full=accuracy)})
    [check] = evaluate(policy(RELATIVE), model, base).results
    assert check.status == expected, check.message
    assert check.baseline == pytest.approx(0.90)


def test_relative_check_without_baseline_is_skipped_not_passed_silently() -> None:
    report = evaluate(policy(RELATIVE), make_result({"class_filters": class_filters_summary()}))
    assert [r.status for r in report.results] == [SKIP]
    assert "baseline" in report.results[0].message


def test_regression_from_zero_is_infinitely_worse() -> None:
    from sdk.gate.judge import _regression

    assert _regression("lower", 3.0, 0.0) == math.inf
    assert _regression("lower", 0.0, 0.0) == 0.0
    assert _regression("higher", 0.45, 0.5) == pytest.approx(0.1)
    assert _regression("higher", 0.6, 0.5) == 0.0


@pytest.mark.parametrize(
    "better, base, value, allowed, expected",
    [
        ("higher", 0.9, 0.855, 0.05, PASS),  # exactly 5 % worse: (0.9 − 0.855) / 0.9 is 0.05000000000000002 in floats
        ("higher", 0.9, 0.85464, 0.05, FAIL),  # 5.04 % worse
        ("lower", 20.0, 21.0, 0.05, PASS),  # exactly 5 %
        ("lower", 0.3, 0.315, 0.05, PASS),  # 0.315 / 0.3 − 1 is 0.05000000000000007 in floats
        ("lower", 0.3, 0.31500001, 0.05, FAIL),
    ],
)
def test_regressions_are_compared_exactly_not_through_binary_rounding(better: str, base: float, value: float, allowed: float, expected: str) -> None:
    metric = "class_filters.accuracy_full" if better == "higher" else "class_filters.density"
    text = f'[[checks]]\nname = "c"\nmetric = "{metric}"\nmax_regression = {allowed}\n'
    field = "accuracy_full" if better == "higher" else "density"
    summaries = []
    for v in (value, base):
        summary = class_filters_summary()
        summary["global"][field] = v
        summaries.append(summary)
    [check] = evaluate(policy(text), make_result({"class_filters": summaries[0]}), make_result({"class_filters": summaries[1]}, job_id="job_base")).results
    assert check.status == expected, check.message
    if expected == FAIL:
        # the message never reads "5.0% worse (allowed 5%)": as many digits as it takes to see the difference
        shown = check.message.split("% worse")[0].rsplit(" ", 1)[-1]
        assert float(shown) > 5 and "(allowed 5%)" in check.message, check.message
    else:
        assert "within 5%" in check.message, check.message


def test_derived_metrics_are_exact_on_the_numbers_as_written() -> None:
    """0.72 / 0.9 is 0.8 and 0.9 − 0.85 is 0.05: binary arithmetic would fail both at their bound."""
    text = """
[[checks]]
name = "retained"
metric = "class_filters.accuracy_retained"
min = 0.8

[[checks]]
name = "recall loss"
metric = "class_filters.max_recall_loss"
max = 0.05
"""
    summary = class_filters_summary(accuracy_full=0.9, accuracy_restricted=0.72)
    for c in summary["classes"]:
        c["recall_full"], c["recall_restricted"] = 0.9, 0.85
    report = evaluate(policy(text), make_result({"class_filters": summary}))
    assert [(r.status, r.value) for r in report.results] == [(PASS, 0.8), (PASS, 0.05)], [r.message for r in report.results]


def test_absolute_bound_messages_show_the_digits_that_differ() -> None:
    text = '[[checks]]\nname = "acc"\nmetric = "class_filters.accuracy_restricted"\nmin = 0.8\n'
    [check] = evaluate(policy(text), make_result({"class_filters": class_filters_summary(accuracy_restricted=0.79999)})).results
    assert check.status == FAIL and "0.79999 < min 0.8" in check.message, check.message
    [check] = evaluate(policy(text), make_result({"class_filters": class_filters_summary(accuracy_restricted=0.8)})).results
    assert check.status == PASS, check.message


DIRECTION = """
[[checks]]
name = "motion as in the baseline"
metric = "tconv_stats.direction_agreement"
min = 0.8

[[checks]]
name = "fits no worse"
metric = "tconv_stats.mean_residual"
max_regression = 0.1
"""


def test_time_reversed_motion_fails_the_direction_agreement_and_nothing_else() -> None:
    forward = [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (-1.0, 0.2)]
    base = make_result({"tconv_stats": tconv_summary({"conv1": (0.05, 4, 0)}, {"conv1": forward})}, job_id="job_base", model_id="mdl_base")
    same = make_result({"tconv_stats": tconv_summary({"conv1": (0.05, 4, 0)}, {"conv1": forward})})
    reversed_ = make_result({"tconv_stats": tconv_summary({"conv1": (0.05, 4, 0)}, {"conv1": [(-x, -y) for x, y in forward]})})
    ok = evaluate(policy(DIRECTION), same, base)
    assert [r.status for r in ok.results] == [PASS, PASS] and ok.results[0].value == pytest.approx(1.0)
    bad = evaluate(policy(DIRECTION), reversed_, base)
    assert [r.status for r in bad.results] == [FAIL, PASS], [r.message for r in bad.results]
    assert bad.results[0].value == pytest.approx(-1.0)
    assert bad.metrics["tconv_stats"]["tconv_stats.direction_agreement[conv1]"] == pytest.approx(-1.0)
    # a quarter turn is orthogonal motion: agreement 0
    turned = make_result({"tconv_stats": tconv_summary({"conv1": (0.05, 4, 0)}, {"conv1": [(-y, x) for x, y in forward]})})
    assert evaluate(policy(DIRECTION), turned, base).results[0].value == pytest.approx(0.0, abs=1e-12)
    # without a baseline the paired check cannot look: skipped, said so
    alone = evaluate(policy(DIRECTION), reversed_)
    assert alone.results[0].status == SKIP and "baseline" in alone.results[0].message


def test_kernel_viz_direction_agreement_pairs_channels() -> None:
    base_summary = kernel_viz_summary({"conv1": [3]})
    flipped = json.loads(json.dumps(base_summary))
    for channel in flipped["layers"][0]["channels"]:
        if channel["direction_deg"] is not None:
            channel["direction_deg"] = (channel["direction_deg"] + 180.0) % 360.0
    base = make_result({"kernel_viz": base_summary}, job_id="job_base")
    assert metrics.compare("kernel_viz.direction_agreement", base_summary, base_summary) == pytest.approx(1.0)
    assert metrics.compare("kernel_viz.direction_agreement", flipped, base_summary, "conv1") == pytest.approx(-1.0)
    text = '[[checks]]\nmetric = "kernel_viz.direction_agreement"\nmin = 0.5\n'
    [check] = evaluate(policy(text), make_result({"kernel_viz": flipped}), base).results
    assert check.status == FAIL and check.check.name == "kernel_viz.direction_agreement vs baseline"


def test_a_paired_metric_refuses_a_relative_bound() -> None:
    with pytest.raises(PolicyError, match="already compares the model with the baseline"):
        policy('[[checks]]\nmetric = "tconv_stats.direction_agreement"\nmax_regression = 0.1\n')


# ---------------------------------------------------------------------- outputs
@pytest.fixture()
def failing_report() -> GateReport:
    result = make_result({"class_filters": class_filters_summary(accuracy_restricted=0.5, mis=0.3)})
    base = make_result({"class_filters": class_filters_summary()}, job_id="job_base", model_id="mdl_base")
    return evaluate(policy(THRESHOLDS + RELATIVE), result, base, model_label="candidate.pt2", baseline_label="released.pt2")


def test_outputs_name_the_model_files_not_only_their_ids(failing_report: GateReport) -> None:
    root = ET.fromstring(failing_report.to_junit())
    assert "candidate.pt2" in root.get("name", "") and "released.pt2" in root.get("name", "")
    [suite] = root.findall("testsuite")
    props = {p.get("name"): p.get("value") for p in suite.find("properties").findall("property")}  # type: ignore[union-attr]
    assert props["model"] == "candidate.pt2" and props["baseline.model"] == "released.pt2" and props["model_id"] == "mdl_model"
    failure = next(c for c in suite.findall("testcase") if c.find("failure") is not None)
    assert failure.get("file") == "candidate.pt2" and "candidate.pt2" in (failure.find("failure").text or "")  # type: ignore[union-attr]
    markdown = failing_report.to_markdown()
    assert "**candidate.pt2** (`mdl_model`, job `job_model`)" in markdown and "**released.pt2**" in markdown
    [annotation] = [a for a in failing_report.to_annotations() if a.startswith("::error")]
    assert "candidate.pt2" in annotation and "released.pt2" in annotation
    assert failing_report.to_text().splitlines()[0].startswith("gate on candidate.pt2 (mdl_model, job job_model) against baseline released.pt2")
    data = failing_report.to_dict()
    assert data["model_name"] == "candidate.pt2" and data["baseline_name"] == "released.pt2"


def test_junit_has_a_suite_per_task_a_case_per_check_and_metrics_as_properties(failing_report: GateReport) -> None:
    root = ET.fromstring(failing_report.to_junit())
    assert root.tag == "testsuites" and root.get("tests") == "4" and root.get("failures") == "1"
    [suite] = root.findall("testsuite")
    assert suite.get("name") == "class_filters"
    props = {p.get("name"): p.get("value") for p in suite.find("properties").findall("property")}  # type: ignore[union-attr]
    assert props["class_filters.accuracy_restricted"] == "0.5"
    assert props["baseline.class_filters.accuracy_restricted"] == "0.88"
    assert props["job_id"] == "job_model" and props["baseline.job_id"] == "job_base"
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == {"restricted accuracy", "MIS", "MIS margin", "accuracy vs baseline"}
    failure = cases["restricted accuracy"].find("failure")
    assert failure is not None and "0.5 < min 0.8" in failure.get("message", "")
    assert cases["MIS"].find("failure") is None


def test_json_report(failing_report: GateReport, tmp_path: Path) -> None:
    failing_report.write(json_path=tmp_path / "gate.json", github=False)
    data = json.loads((tmp_path / "gate.json").read_text())
    assert data["schema"] == "kernelscope.gate.report/v1"
    assert data["status"] == "fail" and data["exit_code"] == 1
    assert data["counts"]["fail"] == 1
    assert [c["status"] for c in data["checks"]] == ["fail", "pass", "pass", "pass"]


def test_github_annotations_and_step_summary(failing_report: GateReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    failing_report.write()
    out = capsys.readouterr().out.splitlines()
    errors = [line for line in out if line.startswith("::error")]
    assert len(errors) == 1 and "restricted accuracy" in errors[0] and "0.5 < min 0.8" in errors[0]
    assert "\n" not in errors[0]
    markdown = summary.read_text()
    assert "kernelscope gate: FAIL" in markdown and "| ❌ | restricted accuracy |" in markdown


def test_the_gate_page_leads_with_the_verdict_and_labels_both_models(failing_report: GateReport, tmp_path: Path) -> None:
    import re

    failing_report.policy = policy(THRESHOLDS + RELATIVE, tmp_path)  # from a file: the page quotes its lines
    failing_report.results = evaluate(failing_report.policy, failing_report.result, failing_report.baseline_result).results  # type: ignore[arg-type]
    failing_report.write(html_path=tmp_path / "gate.html", github=False)
    html = (tmp_path / "gate.html").read_text()
    assert '<body data-images-checked="false" data-gate-status="fail">' in html
    banner = re.search(r'<div class="gate-banner fail".*?</div>', html).group(0)  # type: ignore[union-attr]
    assert "FAIL" in banner and "1 of 4 checks fail the gate" in banner and "candidate.pt2" in banner and "released.pt2" in banner
    assert 'data-role="candidate"><h3>Candidate: candidate.pt2' in html and 'data-role="baseline"><h3>Baseline: released.pt2' in html
    checks = html[html.index('data-section="gate-checks"') : html.index('data-section="gate-metrics"')]
    assert "candidate (candidate.pt2)" in checks and "baseline (released.pt2)" in checks
    row = re.search(r"<tr><td class=\"status-fail\">.*?</tr>", checks, re.S).group(0)  # type: ignore[union-attr]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    assert cells[1] == "restricted accuracy" and cells[3] == "0.5" and cells[4] == "0.88" and cells[5] == "-0.38 (-43.2 %)"
    assert "gate.toml:2" in row and 'metric = &quot;class_filters.accuracy_restricted&quot;' in row and "min = 0.8" in row
    assert "name = &quot;MIS&quot;" not in row, "only the check's own lines"
    # then both jobs, each section labelled
    assert "Candidate candidate.pt2: At a glance" in html and "Baseline released.pt2: At a glance" in html
    assert 'id="candidate-task-class_filters"' in html and 'id="baseline-task-class_filters"' in html


def test_annotation_escaping() -> None:
    from sdk.gate.annotations import _escape_data, _escape_property

    assert _escape_data("50% off\nnext") == "50%25 off%0Anext"
    assert _escape_property("a: b, c") == "a%3A b%2C c"


# ---------------------------------------------------------------------- CLI: tool errors exit 2
def test_cli_broken_policy_exits_2_before_starting_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "gate.toml"
    bad.write_text('[[checks]]\nmetric = "kernel_viz.deadkernels"\nmax = 0\n')
    code = cli_main(["gate", "model.pt2", "--policy", str(bad), "--local", "--no-github"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown metric 'kernel_viz.deadkernels'" in err and "Valid metrics:" in err


def test_cli_missing_policy_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["gate", "model.pt2", "--policy", str(tmp_path / "nope.toml"), "--no-github"]) == 2
    assert "cannot read policy" in capsys.readouterr().err


# ---------------------------------------------------------------------- end to end: `kernelscope gate --local`
E2E_POLICY = """
# conv1 only, channels 0-5, few steps: the gate's plumbing is under test here, not the optimisation
[tasks.kernel_viz]
layers = ["conv1"]
channels = [0, 1, 2, 3, 4, 5]
steps = 8
seed = 0

[[checks]]
name = "live conv1 kernels are driven above noise"
metric = "kernel_viz.median_activation_ratio"
layer = "conv1"
min = 1.0

[[checks]]
name = "no new dead kernels"
metric = "kernel_viz.dead_kernels"
max_regression = 0.10
"""


@pytest.fixture(scope="module")
def c3d_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same seeded C3DSmall twice, as weights for the registered "c3d_small" architecture:
    healthy, and with 4 conv1 filters zeroed (planted dead kernels)."""
    import torch
    from safetensors.torch import save_file

    from workers.samples.models import C3DSmall

    root = tmp_path_factory.mktemp("gate_models")
    torch.manual_seed(0)
    model = C3DSmall().eval()
    save_file(model.state_dict(), root / "healthy.safetensors")
    with torch.no_grad():
        model.conv1.weight[:4] = 0.0
        model.conv1.bias[:4] = 0.0
    save_file(model.state_dict(), root / "dead.safetensors")
    return {"healthy": root / "healthy.safetensors", "dead": root / "dead.safetensors"}


def _run_gate(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    (tmp_path / "gate.toml").write_text(E2E_POLICY)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    spec = json.dumps({"mean": [0.5] * 3, "std": [0.25] * 3})
    code = cli_main(["gate", *args, "--policy", str(tmp_path / "gate.toml"), "--local", "--architecture", "c3d_small", "--input-spec", spec, "--github",
                     "--junit", str(tmp_path / "junit.xml"), "--json", str(tmp_path / "gate.json")])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_gate_passes_a_healthy_model(c3d_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = _run_gate([str(c3d_models["healthy"])], tmp_path, capsys, monkeypatch)
    assert code == 0, err[-3000:]
    # progress for the CI log while the job runs: submitted, its stages, its end, named by the model's file
    progress = [line for line in err.splitlines() if line.startswith("gate: model healthy.safetensors: ")]
    assert "submitted" in progress[0] and progress[-1].endswith("succeeded"), progress
    report = json.loads((tmp_path / "gate.json").read_text())
    assert [c["status"] for c in report["checks"]] == ["pass", "skip"]
    assert report["metrics"]["kernel_viz"]["kernel_viz.dead_kernels"] == 0
    assert "::error" not in out
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert root.get("failures") == "0" and root.get("errors") == "0" and root.get("skipped") == "1"


@pytest.mark.slow
def test_gate_catches_planted_dead_kernels_against_the_baseline(c3d_models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "report.html"
    code, out, err = _run_gate([str(c3d_models["dead"]), "--baseline", str(c3d_models["healthy"]), "--report", str(page)], tmp_path, capsys, monkeypatch)
    assert code == 1, err[-3000:]
    report = json.loads((tmp_path / "gate.json").read_text())
    by_name = {c["name"]: c for c in report["checks"]}
    regression = by_name["no new dead kernels"]
    assert regression["status"] == "fail" and regression["value"] == 4 and regression["baseline"] == 0, regression
    assert by_name["live conv1 kernels are driven above noise"]["status"] == "pass"
    root = ET.parse(tmp_path / "junit.xml").getroot()
    failures = [(case.get("name"), f.get("message")) for case in root.iter("testcase") for f in case.findall("failure")]
    assert failures == [("no new dead kernels", regression["message"])]
    annotations = [line for line in out.splitlines() if line.startswith("::error")]
    assert len(annotations) == 1 and "no new dead kernels" in annotations[0]
    assert "kernelscope gate: FAIL" in (tmp_path / "summary.md").read_text()
    # the verdict table is the command's output (stdout), not a log line
    assert "gate: FAIL" in out and "no new dead kernels" in out and "gate: FAIL" not in err
    # the gate's own page: the verdict first, then both jobs labelled, each with its layer inventory (a describe
    # task in the same job)
    html = page.read_text()
    assert 'data-gate-status="fail"' in html and html.index('id="gate-checks"') < html.index('id="candidate-model"')
    assert html.count('data-section="kernel_viz"') == 2 and 'id="candidate-model"' in html and 'id="baseline-model"' in html
    assert "Candidate dead.safetensors" in html and "Baseline healthy.safetensors" in html
    assert "Layer inventory unavailable" not in html and html.count("dead kernels") >= 2


def test_progress_lines_follow_each_stage_without_flooding_the_log() -> None:
    """One line per change of state, task or stage, or per 10 % within a stage; the end of each job; both jobs."""
    import io

    from sdk.gate.run import _await

    def job(state: int, task: str = "", stage: str = "", fraction: float = 0.0) -> jobs_pb2.Job:
        update = jobs_pb2.Job(id="job_x", state=state)
        update.progress.task, update.progress.stage, update.progress.fraction = task, stage, fraction
        return update

    updates = [
        job(jobs_pb2.QUEUED),
        job(jobs_pb2.RUNNING, "tconv_stats", "fit conv1", 0.10),
        job(jobs_pb2.RUNNING, "tconv_stats", "fit conv1", 0.15),  # same stage, under 10 % more: no line
        job(jobs_pb2.RUNNING, "tconv_stats", "fit conv1", 0.30),
        job(jobs_pb2.RUNNING, "class_filters", "activations", 0.32),
        job(jobs_pb2.SUCCEEDED, fraction=1.0),
    ]

    class Watching:
        def watch_job(self, job_id: str, deadline: float | None = None):  # noqa: ANN201 - an iterator of jobs
            yield from updates

    class Handle:  # as sdk.job.Job: the id is the proto's
        def __init__(self, job_id: str) -> None:
            self.proto = jobs_pb2.Job(id=job_id)

        @property
        def id(self) -> str:
            return self.proto.id

    log = io.StringIO()
    results = _await(Watching(), [Handle("job_a"), Handle("job_b")], ["new.pt2", "old.pt2"], None, log)  # type: ignore[arg-type]
    assert [r.job.state for r in results] == [jobs_pb2.SUCCEEDED] * 2
    mine = [line for line in log.getvalue().splitlines() if line.startswith("gate: model new.pt2: ")]
    assert mine == [
        "gate: model new.pt2: queued (0%)",
        "gate: model new.pt2: running tconv_stats: fit conv1 (10%)",
        "gate: model new.pt2: running tconv_stats: fit conv1 (30%)",
        "gate: model new.pt2: running class_filters: activations (32%)",
        "gate: model new.pt2: succeeded (100%)",
        "gate: model new.pt2: job job_x succeeded",
    ]
    assert sum(line.startswith("gate: baseline old.pt2: ") for line in log.getvalue().splitlines()) == 6


def test_class_filters_checks_need_a_dataset_before_anything_runs(tmp_path: Path) -> None:
    from sdk.gate import run_gate

    with pytest.raises(PolicyError, match="needs a labelled dataset"):
        run_gate(None, "model.pt2", policy(THRESHOLDS))  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="does not exist"):
        run_gate(None, "model.pt2", policy(THRESHOLDS), dataset=tmp_path / "missing.npz")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- model options as policy keys (issue 16)

MODEL_KEYS = '''
input_spec = { mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25], value_max = 1.0 }
architecture = "c3d_small"
[[checks]]
metric = "tconv_stats.zero_filters"
max = 0
'''


def test_input_spec_architecture_and_format_are_policy_keys() -> None:
    parsed = policy(MODEL_KEYS)
    assert parsed.model_options == {"input_spec": {"mean": [0.5] * 3, "std": [0.25] * 3, "value_max": 1.0}, "architecture": "c3d_small"}
    with pytest.raises(PolicyError, match="input_spec has no key 'means'; its keys: shape, dtype"):
        policy(MODEL_KEYS.replace("mean =", "means ="))
    with pytest.raises(PolicyError, match="input_spec.std is a list of numbers"):
        policy(MODEL_KEYS.replace("std = [0.25, 0.25, 0.25]", 'std = "0.25"'))
    with pytest.raises(PolicyError, match="architecture is a name"):
        policy(MODEL_KEYS.replace('"c3d_small"', "3"))


def test_the_policys_model_options_reach_both_uploads_and_the_command_line_overrides_them(tmp_path: Path) -> None:
    """run_gate hands the policy's input_spec/architecture to every analyze call; a non-empty CLI value wins."""
    from sdk.gate import run_gate

    calls: list[dict[str, Any]] = []

    class Submitted(Exception):
        pass

    class RecordingClient:
        def analyze(self, model: Any, **kwargs: Any) -> Any:
            calls.append({"model": model, **kwargs})
            raise Submitted  # what the options were is all this test needs

    with pytest.raises(Submitted):
        run_gate(RecordingClient(), "model.pt2", policy(MODEL_KEYS), format=None, architecture="")  # type: ignore[arg-type]
    assert calls[-1]["input_spec"]["std"] == [0.25] * 3 and calls[-1]["architecture"] == "c3d_small" and "format" not in calls[-1]
    with pytest.raises(Submitted):
        run_gate(RecordingClient(), "model.pt2", policy(MODEL_KEYS), input_spec={"mean": [0.0] * 3}, architecture="r3d_18")  # type: ignore[arg-type]
    assert calls[-1]["input_spec"] == {"mean": [0.0] * 3} and calls[-1]["architecture"] == "r3d_18"


def test_a_missing_policy_dataset_says_to_pass_dataset(tmp_path: Path) -> None:
    from sdk.gate import run_gate

    loaded = policy('dataset = "clips.npz"\n' + THRESHOLDS, tmp_path)
    with pytest.raises(PolicyError, match=r"clips.npz \(from the policy's dataset key .*\) does not exist: pass --dataset CLIPS.npz"):
        run_gate(None, "model.pt2", loaded)  # type: ignore[arg-type]
