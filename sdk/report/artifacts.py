"""The report's artifact table: every file the job wrote, linked to where the page shows it or to its bytes.

Why budgets: an embedded page carries small non-image artifacts as download links, but a job of many files
must still make a page that can be mailed; past the budget a row names the command that fetches the file.
"""

from __future__ import annotations

import base64
from html import escape
from typing import TYPE_CHECKING, Any

from sdk.report.assets import Assets
from sdk.report.html import Html, fmt, table
from sdk.result import artifact_path

if TYPE_CHECKING:
    from sdk.result import Result

_LINK_INLINE_BYTES = 512 * 1024  # embedded pages carry non-image artifacts up to this size as download links
_LINK_INLINE_TOTAL = 8 * 1024 * 1024  # ... and no more than this in all, so a job of many files keeps a mailable page


def artifact_table(result: "Result", assets: Assets, prefix: str = "") -> str:
    """Every artifact with a link: to where the page shows it, to its file beside the page, or (embedded
    pages) a download of its bytes when small; larger ones name the command that fetches them."""
    rows = []
    for a in result.artifacts:
        rows.append((a.task, Html(_artifact_link(a, assets)), a.media_type, a.size_bytes, a.sha256[:12]))
    if not rows:
        return '<p class="muted">No artifacts.</p>'
    out = (
        f'<p class="muted small">Shown: a link to the figure on this page. Fetch them all with <code>kernelscope download {escape(result.id)} DIR</code> '
        f"or <code>result.download(DIR)</code>.</p>"
    )
    body = table(("task", "name", "type", "bytes", "sha256"), rows)
    out += body if len(rows) <= 40 else f'<details class="more" open><summary>{len(rows)} artifacts</summary>{body}</details>'
    if assets.failed:
        out += '<p class="error">Could not fetch: ' + escape("; ".join(f"{n} ({why})" for n, why in assets.failed.items())) + "</p>"
    return out


def _artifact_link(artifact: Any, assets: Assets) -> str:
    name = escape(artifact.name)
    if artifact.name in assets.anchors:
        return f'<a href="#{assets.anchors[artifact.name]}">{name}</a> <span class="muted small">(shown above)</span>'
    relative = artifact_path(artifact.name)
    if relative is None:
        return f"{name} <span class=\"muted small\">(refused: leaves the job's folder)</span>"
    inline = artifact.size_bytes <= _LINK_INLINE_BYTES and assets.inlined + artifact.size_bytes <= _LINK_INLINE_TOTAL
    if not assets.embed or inline:
        try:
            data = assets.result.read_artifact(artifact.name)
        except Exception as exc:  # noqa: BLE001 - listed as unavailable, with why
            assets.failed[artifact.name] = f"{type(exc).__name__}: {exc}"
            return f"{name} <span class=\"missing\">unavailable</span>"
        if not assets.embed:
            return f'<a href="{escape(assets.write_beside(artifact.name, relative, data))}">{name}</a>'
        media = artifact.media_type or "application/octet-stream"
        assets.inlined += len(data)
        href = f"data:{media};base64,{base64.b64encode(data).decode('ascii')}"
        return f'<a href="{escape(href)}" download="{escape(relative.name)}">{name}</a>'
    size = f"{fmt(artifact.size_bytes / 1e6, 3)} MB" if artifact.size_bytes >= 1e6 else f"{fmt(artifact.size_bytes / 1e3, 3)} kB"
    return f'{name} <span class="muted small">({size}, not embedded: <code>kernelscope download</code>)</span>'


