"""HTML pieces every report section is built from: tables, key-value lists, figures, number formatting.

Why here: the page framework and each plugin's section write the same markup; one definition keeps the
pages' look (and the browser test's selectors) in one place.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any, Iterable, Sequence


class Html(str):
    """Markup that table cells insert as-is (everything else is escaped)."""


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, sortable: bool = True, cls: str = "", notes: dict[str, str] | None = None) -> str:
    """An HTML table; numbers are right-aligned, formatted, and sort numerically (data-sort).

    `notes` explain column headings: shown on hover and, for print and for readers who do not hover,
    as a list of definitions under the table.
    """
    notes = notes or {}
    head = "".join(
        f'<th scope="col" title="{escape(notes[h])}" class="explained">{escape(h)}</th>' if h in notes else f'<th scope="col">{escape(h)}</th>'
        for h in headers
    )
    body = []
    for row in rows:
        cells = []
        for value in row:
            if isinstance(value, Html):
                cells.append(f"<td>{value}</td>")
            elif isinstance(value, bool):
                cells.append(f'<td data-sort="{int(value)}">{"yes" if value else "no"}</td>')
            elif isinstance(value, (int, float)):
                sort = value if math.isfinite(value) else ""
                cells.append(f'<td class="num" data-sort="{sort}">{escape(fmt(value))}</td>')
            elif value is None:
                cells.append('<td class="num" data-sort="">—</td>')
            else:  # text, and lists joined by fmt
                cells.append(f"<td>{escape(fmt(value))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    classes = " ".join(c for c in ("data", "sortable" if sortable else "", cls) if c)
    hint = '<p class="muted small">Click a column heading to sort.</p>' if sortable and len(body) > 3 else ""
    legend = "".join(f"<dt>{escape(h)}</dt><dd>{escape(notes[h])}</dd>" for h in headers if h in notes)
    legend = f'<dl class="legend">{legend}</dl>' if legend else ""
    return f'{hint}<div class="table-wrap"><table class="{classes}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>{legend}'


def fmt(value: Any, digits: int = 4) -> str:
    """A value as the page shows it: 4 significant digits, scientific notation only for very large or small numbers."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v, digits) for v in value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def kv(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column table of label: value, leaving out the pairs whose value is None (unknown, not zero)."""
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(fmt(v))}</td></tr>" for k, v in pairs if v is not None)
    return f'<table class="kv"><tbody>{rows}</tbody></table>' if rows else ""


def figure(inner: str, caption: str = "") -> str:
    """One image or chart with its caption."""
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return f'<figure class="fig">{inner}{cap}</figure>'


def grid(figures: Iterable[str]) -> str:
    """Figures side by side, wrapping on narrow screens."""
    return f'<div class="figures">{"".join(figures)}</div>'
