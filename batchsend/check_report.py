"""The check report: a preflight's :class:`~batchsend.preflight.PreflightReport` as
``batchsend check`` prints it, problems grouped by cause, then the counts.
"""

from __future__ import annotations

import re

from batchsend.preflight import PreflightReport


def format_report(report: PreflightReport, *, max_rows_listed: int = 20) -> str:
    """The report as ``batchsend check`` prints it: problems grouped, then the counts."""
    lines: list[str] = []
    groups: dict[tuple[str | None, str], list[int]] = {}
    fixes: dict[tuple[str | None, str], str | None] = {}
    first: dict[tuple[str | None, str], str] = {}
    for p in report.problems:
        # Group on the message without the row's own value, so equal causes gather; the
        # first row's own message is shown, so the value that is wrong can be seen.
        key = (p.column, re.sub(r"'[^']*'", "'…'", p.message, count=1))
        groups.setdefault(key, []).append(p.row or 0)
        fixes.setdefault(key, p.fix)
        first.setdefault(key, p.message)
    for (column, message), rows in groups.items():
        shown = ", ".join(str(r) for r in rows[:max_rows_listed])
        more = f" and {len(rows) - max_rows_listed} more" if len(rows) > max_rows_listed else ""
        where = f"column {column!r}" if column else "row"
        example = first[(column, message)]
        if len(rows) > 1 and example != message:
            example += f" (row {rows[0]}; the others alike)"
        lines.append(f"{where}: {example}")
        lines.append(f"  rows {shown}{more}")
        if fixes[(column, message)]:
            lines.append(f"  fix: {fixes[(column, message)]}")
    if report.problem_count > len(report.problems):
        lines.append(
            f"... {report.problem_count - len(report.problems)} more problems not listed"
            " (use --errors FILE for all)"
        )
    lines.extend(report.warnings)
    skipped = ", ".join(f"{k} {v}" for k, v in report.skipped_by_reason.items()) or "none"
    lines.append(
        f"rows {report.rows}, sendable {report.sendable}, skipped: {skipped},"
        f" estimated requests {report.estimated_requests}"
    )
    lines.extend(report.notes)
    lines.append("ok: nothing wrong" if report.ok else f"{report.problem_count} problem(s)")
    return "\n".join(lines)
