"""HTML reports: one self-contained page per job (sdk.report.page), built from the page framework here and
one section per task from its plugin (sdk.plugins).

    from sdk.report import write_report, notebook_html, verdicts

Modules: page (the page and its task sections' frame), job (job-level sections), artifacts (the artifact
table), assets (artifact bytes as image sources), html (tables, figures, formatting), charts (inline SVG charts
drawn from the summaries), style (CSS and script).
The gate's page is sdk.gate.html.
"""

from sdk.findings import verdicts
from sdk.report import charts
from sdk.plugins.base import Verdict
from sdk.report.assets import IMAGE_TYPES
from sdk.report.html import Html, fmt, table
from sdk.report.page import TASK_TITLES, notebook_html, write_report

__all__ = ["charts", "write_report", "notebook_html", "verdicts", "Verdict", "TASK_TITLES", "IMAGE_TYPES", "Html", "table", "fmt"]
