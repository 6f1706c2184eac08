"""The report of a real job (all three analyses through the embedded stack), and the gate's page of a real
gate run (a hand-built model against its time-reversed twin), opened in headless Chromium offline: every
section is there, every image decodes, and the screenshots are kept for a person to look at.

Chromium comes from Debian's package (tests/run.sh installs it); without /usr/bin/chromium the test
is skipped with that reason. The page marks itself once loaded (<body data-images-checked="true"
data-images=N data-broken-images=M>), and --dump-dom returns the DOM after the load event. The
screenshot is kept in the test's temp dir (report.png) for a person to look at.
"""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

import sdk

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    # Offline: any host lookup fails, so a page that fetched anything would show a broken image.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--virtual-time-budget=15000",
)


def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()]  # type: ignore[list-item]
    env = dict(os.environ, HOME=str(profile))  # chromium writes its crash/config dirs under HOME
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def module_client(stack) -> Iterator[sdk.Client]:  # noqa: ANN001 - deploy.stack.LocalStack (the shared e2e stack)
    with sdk.Client(stack.target) as client:
        yield client


@pytest.fixture(scope="module")
def demo_result(module_client: sdk.Client, c3d_pt2: Path, tmp_path_factory: pytest.TempPathFactory) -> sdk.Result:
    """A job like the demo's: kernel_viz, tconv_stats and class_filters on a C3D model, kept small."""
    import numpy as np

    from workers.samples.motion import motion_clips

    x, y, names = motion_clips(6, seed=3)
    clips = tmp_path_factory.mktemp("clips") / "clips.npz"
    np.savez(clips, x=x, y=y, class_names=np.asarray(names))
    result = module_client.analyze(
        c3d_pt2,
        tasks=[
            {"kernel_viz": {"layers": ["conv1"], "channels": [0, 1, 2, 3], "steps": 12, "seed": 0}},
            {"tconv_stats": {"layers": ["conv1"], "restarts": 0, "fit_steps": 5, "seed": 0}},
            {"class_filters": {"bootstrap": 3, "seed": 0}},
            "describe",  # the layer inventory, in the same job (the report uses it instead of a DescribeModel call)
        ],
        dataset=clips,
        input_spec={"mean": [0.5] * 3, "std": [0.25] * 3},
        progress=False,
        raise_on_error=False,
    )
    assert result.ok, [(t.task, t.error) for t in result.tasks]
    return result


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (tests/run.sh installs Debian's chromium package)")
def test_report_of_a_real_job_opens_offline_with_every_image(demo_result: sdk.Result, tmp_path: Path) -> None:
    page = demo_result.save_report(tmp_path / "report.html")
    html = page.read_text()
    expected_sections = {"verdicts", "job", "model", "kernel_viz", "tconv_stats", "class_filters", "artifacts"}
    assert set(re.findall(r'data-section="([^"]+)"', html)) == expected_sections
    images_in_source = len(re.findall(r"<img ", html))
    image_artifacts = [a for a in demo_result.artifacts if a.media_type in ("image/png", "image/gif")]
    assert images_in_source >= len(image_artifacts) > 0, "every image artifact is shown"

    dom = chromium(page, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stdout[:500]
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(0)))
    assert attrs.get("data-images-checked") == "true", "the page's load check did not run"
    assert int(attrs["data-images"]) == images_in_source
    assert attrs["data-broken-images"] == "0", f"images that did not load: {attrs.get('data-broken-list')}"
    rendered = re.findall(r'<section id="[^"]+" class="report-section" data-section="([^"]+)"', dom.stdout)
    assert set(rendered) == expected_sections and rendered[0] == "verdicts", "the page leads with the verdicts"
    verdicts = dict(re.findall(r'<li class="verdict \w+"[^>]*? data-task="(\w+)">.*?</strong>: (.*?)</li>', dom.stdout))
    assert set(verdicts) == {"kernel_viz", "tconv_stats", "class_filters"}
    assert re.match(r"\d+ of \d+ fitted filters 3T-explainable \(plain fit\); best residual [\d.]+, threshold 0\.2", verdicts["tconv_stats"]), verdicts
    assert verdicts["kernel_viz"].startswith("conv1: ") and "accuracy" in verdicts["class_filters"]
    assert "sheet-grid" in dom.stdout and dom.stdout.count('class="px"') == 3 * 4, "video, texture and flow of the 4 channels"

    shot = tmp_path / "report.png"
    done = chromium(page, tmp_path / "profile2", "--window-size=1400,3000", f"--screenshot={shot}")
    assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr[-2000:]


def test_real_summaries_match_their_versioned_schemas(demo_result: sdk.Result) -> None:
    """Every task summary of the real job validates against the schema the SDK ships for it."""
    import jsonschema

    from sdk import schemas

    checked = []
    for task in demo_result.tasks:
        schema = schemas.load(task.task)
        assert schema["$id"].endswith(f"/{task.task}/v{schemas.VERSIONS[task.task]}.json")
        jsonschema.Draft202012Validator(schema).validate(task.summary)
        checked.append(task.task)
    assert sorted(checked) == ["class_filters", "describe", "kernel_viz", "tconv_stats"]


def test_schemas_reject_a_summary_that_lost_a_key(demo_result: sdk.Result) -> None:
    import jsonschema

    from sdk import schemas

    broken = dict(demo_result["class_filters"], **{"global": {k: v for k, v in demo_result["class_filters"]["global"].items() if k != "mis"}})
    with pytest.raises(jsonschema.ValidationError, match="'mis' is a required property"):
        jsonschema.validate(broken, schemas.load("class_filters"))


# ---------------------------------------------------------------------- the gate's page
class Movers(__import__("torch").nn.Module):
    """Hand-built: 8 filters, each a blob moving 1 px per frame in its own direction (45° apart) within one
    colour channel; the head sums the filters of each colour. On static coloured clips the class is the
    colour, so time-reversing every kernel changes each filter's motion and nothing of the accuracy."""

    def __init__(self, reverse: bool = False) -> None:
        import torch
        from torch import nn

        super().__init__()
        self.conv = nn.Conv3d(3, 8, (3, 7, 7), padding=(0, 3, 3))
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(8, 3)
        y, x = torch.meshgrid(torch.arange(7.0) - 3, torch.arange(7.0) - 3, indexing="ij")
        weight = torch.zeros(8, 3, 3, 7, 7)
        for f in range(8):
            angle = math.radians(45 * f)
            for t in range(3):
                cx, cy = (t - 1) * math.cos(angle), (t - 1) * math.sin(angle)
                weight[f, f % 3, t] = torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 1.2**2))
        with torch.no_grad():
            self.conv.weight.copy_(weight.flip(2) if reverse else weight)
            self.conv.bias.zero_()
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            for f in range(8):
                self.fc.weight[f % 3, f] = 1.0

    def forward(self, x):  # noqa: ANN001, ANN201 - torch.export traces it
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


GATE_POLICY = """
[tasks.tconv_stats]
restarts = 0
fit_steps = 60
seed = 0

[tasks.class_filters]
bootstrap = 3
seed = 0

[[checks]]
name = "accuracy kept"
metric = "class_filters.accuracy_full"
max_regression = 0.0

[[checks]]
name = "kernels move as in the baseline"
metric = "tconv_stats.direction_agreement"
min = 0.8
"""


@pytest.fixture(scope="module")
def gate_run(module_client: sdk.Client, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - (GateReport, progress log, page)
    """`kernelscope gate` as CI runs it: the time-reversed model against the forward one, both through the stack."""
    import numpy as np
    import torch

    from sdk.gate import Policy, run_gate
    from workers.samples.models import export_pt2

    root = tmp_path_factory.mktemp("gate")
    example = torch.zeros(2, 3, 4, 16, 16)
    export_pt2(Movers(), root / "forward.pt2", example)
    export_pt2(Movers(reverse=True), root / "reversed.pt2", example)
    rng = np.random.default_rng(0)
    x, y = [], []
    for k in range(3):
        for _ in range(16):
            colour = np.full(3, 0.15)
            colour[k] = 0.6 + 0.3 * rng.random()
            x.append(np.clip(colour[:, None, None, None] + 0.05 * rng.standard_normal((3, 1, 16, 16)) * np.ones((1, 4, 1, 1)), 0, 1))
            y.append(k)
    np.savez(root / "colours.npz", x=np.asarray(x, np.float32), y=np.asarray(y), class_names=np.asarray(["red", "green", "blue"]))
    (root / "gate.toml").write_text(GATE_POLICY)
    log = io.StringIO()
    report, _, _ = run_gate(
        module_client, root / "reversed.pt2", Policy.load(root / "gate.toml"), baseline=root / "forward.pt2",
        dataset=root / "colours.npz", extra_tasks=["describe"], log=log, input_spec={"mean": [0.0] * 3, "std": [1.0] * 3},
    )
    page = root / "gate.html"
    report.write(html_path=page, github=False)
    return report, log.getvalue(), page


def test_time_reversed_kernels_keep_accuracy_and_fail_the_motion_check(gate_run) -> None:  # noqa: ANN001
    report, log, _ = gate_run
    checks = {r.check.name: r for r in report.results}
    accuracy, motion = checks["accuracy kept"], checks["kernels move as in the baseline"]
    assert accuracy.status == "pass" and accuracy.value == accuracy.baseline == 1.0, accuracy.message
    assert motion.status == "fail" and motion.value is not None and motion.value < -0.9, motion.message
    assert report.exit_code() == 1 and report.model_name == "reversed.pt2" and report.baseline_name == "forward.pt2"
    # progress lines for CI logs: submitted, stages while running, the end of each job
    lines = log.splitlines()
    for role, name in (("model", "reversed.pt2"), ("baseline", "forward.pt2")):
        mine = [line for line in lines if line.startswith(f"gate: {role} {name}: ")]
        assert "submitted" in mine[0] and mine[-1].endswith("succeeded"), mine


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (tests/run.sh installs Debian's chromium package)")
def test_the_gate_page_opens_offline_with_its_verdict_and_both_models(gate_run, tmp_path: Path) -> None:  # noqa: ANN001
    report, _, page = gate_run
    dom = chromium(page, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', re.search(r"<body[^>]*>", dom.stdout).group(0)))  # type: ignore[union-attr]
    assert attrs["data-gate-status"] == "fail" and attrs["data-images-checked"] == "true"
    assert attrs["data-broken-images"] == "0", attrs.get("data-broken-list")
    rendered = re.findall(r'<section id="([^"]+)" class="report-section"', dom.stdout)
    assert rendered[:3] == ["gate-models", "gate-checks", "gate-metrics"]
    assert {"candidate-verdicts", "candidate-task-tconv_stats", "baseline-verdicts", "baseline-task-tconv_stats"} <= set(rendered)
    banner = re.search(r'<div class="gate-banner fail".*?</div>', dom.stdout, re.S).group(0)  # type: ignore[union-attr]
    assert "1 of 2 checks fail the gate" in banner and "reversed.pt2" in banner and "forward.pt2" in banner
    row = re.search(r'<tr><td class="status-fail">.*?</tr>', dom.stdout, re.S).group(0)  # type: ignore[union-attr]
    assert "kernels move as in the baseline" in row and "gate.toml:" in row and "min = 0.8" in row
    shot = tmp_path / "gate.png"
    done = chromium(page, tmp_path / "profile2", "--window-size=1400,2400", f"--screenshot={shot}")
    assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr[-2000:]
