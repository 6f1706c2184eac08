"""Adding a task touches the four files README's "Adding a task" lists, and nothing else: shown, not only listed.

A copy of the project gets a fourth task, `weight_norms` (each conv layer's weight norm), written into exactly
those files: its field in tasks.proto, workers/analyses/weight_norms.py, sdk/schemas/weight_norms.v1.json and
sdk/plugins/weight_norms.py. Then, from that copy, the embedded stack (Redis, the server, a worker, each its own
process) runs it through the SDK: the service accepts it, the worker runs it, and the SDK's CLI help, gate
metric, findings and report all show it. A layer that still needed a hand-kept list would fail here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROTO_MESSAGE = """
// Each conv layer's weight norm (a test's fourth task).
message WeightNormsOptions {
  // How many of the largest layers the summary ranks. Default 3.
  int32 top = 1;
}
"""

PROTO_FIELD = """    WeightNormsOptions weight_norms = 5 [(task) = {
      title: "Weight norms (weight_norms)", schema_version: 1, analysis: true
    }];
"""

ANALYSIS = '''
"""The `weight_norms` task: the Frobenius norm of every conv layer's weight, largest first."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.analysis import Analysis, Outcome
from workers.context import TaskContext
from workers.options import TaskOptions, option


@dataclass(frozen=True)
class Options(TaskOptions):
    TASK = "weight_norms"
    top: int = option(3, "layers ranked in the summary")


class WeightNorms(Analysis[Options]):
    options = Options

    def run(self, ctx: TaskContext, options: Options) -> Outcome:
        norms = {name.removesuffix(".weight"): float(np.linalg.norm(w.detach().cpu().numpy()))
                 for name, w in ctx.model.state_dict.items() if name.endswith(".weight") and w.dim() == 5}
        ranked = sorted(norms, key=norms.get, reverse=True)[: options.top]
        np.savez(ctx.out_dir / "norms.npz", names=np.array(list(norms)), norms=np.array(list(norms.values())))
        ctx.progress("norms", 1.0)
        return Outcome({"layers": [{"name": n, "norm": norms[n]} for n in ranked], "largest": ranked[0]})


ANALYSIS = WeightNorms()
'''

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://kernelscope.dev/schemas/weight_norms/v1.json",
    "type": "object",
    "required": ["layers", "largest"],
    "properties": {
        "layers": {"type": "array", "items": {"type": "object", "required": ["name", "norm"]}},
        "largest": {"type": "string"},
    },
}

PLUGIN = '''
"""weight_norms in the SDK."""

from __future__ import annotations

from html import escape

from sdk import metrics
from sdk.metrics import Metric
from sdk.plugins.base import Figures, Plugin, Summary, Verdict

_METRICS: list[Metric] = []


@metrics.metric(_METRICS, "weight_norms.max_norm", "Largest conv weight norm.", "lower")
def _max_norm(s: Summary, _layer: str | None) -> float | None:
    return max((entry["norm"] for entry in s["layers"]), default=None)


def _figures(s: Summary) -> Figures:
    return {"largest": s["largest"]}


def _lines(f: Figures) -> list[str]:
    return [f"largest weight norm: {f['largest']}"]


def _verdicts(s: Summary) -> list[Verdict]:
    return [Verdict("weight_norms", "ok", f"{len(s['layers'])} layers ranked")]


def _section(outcome, assets) -> str:  # noqa: ANN001
    return f"<p class='weight-norms'>largest: {escape(outcome.summary['largest'])}</p>"


PLUGIN = Plugin(name="weight_norms", option_defaults={"top": "3"}, metrics=tuple(_METRICS), figures=_figures,
                lines=_lines, verdicts=_verdicts, section=_section)
'''

PROBE = '''
import json, sys
from pathlib import Path

import torch

import sdk
from sdk import findings, metrics, tasks
from sdk.report import write_report

out = Path(sys.argv[1])
net = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 3))
with torch.no_grad():
    net[2].weight.mul_(100.0)  # the planted answer: layer "2" has the largest norm
with sdk.Client.local(data_dir=str(out / "stack")) as client:
    result = client.analyze(net, example_input=torch.rand(1, 3, 6, 12, 12), tasks=[{"weight_norms": {"top": 2}}],
                            progress=False)
    names = [a.name for a in result.artifacts]
print(json.dumps({
    "summary": result["weight_norms"],
    "artifacts": names,
    "help": "weight_norms" in tasks.help_text(),
    "metric": metrics.get("weight_norms.max_norm").value(result["weight_norms"]),
    "lines": findings.lines(result),
    "report": write_report(result, out / "report.html").read_text(),
}))
'''


def _add_task(copy: Path) -> None:
    """The four files, and only those."""
    proto = copy / "proto/kernelscope/v1/tasks.proto"
    text = proto.read_text()
    anchor = "\n// What every layer knows of a task"
    assert anchor in text and "    DescribeOptions describe = 4" in text
    text = text.replace(anchor, PROTO_MESSAGE + anchor, 1)
    end = text.index("\n", text.index("DescribeOptions describe = 4")) + 1
    proto.write_text(text[:end] + PROTO_FIELD + text[end:])
    (copy / "workers/analyses/weight_norms.py").write_text(textwrap.dedent(ANALYSIS))
    (copy / "sdk/schemas/weight_norms.v1.json").write_text(json.dumps(SCHEMA, indent=2))
    (copy / "sdk/plugins/weight_norms.py").write_text(textwrap.dedent(PLUGIN))


def test_a_fourth_task_in_the_four_listed_files_runs_through_every_layer(tmp_path: Path) -> None:
    import jsonschema

    copy = tmp_path / "project"
    for part in ("proto", "sdk", "service", "workers", "deploy"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    _add_task(copy)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(copy), str(copy / "proto")])}
    run = lambda *args: subprocess.run([sys.executable, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=300)  # noqa: E731
    generated = run("proto/generate.py")
    assert generated.returncode == 0, generated.stderr[-3000:]
    (tmp_path / "probe.py").write_text(PROBE)
    probe = run(str(tmp_path / "probe.py"), str(tmp_path))
    assert probe.returncode == 0, probe.stderr[-5000:]
    seen = json.loads(probe.stdout.strip().splitlines()[-1])

    summary = seen["summary"]
    assert summary["largest"] == "2" and [entry["name"] for entry in summary["layers"]] == ["2", "0"]  # top=2 reached the worker
    jsonschema.validate(summary, SCHEMA)
    assert "weight_norms/norms.npz" in seen["artifacts"] and "weight_norms/weight_norms.json" in seen["artifacts"]
    assert seen["help"]
    assert seen["metric"] == summary["layers"][0]["norm"] > 0
    assert "largest weight norm: 2" in "\n".join(seen["lines"])
    assert "Weight norms (weight_norms)" in seen["report"] and "<p class='weight-norms'>largest: 2</p>" in seen["report"]
    assert "3 layers ranked" not in seen["report"] and "2 layers ranked" in seen["report"]
