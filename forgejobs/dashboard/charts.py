"""Per-minute throughput and failures as an inline SVG bar chart (no script, no external asset)."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

from ..metrics import MinuteCount


def minute_bars(minutes: Sequence[MinuteCount], width: int = 300, height: int = 48) -> Markup:
    """One bar per minute, oldest on the left: succeeded jobs stacked under failed attempts (red). Each bar's
    tooltip says its minute (UTC) and counts; the scale (the busiest minute) is in the label."""
    if not minutes:
        return Markup("")
    top = max((m.succeeded + m.failed for m in minutes), default=0) or 1
    step = width / len(minutes)
    bar = max(step - 1, 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="jobs per minute, last {len(minutes)} minutes, busiest {top}">'
    ]
    for i, m in enumerate(minutes):
        x = i * step
        ok_h = m.succeeded / top * (height - 2)
        fail_h = m.failed / top * (height - 2)
        tip = escape(f"{m.minute:%H:%M} UTC: {m.succeeded} succeeded, {m.failed} failed")
        parts.append(f"<g><title>{tip}</title>")
        if ok_h:
            parts.append(
                f'<rect class="ok" x="{x:.1f}" y="{height - ok_h:.1f}" width="{bar:.1f}" height="{ok_h:.1f}"/>'
            )
        if fail_h:
            y = height - ok_h - fail_h
            parts.append(f'<rect class="fail" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{fail_h:.1f}"/>')
        parts.append("</g>")
    parts.append(f'<line class="base" x1="0" y1="{height - 0.5}" x2="{width}" y2="{height - 0.5}"/></svg>')
    return Markup("".join(parts))
