"""The one-page HTML summary of a run: counts, top failure reasons, a chart over time.

:func:`render_html` is pure: a :class:`batchsend.summary.RunSummary` in, one HTML
document out. The page is self-contained -- inline CSS, an inline SVG chart drawn here,
no script, no font, no image fetched -- and its Content-Security-Policy forbids any
network access, so opening it from an email attachment or a shared drive leaks nothing.
Every value from the store is HTML-escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from batchsend.next_steps import PROOF_SENT, NextStep, proof_note
from batchsend.states import RecipientState
from batchsend.store import RunInfo
from batchsend.summary import (
    BOUNCE_LIMIT,
    COMPLAINT_LIMIT,
    Engagement,
    ReasonCount,
    RunSummary,
    TimeBucket,
)

__all__ = ["render_html", "timeline_svg"]

# One colour per recipient state, the same in the bar and the table.
STATE_COLOURS = {
    RecipientState.SENT.value: "#2e7d32",
    RecipientState.FAILED.value: "#c62828",
    RecipientState.SKIPPED.value: "#9e9e9e",
    RecipientState.UNKNOWN.value: "#ef6c00",
    RecipientState.SENDING.value: "#1565c0",
    RecipientState.PENDING.value: "#cfd8dc",
}
RATE_COLOUR = "#1565c0"
RETRY_COLOUR = "#ef6c00"

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#212121;
margin:24px auto;max-width:980px;padding:0 16px;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.meta{color:#555;margin:0 0 12px}.meta code{background:#f3f3f3;padding:1px 4px}
.state{display:inline-block;padding:2px 8px;border-radius:10px;color:#fff;font-weight:600}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 8px;
border-bottom:1px solid #e0e0e0;vertical-align:top}td.n,th.n{text-align:right;
font-variant-numeric:tabular-nums}.swatch{display:inline-block;width:10px;height:10px;
margin-right:6px;border-radius:2px}.bar{display:flex;height:22px;border-radius:4px;
overflow:hidden;background:#eceff1;margin:8px 0}.bar span{display:block;height:100%}
.note{color:#666;font-size:13px}.warn{background:#fff3e0;border-left:4px solid #ef6c00;
padding:8px 12px}.fatal{background:#ffebee;border-left:4px solid #c62828;padding:8px 12px}
svg text{font:11px system-ui,sans-serif;fill:#444}
"""

_RUN_STATE_COLOURS = {
    "finished": "#2e7d32",
    "running": "#1565c0",
    "interrupted": "#ef6c00",
    "fatal": "#c62828",
}
# "finished with N failed / M unknown": never the green of a clean finish.
FINISHED_WITH_ROWS_LEFT_COLOUR = "#ef6c00"


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value`` (1, 2, 2.5 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def _fmt(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:,.1f}" if value >= 10 else f"{value:,.2f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def timeline_svg(buckets: Sequence[TimeBucket], *, width: int = 900, height: int = 260) -> str:
    """An SVG chart: recipients accepted per second (line, left axis) and retries per
    slice of time (bars, right axis), over the run's attempts."""
    if not buckets:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="60" '
            'role="img" aria-label="no attempts"><text x="8" y="30">No HTTP attempt was '
            "recorded for this run (nothing was sent, or a dry run).</text></svg>"
        )
    left, right, top, bottom = 64, 60, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    n = len(buckets)
    span = buckets[-1].start + buckets[-1].width
    rate_max = _nice_max(max(b.rate for b in buckets))
    retry_max = _nice_max(max(b.retries for b in buckets))
    retry_max = 4 * math.ceil(max(retry_max, 4) / 4)  # whole numbers on the retries axis
    slot = plot_w / n

    def x(i: float) -> float:
        return left + i * slot

    def y_rate(v: float) -> float:
        return top + plot_h - v / rate_max * plot_h

    def y_retry(v: float) -> float:
        return top + plot_h - v / retry_max * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        'aria-label="sending rate and retries over time">',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa"/>',
    ]
    for k in range(5):  # horizontal grid and both axes' labels
        frac = k / 4
        gy = top + plot_h - frac * plot_h
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{gy:.1f}" y2="{gy:.1f}" stroke="#e0e0e0"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{gy + 4:.1f}" text-anchor="end">'
            f"{_fmt(rate_max * frac)}</text>"
        )
        parts.append(
            f'<text x="{left + plot_w + 6}" y="{gy + 4:.1f}">{_fmt(retry_max * frac)}</text>'
        )
    for k in range(6):  # time ticks
        frac = k / 5
        tx = left + frac * plot_w
        parts.append(
            f'<text x="{tx:.1f}" y="{top + plot_h + 16}" text-anchor="middle">'
            f"{_duration(span * frac)}</text>"
        )
    for i, b in enumerate(buckets):  # retries: bars
        if b.retries:
            by = y_retry(b.retries)
            parts.append(
                f'<rect x="{x(i) + slot * 0.15:.1f}" y="{by:.1f}" width="{slot * 0.7:.1f}" '
                f'height="{top + plot_h - by:.1f}" fill="{RETRY_COLOUR}" fill-opacity="0.55">'
                f"<title>{_duration(b.start)}: {b.retries} retries</title></rect>"
            )
    points = " ".join(f"{x(i + 0.5):.1f},{y_rate(b.rate):.1f}" for i, b in enumerate(buckets))
    parts.append(
        f'<polyline points="{points}" fill="none" stroke="{RATE_COLOUR}" stroke-width="2.2" '
        'stroke-linejoin="round"/>'
    )
    if n <= 12:  # a short run has a few slices only: a dot each, or one alone shows nothing
        parts += [
            f'<circle cx="{x(i + 0.5):.1f}" cy="{y_rate(b.rate):.1f}" r="3.5" '
            f'fill="{RATE_COLOUR}"><title>{_duration(b.start)}: {_fmt(b.rate)}/s</title></circle>'
            for i, b in enumerate(buckets)
        ]
    parts.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" '
        'stroke="#757575"/>'
    )
    parts.append(
        f'<text x="14" y="{top + plot_h / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.0f})" style="fill:{RATE_COLOUR}">'
        "recipients sent per second</text>"
    )
    rx = width - 12
    parts.append(
        f'<text x="{rx}" y="{top + plot_h / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(90 {rx} {top + plot_h / 2:.0f})" style="fill:{RETRY_COLOUR}">'
        "retries</text>"
    )
    parts.append(
        f'<text x="{left + plot_w / 2:.0f}" y="{height - 6}" text-anchor="middle">'
        "time since the first request</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def _state_names(run: RunInfo) -> dict[str, str]:
    """Each state's name on the page: in a test run, rows sent are proof copies."""
    names = {state: state for state in STATE_COLOURS}
    if run.is_test:
        names[RecipientState.SENT.value] = f"{PROOF_SENT} (to {run.test_to or 'the test address'})"
    return names


def _state_bar(counts: dict[str, int], names: dict[str, str]) -> str:
    total = sum(counts.values())
    if not total:
        return '<div class="bar"></div>'
    spans = []
    for state, colour in STATE_COLOURS.items():
        n = counts.get(state, 0)
        if n:
            spans.append(
                f'<span style="width:{100 * n / total:.3f}%;background:{colour}" '
                f'title="{escape(names[state])}: {n:,}"></span>'
            )
    return f'<div class="bar">{"".join(spans)}</div>'


def _counts_table(counts: dict[str, int], names: dict[str, str]) -> str:
    total = sum(counts.values())
    rows = []
    for state, colour in STATE_COLOURS.items():
        n = counts.get(state, 0)
        share = f"{100 * n / total:.1f}%" if total else "-"
        rows.append(
            f'<tr><td><span class="swatch" style="background:{colour}"></span>'
            f'{escape(names[state])}</td><td class="n">{n:,}</td><td class="n">{share}</td></tr>'
        )
    rows.append(f'<tr><th>total</th><th class="n">{total:,}</th><th></th></tr>')
    return (
        '<table id="counts"><tr><th>state</th><th class="n">rows</th>'
        f'<th class="n">share</th></tr>{"".join(rows)}</table>'
    )


def _reasons_table(reasons: Sequence[ReasonCount]) -> str:
    if not reasons:
        return '<p class="note" id="reasons">No row failed, was skipped or is unknown.</p>'
    rows = []
    for r in reasons:
        status = "" if r.http_status is None else str(r.http_status)
        rows.append(
            f"<tr><td>{escape(r.state)}</td><td>{escape(r.reason)}</td>"
            f"<td>{escape(r.error_type or '')}</td><td>{status}</td>"
            f"<td>{escape(r.example or '')}</td><td class='n'>{r.count:,}</td></tr>"
        )
    return (
        '<table id="reasons"><tr><th>state</th><th>reason</th><th>error type</th>'
        '<th>HTTP</th><th>provider message (example)</th><th class="n">rows</th></tr>'
        f"{''.join(rows)}</table>"
    )


#: What each provider reports after accepting: ToSend's webhooks carry bounces and
#: complaints only, so its funnel cannot show deliveries, opens or clicks.
_REPORTED = {"tosend": {"accepted"}}


def _funnel(e: Engagement | None, provider: str = "") -> str:
    if e is None:
        return (
            '<p class="note" id="funnel">No provider events stored for this run: receive them '
            "with <code>batchsend events serve</code> (or <code>batchsend events pull</code> "
            "on v1) to see deliveries, bounces and complaints here.</p>"
        )
    steps = [
        ("accepted", e.accepted),
        ("delivered", e.delivered),
        ("opened", e.opened),
        ("clicked", e.clicked),
    ]
    top = max(e.accepted, 1)
    shown = _REPORTED.get(provider)
    bars = "".join(
        f'<tr><td>{name}</td><td class="n">{n:,}</td><td class="n">{100 * n / top:.1f}%</td>'
        f'<td style="width:60%"><div class="bar" style="margin:0"><span style="width:'
        f'{min(100.0, 100 * n / top):.1f}%;background:{RATE_COLOUR}"></span></div></td></tr>'
        if shown is None or name in shown
        else f'<tr><td>{name}</td><td class="n" colspan="3">not reported by {escape(provider)}'
        "</td></tr>"
        for name, n in steps
    )

    def rate(label: str, value: float, limit: float, who: str, el: str) -> str:
        over = value >= limit
        style = ' class="warn"' if over else ""
        verdict = "over" if over else "under"
        return (
            f'<p{style} id="{el}">{label} {100 * value:.2f}% ({verdict} the '
            f"{100 * limit:g}% {who})</p>"
        )

    reasons = "".join(
        f"<tr><td>{escape(why)}</td><td class='n'>{n:,}</td></tr>" for why, n in e.bounce_reasons
    )
    reasons_table = (
        '<table id="bounce-reasons"><tr><th>bounce reason</th><th class="n">rows</th></tr>'
        f"{reasons}</table>"
        if reasons
        else ""
    )
    return (
        f'<table id="funnel"><tr><th>step</th><th class="n">recipients</th>'
        f'<th class="n">of accepted</th><th></th></tr>{bars}</table>'
        + rate(
            f"Bounce rate ({e.hard_bounces:,} hard; {e.soft_bounces:,} soft, not counted):",
            e.bounce_rate,
            BOUNCE_LIMIT,
            "at which AWS SES reviews an account",
            "bounce-rate",
        )
        + rate(
            f"Complaint rate ({e.complained:,}):",
            e.complaint_rate,
            COMPLAINT_LIMIT,
            "Gmail and Yahoo require of bulk senders",
            "complaint-rate",
        )
        + reasons_table
    )


def _next_steps(steps: Sequence[NextStep]) -> str:
    if not steps:
        return ""
    items = []
    for step in steps:
        command = f" <code>{escape(step.command)}</code>" if step.command else ""
        warning = f" <strong>Warning: {escape(step.warning)}.</strong>" if step.warning else ""
        if step.fallback:
            warning += (
                "; if the provider cannot be asked and you accept the risk, send them again"
                f" with: <code>{escape(step.fallback)}</code>"
            )
            if step.fallback_warning:
                warning += f" <strong>Warning: {escape(step.fallback_warning)}.</strong>"
        items.append(f"<li>{step.rows:,} {escape(step.advice)}{command}{warning}</li>")
    return (
        '<div class="warn" id="next-steps"><strong>What to do next</strong>'
        f"<ul>{''.join(items)}</ul></div>"
    )


def render_html(summary: RunSummary) -> str:
    """The one-page, self-contained HTML summary of a run."""
    run = summary.listing.run
    state = summary.listing.label
    title = f"batchsend run {run.id}" + (" (test run)" if run.is_test else "")
    title += " (dry run)" if run.dry_run else ""
    kind = []
    if run.is_test:
        kind.append("test run")
    if run.dry_run:
        kind.append("dry run")
    if run.settings.get("sandbox"):
        kind.append("sent to the embedded sandbox: no one was emailed")
    timeline = summary.timeline
    retries = sum(b.retries for b in timeline)
    peak = max((b.rate for b in timeline), default=0.0)
    notes = []
    if run.is_test:
        notes.append(f'<p class="warn" id="test-run">{escape(proof_note(run.test_to))}.</p>')
    if run.dry_run:
        would = summary.would_send
        notes.append(
            f'<p class="warn" id="dry-run">Dry run: {would:,} row{"" if would == 1 else "s"} '
            "would be sent; nothing was sent.</p>"
        )
    if run.fatal_error:
        notes.append(f'<p class="fatal">Stopped on a fatal error: {escape(run.fatal_error)}</p>')
    if summary.listing.resume:
        notes.append(
            '<p class="warn">This run is unfinished. Resume it with '
            f"<code>{escape(summary.listing.resume)}</code></p>"
        )
    notes.append(_next_steps(summary.listing.next_steps))
    names = _state_names(run)
    colour = _RUN_STATE_COLOURS.get(state, "#616161")
    if state != summary.listing.state.value:
        colour = FINISHED_WITH_ROWS_LEFT_COLOUR
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{escape(run.campaign_name or run.campaign_path)}
<span class="state" style="background:{colour}">{escape(state)}</span></h1>
<p class="meta">run <code>{escape(run.id)}</code> · provider {escape(run.provider)}
{" · " + escape(", ".join(kind)) if kind else ""} · started {escape(run.started_at)}
· ended {escape(run.ended_at or "-")} · {run.total_rows or 0:,} rows</p>
{"".join(notes)}
<h2>Recipients by state</h2>
{_state_bar(summary.counts, names)}
{_counts_table(summary.counts, names)}
<h2>After the provider accepted</h2>
{_funnel(summary.engagement, run.provider)}
<h2>Top failure reasons</h2>
{_reasons_table(summary.reasons)}
<h2>Sending rate and retries over time</h2>
<p class="note">{summary.total_attempts:,} HTTP attempts, {retries:,} of them retries;
peak {peak:,.1f} recipients/s. Line: recipients accepted per second (left axis);
bars: retries per slice of time (right axis).</p>
<figure id="timeline" style="margin:0">{timeline_svg(timeline)}</figure>
<p class="note">Generated by batchsend from {escape(summary.db_path)}.</p>
</body></html>
"""
