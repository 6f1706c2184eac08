"""CI gates on analysis results: a TOML policy of checks on named metrics, judged pass / warn / fail.

    policy = Policy.load("gate.toml")               # PolicyError for anything malformed (exit 2)
    report = run_gate(client, "model.pt2", policy, baseline="old.pt2")
    report.exit_code()                               # 0 pass, 1 gate failed

A check names one metric of the catalogue (sdk.metrics) and bounds it absolutely (`max`, `min`,
`warn_max`, `warn_min`) or against the same metric of a baseline model (`max_regression`,
`warn_regression`: the largest allowed relative worsening, 0.1 = 10 % worse, in the direction the
catalogue calls worse). Each check ends in one of

    pass   within every bound
    warn   past a warn_* bound only (fails the gate with fail_on = "warning")
    fail   past a failing bound
    error  could not run: the task failed, the metric is absent, the baseline has no value
    skip   a baseline check without a baseline model

`could_not_run = "fail"` (default) makes an error fail the gate: a gate that cannot look must not pass.
A paired metric (tconv_stats.direction_agreement, kernel_viz.direction_agreement) compares the model
with the baseline filter by filter, so `min` bounds it against the baseline (skip without one): a
model whose kernels were time-reversed keeps its accuracy but scores −1.

Modules: policy (parsing), judge (judging, in exact decimals), run (submitting and awaiting both jobs),
verdict (CheckResult, GateReport), status, numbers (how values are written), and one module per output:
json_report, junit, annotations (GitHub workflow commands), markdown (the step summary), text, html
(the gate's page). Each output names the models by file. examples/gate.toml documents every key.
"""

from sdk.gate.json_report import REPORT_SCHEMA
from sdk.gate.judge import evaluate
from sdk.gate.policy import POLICY_VERSION, Check, Policy, PolicyError
from sdk.gate.run import model_label, run_gate
from sdk.gate.status import ERROR, FAIL, PASS, SKIP, WARN
from sdk.gate.verdict import CheckResult, GateReport

__all__ = [
    "Policy", "Check", "CheckResult", "GateReport", "PolicyError", "evaluate", "run_gate", "model_label",
    "POLICY_VERSION", "REPORT_SCHEMA", "PASS", "WARN", "FAIL", "ERROR", "SKIP",
]
