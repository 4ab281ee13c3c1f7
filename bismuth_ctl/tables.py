"""Plain-text rendering for human output: aligned tables and readable quantities."""

from __future__ import annotations

from collections.abc import Sequence


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns left-aligned, two spaces apart; header in capitals; no trailing blanks."""
    cells = [[str(h).upper() for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def format_bytes(size: int) -> str:
    """``134217728`` -> ``128Mi``; binary units, at most one decimal."""
    value = float(size)
    for unit in ("", "Ki", "Mi", "Gi", "Ti"):
        if value < 1024 or unit == "Ti":
            text = f"{value:.1f}".removesuffix(".0")
            return f"{text}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_cpus(cpus: float) -> str:
    """``0.5`` -> ``0.5``, ``4.0`` -> ``4``; at most three decimals."""
    return f"{cpus:.3f}".rstrip("0").rstrip(".") or "0"
