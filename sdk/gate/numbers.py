"""How the gate writes numbers: enough digits to tell a value from its bound, and JSON without NaN or infinity.

Why: "0.8 < min 0.8" is a message nobody can act on; every output format (text, JSON, JUnit, Markdown, HTML)
writes values and bounds through these.
"""

from __future__ import annotations

import math


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def fmt_apart(value: float, other: float | None) -> str:
    """`value` with as many digits as it takes not to read the same as `other` when they differ
    (never "0.8 < min 0.8")."""
    if other is None or value == other or not (math.isfinite(value) and math.isfinite(other)):
        return fmt(value)
    for digits in range(4, 18):
        mine, theirs = f"{value:.{digits}g}", f"{other:.{digits}g}"
        if mine != theirs:
            return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else mine
    return repr(value)


def pct_apart(share: float, other: float | None) -> str:
    """A share as a percentage, with the digits it takes to differ from `other` (5.04 %, not 5.0 %, against 5 %)."""
    if math.isinf(share):
        return "infinitely"
    if other is None or math.isinf(other) or share == other:
        return f"{share * 100:g}%"
    for digits in range(2, 18):
        mine, theirs = f"{share * 100:.{digits}g}", f"{other * 100:.{digits}g}"
        if mine != theirs:
            return f"{mine}%"
    return f"{share * 100!r}%"


def json_number(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def json_metrics(values: dict[str, dict[str, float | None]] | None) -> dict[str, dict[str, float | None]]:
    return {t: {k: json_number(v) for k, v in m.items()} for t, m in (values or {}).items()}
