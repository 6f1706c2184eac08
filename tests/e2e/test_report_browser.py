"""The report of a real job (all three analyses through the embedded stack), opened in headless Chromium
offline: every section is there and every image decodes.

Chromium comes from Debian's package (tests/run.sh installs it); without /usr/bin/chromium the test
is skipped with that reason. The page marks itself once loaded (<body data-images-checked="true"
data-images=N data-broken-images=M>), and --dump-dom returns the DOM after the load event. The
screenshot is kept in the test's temp dir (report.png) for a person to look at.
"""

from __future__ import annotations

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
    expected_sections = {"job", "model", "kernel_viz", "tconv_stats", "class_filters", "artifacts"}
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
    rendered_sections = set(re.findall(r'<section id="[^"]+" class="report-section" data-section="([^"]+)"', dom.stdout))
    assert rendered_sections == expected_sections

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
