"""The HTML report, from hand-made job results and a fake client (no service): sections, embedded
images byte for byte, the layer inventory, failures shown rather than hidden, and no network fetch.
The real-job report opened in Chromium is tests/e2e/test_report_browser.py."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from kernelscope.v1 import jobs_pb2, models_pb2
from sdk.errors import NotFound
from sdk.report import charts, write_report
from sdk.result import Result
from tests.sdk.test_gate import class_filters_summary


def png(colour: tuple[int, int, int], size: int = 12) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


def gif(frames: int = 3, size: int = 10) -> bytes:
    from PIL import Image

    images = [Image.new("RGB", (size, size), (40 * i, 80, 200 - 40 * i)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return buffer.getvalue()


class FakeClient:
    """read_artifact and describe, from memory; records what was asked."""

    def __init__(self, files: dict[str, bytes], description: models_pb2.ModelDescription | None = None, broken: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.files = files
        self.description = description
        self.broken = broken
        self.described: list[str] = []
        self.record: models_pb2.Model | None = None

    def read_artifact(self, job_id: str, name: str) -> bytes:
        if name in self.broken:
            raise NotFound(f"artifact {name} of job {job_id} is gone", reason="ARTIFACT_NOT_FOUND")
        return self.files[name]

    def get_model(self, model_id: str) -> models_pb2.Model:
        if self.record is None:
            raise NotFound(f"model {model_id} not found", reason="MODEL_NOT_FOUND")
        return self.record

    def describe(self, model_id: str) -> models_pb2.ModelDescription:
        self.described.append(model_id)
        if self.description is None:
            raise NotFound(f"model {model_id} not found", reason="MODEL_NOT_FOUND")
        return self.description


def description() -> models_pb2.ModelDescription:
    d = models_pb2.ModelDescription(model_id="mdl_model", supported_tasks=["describe", "kernel_viz", "tconv_stats", "class_filters"])
    d.input_spec.shape.extend([3, 8, 32, 32])
    d.input_spec.value_max = 1.0
    for name, kind, kernel, params in (("conv1", "Conv3d", [16, 3, 3, 3, 3], 1312), ("conv2", "Conv3d", [32, 16, 3, 3, 3], 13856), ("fc", "Linear", [4, 64], 260)):
        d.layers.add(name=name, kind=kind, kernel_shape=kernel, parameters=params, stride=[1, 1, 1], output_shape=[kernel[0], 8, 32, 32])
    return d


def make_job(outcomes: dict[str, tuple[dict[str, Any] | None, dict[str, bytes]]], errors: dict[str, tuple[str, str, str]] | None = None) -> tuple[jobs_pb2.Job, dict[str, bytes]]:
    job = jobs_pb2.Job(id="job_1234", model_id="mdl_model", state=jobs_pb2.SUCCEEDED, dataset_id="ds_1")
    files: dict[str, bytes] = {}
    for task, (summary, artifacts) in outcomes.items():
        result = job.results.add(task=task, summary_json=json.dumps(summary) if summary is not None else "", duration_seconds=3.25)
        for name, data in artifacts.items():
            media = {".png": "image/png", ".gif": "image/gif", ".json": "application/json"}.get(Path(name).suffix, "application/octet-stream")
            result.artifacts.add(name=name, media_type=media, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), task=task)
            files[name] = data
    for task, (code, reason, message) in (errors or {}).items():
        job.state = jobs_pb2.FAILED
        result = job.results.add(task=task)
        result.error.code, result.error.reason, result.error.message = code, reason, message
    return job, files


def class_filters_outcome() -> tuple[dict[str, Any], dict[str, bytes]]:
    summary = class_filters_summary(accuracy_full=0.9, accuracy_restricted=0.75)
    return summary, {
        "class_filters/heatmap.png": png((200, 30, 30)),
        "class_filters/subset_sizes.png": png((30, 200, 30)),
        "class_filters/class_filters.json": json.dumps(summary).encode(),
        "class_filters/matrices.npz": b"PK\x03\x04 not really",
    }


def images(html: str) -> dict[str, str]:
    """title (the artifact name) -> src of every <img> on the page."""
    return {m.group(2): m.group(1) for m in re.finditer(r'<img src="([^"]*)" alt="[^"]*" title="([^"]*)"', html)}


def sections(html: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)" class="report-section" data-section="([^"]+)"', html)


def test_report_has_every_section_and_embeds_images_byte_for_byte(tmp_path: Path) -> None:
    job, files = make_job({"class_filters": class_filters_outcome()})
    client = FakeClient(files, description())
    path = write_report([Result(job, client)], tmp_path / "report.html")  # type: ignore[arg-type]
    html = path.read_text()
    assert [s[0] for s in sections(html)] == ["verdicts", "job", "model", "task-class_filters", "artifacts"]
    shown = images(html)
    for name in ("class_filters/heatmap.png", "class_filters/subset_sizes.png"):
        assert shown[name].startswith("data:image/png;base64,")
        assert base64.b64decode(shown[name].split(",", 1)[1]) == files[name]
    # the planted numbers are on the page, with the layer inventory asked of the service
    assert client.described == ["mdl_model"]
    for text in ("conv1", "Conv3d", "16×3×3×3×3", "15428"):
        assert text in html
    assert ">0.75<" in html and ">0.9<" in html  # restricted vs full accuracy


def test_report_fetches_nothing_from_the_network(tmp_path: Path) -> None:
    job, files = make_job({"class_filters": class_filters_outcome()})
    html = write_report([Result(job, FakeClient(files, description()))], tmp_path / "r.html").read_text()  # type: ignore[arg-type]
    assert "default-src 'none'" in html
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)
    assert "url(" not in html and "@import" not in html


def test_sortable_tables_carry_numeric_sort_keys(tmp_path: Path) -> None:
    job, files = make_job({"class_filters": class_filters_outcome()})
    html = write_report([Result(job, FakeClient(files, description()))], tmp_path / "r.html").read_text()  # type: ignore[arg-type]
    per_class = html[html.index("<h3>Per class</h3>") :]
    table = per_class[: per_class.index("</table>")]
    assert 'class="data sortable"' in table
    assert 'data-sort="0.75"' in table


def test_failures_are_shown_not_hidden(tmp_path: Path) -> None:
    summary, artifacts = class_filters_outcome()
    job, files = make_job(
        {"class_filters": (summary, artifacts)},
        errors={"kernel_viz": ("FAILED_PRECONDITION", "MODEL_UNUSABLE", "kernel_viz needs a runnable module")},
    )
    client = FakeClient(files, description=None, broken={"class_filters/heatmap.png"})
    html = write_report([Result(job, client)], tmp_path / "r.html").read_text()  # type: ignore[arg-type]
    assert "MODEL_UNUSABLE" in html and "kernel_viz needs a runnable module" in html
    assert "Layer inventory unavailable" in html and "MODEL_NOT_FOUND" in html
    assert "heatmap.png unavailable" in html and "ARTIFACT_NOT_FOUND" in html
    assert "class_filters/heatmap.png" not in images(html)
    assert "class_filters/subset_sizes.png" in images(html)


def test_images_beside_the_page(tmp_path: Path) -> None:
    job, files = make_job({"class_filters": class_filters_outcome()})
    from sdk.report import write_report as write

    path = write([Result(job, FakeClient(files, description()))], tmp_path / "out" / "r.html", embed=False)  # type: ignore[arg-type]
    shown = images(path.read_text())
    assert shown and not any(src.startswith("data:") for src in shown.values())
    for name, src in shown.items():
        assert (path.parent / src).read_bytes() == files[name]


def test_a_describe_task_in_the_job_is_the_inventory(tmp_path: Path) -> None:
    inventory = {
        "input_spec": {"shape": [3, 8, 32, 32], "dtype": "float32", "value_min": 0.0, "value_max": 1.0, "mean": [0.5] * 3, "std": [0.25] * 3},
        "layers": [{"name": "block.conv_a", "kind": "TConv3d", "kernel_shape": [8, 3, 3, 3, 3], "stride": [1, 1, 1], "receptive_field": [3, 3, 3], "output_shape": [8, 8, 32, 32], "parameters": 99}],
        "supported_tasks": ["describe", "tconv_stats"],
    }
    job, files = make_job({"describe": (inventory, {})})
    client = FakeClient(files)
    html = write_report([Result(job, client)], tmp_path / "r.html").read_text()  # type: ignore[arg-type]
    assert client.described == [] and "block.conv_a" in html and "TConv3d" in html


def test_histogram_bars_count_the_planted_values() -> None:
    svg = charts.histogram([0.0, 0.1, 0.1, 0.9, 1.0, None, float("nan")], bins=2, title="t")
    root = ET.fromstring(svg)
    bars = [r for r in root.iter("{http://www.w3.org/2000/svg}rect")]
    counts = [float(r.find("{http://www.w3.org/2000/svg}title").text.rsplit(": ", 1)[1]) for r in bars]  # type: ignore[union-attr]
    assert counts == [3.0, 2.0]
    heights = [float(r.get("height")) for r in bars]  # type: ignore[arg-type]
    assert heights[0] / heights[1] == pytest.approx(1.5, rel=1e-2)


def test_charts_say_when_there_is_nothing_to_draw() -> None:
    assert "no finite values" in charts.histogram([None, float("inf")], title="empty")
    assert "no values" in charts.bars(["a", "b"], {"s": [None, None]}, title="empty")


def test_bars_leave_a_gap_for_missing_values_and_scale_the_rest() -> None:
    svg = charts.bars(["a", "b", "c"], {"full": [1.0, None, 0.5]}, title="t", lo=0.0, hi=1.0)
    bars = [r for r in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}rect") if r.find("{http://www.w3.org/2000/svg}title") is not None]
    assert [r.find("{http://www.w3.org/2000/svg}title").text for r in bars] == ["a · full: 1", "c · full: 0.5"]  # type: ignore[union-attr]
    heights = [float(r.get("height")) for r in bars]  # type: ignore[arg-type]
    assert heights[0] / heights[1] == pytest.approx(2.0, rel=1e-2)


def test_cli_report_writes_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import sdk.cli

    job, files = make_job({"class_filters": class_filters_outcome()})
    fake = FakeClient(files, description())

    class Session:
        def __enter__(self) -> "Session":
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def result(self, job_id: str) -> Result:
            assert job_id == job.id
            return Result(job, fake)  # type: ignore[arg-type]

        def get_job(self, job_id: str) -> Result:
            assert job_id == job.id
            return Result(job, fake)  # type: ignore[arg-type]

    monkeypatch.setattr(sdk.cli, "_client", lambda args, local=False: Session())
    out = tmp_path / "page.html"
    assert sdk.cli.main(["report", job.id, "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert "class_filters/heatmap.png" in images(out.read_text())
    assert sdk.cli.main(["report", job.id, "-o", str(tmp_path / "beside.html"), "--beside"]) == 0
    assert (tmp_path / "beside_files" / job.id / "class_filters" / "heatmap.png").read_bytes() == files["class_filters/heatmap.png"]


class CountingClient(FakeClient):
    """Also downloads, and counts what it reads from the 'service'."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: list[str] = []

    def read_artifact(self, job_id: str, name: str) -> bytes:
        self.reads.append(name)
        return super().read_artifact(job_id, name)

    def download_artifact(self, job_id: str, name: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self.read_artifact(job_id, name))
        return dest


def test_a_report_after_a_download_reads_the_local_copies_and_refetches_a_tampered_one(tmp_path: Path) -> None:
    job, files = make_job({"class_filters": class_filters_outcome()})
    client = CountingClient(files, description())
    result = Result(job, client)  # type: ignore[arg-type]
    result.download(tmp_path / "out")
    assert sorted(client.reads) == sorted(files)
    client.reads.clear()
    (tmp_path / "out" / "class_filters" / "heatmap.png").write_bytes(b"edited by hand")
    html = result.save_report(tmp_path / "report.html").read_text()
    assert client.reads == ["class_filters/heatmap.png"], "only the tampered copy is fetched again"
    shown = images(html)
    assert base64.b64decode(shown["class_filters/heatmap.png"].split(",", 1)[1]) == files["class_filters/heatmap.png"]
    assert base64.b64decode(shown["class_filters/subset_sizes.png"].split(",", 1)[1]) == files["class_filters/subset_sizes.png"]


# ---------------------------------------------------------------------- issue 16: verdicts, no empty plots, identity, legibility
def kernel_viz_outcome(canvas: int = 5) -> tuple[dict[str, Any], dict[str, bytes]]:
    from tests.sdk.test_gate import kernel_viz_summary

    summary = kernel_viz_summary({"conv1": [3]})
    summary["layers"][0]["canvas"] = [canvas, canvas, canvas]
    files = {"kernel_viz/conv1/contact_sheet.png": png((9, 9, 9), 40)}
    for c in range(4):
        files[f"kernel_viz/conv1/ch{c:03d}_texture.png"] = png((50 * c, 90, 90), canvas)
        files[f"kernel_viz/conv1/ch{c:03d}_video.gif"] = gif(3, canvas)
        files[f"kernel_viz/conv1/ch{c:03d}_flow.gif"] = gif(2, canvas)
    return summary, files


def tconv_outcome() -> tuple[dict[str, Any], dict[str, bytes]]:
    """An ordinary C3D's tconv_stats: 112 fitted filters over two layers, none below the threshold."""
    from tests.sdk.test_gate import tconv_summary

    summary = tconv_summary({"conv1": (0.61, 48, 0), "conv2": (0.7, 64, 2)})
    summary["layers"][0]["residual"]["plain"]["min"] = 0.48
    summary["layers"][1]["residual"]["plain"]["min"] = 0.52
    summary["layers"][0]["artifacts"] = ["tconv_stats/conv1_residuals.png"]
    return summary, {"tconv_stats/conv1_residuals.png": png((1, 2, 3)), "tconv_stats/tconv_stats.json": json.dumps(summary).encode()}


def section(html: str, kind: str) -> str:
    start = html.index(f'data-section="{kind}"')
    end = html.find("<section ", start)
    return html[start : end if end > 0 else len(html)]


def test_the_page_leads_with_verdicts_in_plain_words(tmp_path: Path) -> None:
    job, files = make_job({"kernel_viz": kernel_viz_outcome(), "tconv_stats": tconv_outcome(), "class_filters": class_filters_outcome()})
    html = write_report([Result(job, FakeClient(files, description()))], tmp_path / "r.html").read_text()  # type: ignore[arg-type]
    assert sections(html)[0][1] == "verdicts"
    glance = section(html, "verdicts")
    verdict = {t: text for t, text in re.findall(r'<li class="verdict \w+"[^>]*? data-task="(\w+)">.*?</strong>: (.*?)</li>', glance)}
    assert verdict["tconv_stats"].startswith("0 of 110 fitted filters 3T-explainable (plain fit); best residual 0.48, threshold 0.2")
    assert "2 all-zero filters" in verdict["tconv_stats"]
    assert verdict["kernel_viz"].startswith("conv1: 3 of 4 channels live, 1 dead; 3 prefer motion, most often down ↓ (3 of 3)")
    assert "accuracy 0.75 vs 0.9 for the full model (83.3 % retained)" in verdict["class_filters"]


def test_tconv_on_an_ordinary_cnn_draws_no_empty_plot(tmp_path: Path) -> None:
    job, files = make_job({"tconv_stats": tconv_outcome()})
    html = write_report([Result(job, FakeClient(files, description()))], tmp_path / "r.html").read_text()  # type: ignore[arg-type]
    tconv = section(html, "tconv_stats")
    assert "<svg" not in tconv, "no chart is drawn from an empty direction histogram"
    assert "near identity" not in tconv and "dominant direction" not in tconv, "no columns that could only hold dashes"
    assert "0 of 48 fitted filters 3T-explainable; best residual 0.48, threshold 0.2." in tconv
    assert "no scale, rotation or translation to plot" in tconv
    assert "tconv_stats/conv1_residuals.png" in images(html), "the residuals figure is still shown"
    # a layer with motion statistics gets its direction chart
    summary, files = tconv_outcome()
    summary["layers"][0]["filters_included"] = 3
    summary["layers"][0]["direction_histogram"] = [1.0] + [0.0] * 11
    job, files = make_job({"tconv_stats": (summary, files)})
    html = write_report([Result(job, FakeClient(files, description()))], tmp_path / "r2.html").read_text()  # type: ignore[arg-type]
    assert section(html, "tconv_stats").count("<svg") == 1 and "conv1: displacement direction" in html


def test_the_page_names_the_model_and_the_input_spec_or_warns(tmp_path: Path) -> None:
    job, files = make_job({"class_filters": class_filters_outcome()})
    client = FakeClient(files, description())
    client.record = models_pb2.Model(id="mdl_model", name="c3d_demo.pt2", sha256="ab" * 32, size_bytes=1234, format=models_pb2.TORCH_EXPORT)
    job.model_name = "c3d_demo.pt2"
    job.input_spec.value_max = 1.0  # recorded, without mean/std
    html = write_report([Result(job, client)], tmp_path / "r.html").read_text()  # type: ignore[arg-type]
    model = section(html, "model")
    assert "c3d_demo.pt2" in model and "ab" * 32 in model and "TORCH_EXPORT" in model
    assert "c3d_demo.pt2 (mdl_model)" in section(html, "job")
    assert 'data-warning="no-input-spec"' in section(html, "verdicts") and "none given" in model
    job.input_spec.mean.extend([0.5] * 3)
    job.input_spec.std.extend([0.25] * 3)
    html = write_report([Result(job, client)], tmp_path / "r2.html").read_text()  # type: ignore[arg-type]
    assert "no-input-spec" not in html and "0.5, 0.5, 0.5" in section(html, "model")
    # the service's own warnings, when the job carries them, are shown as written
    job.warnings.append("no mean/std given: kernel_viz optimised raw [0, 1] clips")
    html = write_report([Result(job, client)], tmp_path / "r3.html").read_text()  # type: ignore[arg-type]
    assert "no mean/std given: kernel_viz optimised raw [0, 1] clips" in section(html, "verdicts")


@pytest.mark.parametrize("canvas", [5, 40])
def test_contact_sheets_are_upscaled_with_nearest_neighbour_and_captioned_per_channel(tmp_path: Path, canvas: int) -> None:
    job, files = make_job({"kernel_viz": kernel_viz_outcome(canvas)})
    html = write_report([Result(job, FakeClient(files, description()))], tmp_path / "r.html").read_text()  # type: ignore[arg-type]
    viz = section(html, "kernel_viz")
    size = int(re.search(r'class="sheet-grid" style="--px:(\d+)px"', viz).group(1))  # type: ignore[union-attr]
    assert size >= 100 and size % canvas == 0, "an integer multiple of the canvas: every model pixel the same block"
    assert "img.px{width:var(--px);height:var(--px);object-fit:contain;image-rendering:pixelated" in html
    cells = re.findall(r'<figure class="cell" id="kv-conv1-(\d)"><div class="panels">(.*?)</div><figcaption>(.*?)</figcaption></figure>', viz)
    assert [c[0] for c in cells] == ["0", "1", "2", "3"]
    assert all(c[1].count('class="px"') == 3 for c in cells), "video, texture and flow of each channel"
    assert cells[0][2] == "channel 0 · down ↓ 90° · 0.5 px/frame" and "dead" in cells[3][2]
    wheel = re.search(r'<svg class="chart wheel".*?</svg>', viz).group(0)  # type: ignore[union-attr]
    assert int(re.search(r'height="(\d+)"', wheel).group(1)) >= 120  # type: ignore[union-attr]
    assert all(label in wheel for label in ("0° right", "90° down", "left 180°", "270° up"))


def test_tables_are_not_scroll_boxes_and_columns_are_explained(tmp_path: Path) -> None:
    job, files = make_job({"class_filters": class_filters_outcome(), "kernel_viz": kernel_viz_outcome()})
    html = write_report([Result(job, FakeClient(files, description()))], tmp_path / "r.html").read_text()  # type: ignore[arg-type]
    css = html[html.index("<style>") : html.index("</style>")]
    rules: dict[str, str] = {}
    for selector, body in re.findall(r"([^{}]+)\{([^{}]*)\}", css.split("@media print")[0]):
        rules.setdefault(selector.strip(), body)
    assert rules[".table-wrap"] == "overflow-x:auto", "tables grow with their rows: no scroll box"
    assert "max-height" not in rules["table.data thead th"] and "@media print" in css
    per_class = section(html, "class_filters")
    legend = dict(re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", per_class))
    assert "removed from the layer" in legend["drop: subset ablated"]
    assert "Jaccard overlap |A ∩ B| / |A ∪ B|" in legend["bootstrap Jaccard"]
    assert '<th scope="col" title="' in per_class


def test_every_artifact_is_linked(tmp_path: Path) -> None:
    job, files = make_job({"class_filters": class_filters_outcome()})
    html = write_report([Result(job, FakeClient(files, description()))], tmp_path / "r.html").read_text()  # type: ignore[arg-type]
    table = section(html, "artifacts")
    links = dict((name, href) for href, name in re.findall(r'<a href="([^"]+)"[^>]*>([^<]+)</a>', table))
    assert set(links) == set(files)
    anchor = links["class_filters/heatmap.png"]
    assert anchor.startswith("#art-") and f'id="{anchor[1:]}"' in html
    npz = links["class_filters/matrices.npz"]
    assert base64.b64decode(npz.split(",", 1)[1]) == files["class_filters/matrices.npz"] and 'download="matrices.npz"' in table
    beside = write_report([Result(job, FakeClient(files, description()))], tmp_path / "b" / "r.html", embed=False)
    links = dict((name, href) for href, name in re.findall(r'<a href="([^"]+)"[^>]*>([^<]+)</a>', section(beside.read_text(), "artifacts")))
    assert (beside.parent / links["class_filters/matrices.npz"]).read_bytes() == files["class_filters/matrices.npz"]


def test_a_result_renders_in_a_notebook() -> None:
    job, files = make_job({"tconv_stats": tconv_outcome()})
    client = FakeClient(files, description())
    html = Result(job, client)._repr_html_()  # type: ignore[arg-type]
    assert html.startswith('<div class="kernelscope-result">') and "0 of 110 fitted filters 3T-explainable" in html
    assert "<img" not in html and client.described == [], "no images, no service calls"
    style = html[html.index("<style>") + 7 : html.index("</style>")]
    assert all(rule.startswith(".kernelscope-result") for rule in style.split("}") if rule), "styles scoped to the cell"


@pytest.mark.parametrize("suffix, magic", [(".mp4", b"ftyp"), (".webm", b"\x1a\x45\xdf\xa3")])
def test_videos_export_as_mp4_and_webm(tmp_path: Path, suffix: str, magic: bytes) -> None:
    pytest.importorskip("imageio_ffmpeg", reason="imageio-ffmpeg ships the encoder (pip install imageio-ffmpeg)")
    job, files = make_job({"kernel_viz": kernel_viz_outcome(canvas=5)})
    result = Result(job, FakeClient(files, description()))  # type: ignore[arg-type]
    paths = result.export_videos(tmp_path, format=suffix[1:])
    assert len(paths) == 8 and all(p.suffix == suffix for p in paths)
    data = paths[0].read_bytes()
    assert magic in data[:64]
    probe = subprocess_frames(paths[0])
    assert probe["width"] == probe["height"] == 260 and probe["frames"] >= 3, probe  # 5 px × 52, nearest neighbour, looped
    with pytest.raises(ValueError, match="not a video"):
        result.export_video("kernel_viz/conv1/ch000_texture.png", tmp_path / "x.mp4")


def subprocess_frames(path: Path) -> dict[str, int]:
    """Width, height and decoded frame count of a video, read back with the same ffmpeg."""
    import subprocess

    from sdk.video import ffmpeg

    done = subprocess.run([ffmpeg(), "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, timeout=120)
    size = re.search(r", (\d+)x(\d+)", done.stderr.decode(errors="replace"))
    assert size, done.stderr[-800:]
    width, height = int(size.group(1)), int(size.group(2))
    return {"width": width, "height": height, "frames": len(done.stdout) // (width * height * 3)}


def test_kernel_viz_verdict_does_not_pick_one_of_tied_directions() -> None:
    from sdk.report import verdicts

    def channel(i: int, angle: float | None) -> dict[str, Any]:
        return {"index": i, "dead": False, "direction_deg": angle, "speed_px_per_frame": None if angle is None else 1.0}

    def verdict(angles: list[float | None]) -> str:
        job, _ = make_job({"kernel_viz": ({"layers": [{"name": "c", "channels": [channel(i, a) for i, a in enumerate(angles)]}]}, {})})
        return verdicts(Result(job, FakeClient({})))[0].text  # type: ignore[arg-type]

    assert "as often down-right ↘ as left ← (1 each)" in verdict([180.0, 45.0, None])
    assert "in 8 different directions" in verdict([45.0 * i for i in range(8)])
    assert "most often up ↑ (2 of 3)" in verdict([270.0, 268.0, 0.0])
    assert verdict([None, None]).endswith("none prefers a significant motion (static or noise-like patterns)")


def test_tconv_verdicts_for_3tconv_and_unanalysed_layers() -> None:
    from sdk.report import verdicts

    summary, _ = tconv_outcome()
    tconv = {**summary["layers"][0], "name": "block.t", "kind": "TConv3d", "layer_kind": "TConv3d", "filters": 16, "filters_included": 16,
             "dominant_direction_deg": 88.0, "dominant_direction_share": 0.4, "near_identity_share": 0.125}
    skipped = {"name": "block.temporal", "kind": "temporal_only", "layer_kind": "Conv3d", "analysed": False, "filters": 8, "filters_included": 0,
               "kernel_shape": [8, 8, 3, 1, 1], "stride_px_model": None, "artifacts": [], "note": "1x1 spatial kernel"}
    summary["layers"] = [tconv, skipped]
    job, _ = make_job({"tconv_stats": (summary, {})})
    found = [v.text for v in verdicts(Result(job, FakeClient({})))]  # type: ignore[arg-type]
    assert found == [
        "block.t: 3TConv layer, 16 filters read; dominant motion down ↓ (40 % of filters); 12.5 % near identity",
        "1 layer(s) listed but not analysed (temporal_only): block.temporal",
    ]


def test_embedded_download_links_stop_at_a_total_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sdk.report.artifacts

    monkeypatch.setattr(sdk.report.artifacts, "_LINK_INLINE_TOTAL", 150)
    blobs = {f"class_filters/part{i}.npz": bytes([i]) * 60 for i in range(4)}
    job, files = make_job({"class_filters": (class_filters_summary(), blobs)})
    html = write_report([Result(job, FakeClient(files, description()))], tmp_path / "r.html").read_text()  # type: ignore[arg-type]
    table = section(html, "artifacts")
    assert table.count('href="data:') == 2, "two of 60 bytes fit in 150; the rest name the command"
    assert table.count("kernelscope download</code>") == 2
