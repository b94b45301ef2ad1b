"""Preflight throughput and peak memory over a generated recipient file.

Usage: ``python bench/preflight_bench.py [ROWS ...] [--keep DIR]`` (default: 1000000
5000000). For each size it writes a CSV (six template variables) and a campaign with a
~3 KB HTML template (a loop and a condition), then runs ``preflight`` in a fresh
subprocess and prints rows/s (wall clock, and per CPU-second, which other load on the
machine does not distort) and that process's peak RSS. A last line measures full
rendering (``iter_rows`` with the text part generated from HTML by inscriptis) over
the first 20,000 rows, the per-row cost a run pays at send time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

FILLER = "".join(
    f"<tr><td style='padding:8px;border-bottom:1px solid #eee'>Section {i}: seasonal notes,"
    " offers and reading for our members.</td></tr>\n"
    for i in range(22)
)
HTML = f"""<!doctype html>
<html><body style="font-family: Georgia, serif; max-width: 640px">
<h1>Hello {{{{ first_name }}}} {{{{ last_name }}}},</h1>
<p>Here is your monthly update for {{{{ city }}}}.</p>
{{% if plan == "pro" %}}<p>As a pro member you have <b>{{{{ points }}}}</b> points.</p>
{{% else %}}<p>Upgrade to pro to collect points.</p>{{% endif %}}
<ul>{{% for topic in interests.split(";") %}}
<li>Our guide to {{{{ topic }}}}</li>{{% endfor %}}</ul>
<table>{FILLER}</table>
<p><a href="https://example.com/u?e={{{{ email | urlencode }}}}">Unsubscribe</a></p>
</body></html>
"""
CAMPAIGN = """\
provider = "tosend"
[source]
path = "recipients.csv"
[columns]
name = "last_name"
[sender]
email = "news@example.com"
[message]
subject = "{{ first_name }}, your {{ city }} update"
html_file = "news.html.j2"
"""
CHILD = """
import json, resource, sys, time
from batchsend.campaign import load_campaign
from batchsend.preflight import iter_rows, preflight
campaign = load_campaign(sys.argv[1])
start = time.perf_counter()
if sys.argv[2] == "preflight":
    report = preflight(campaign)
    rows, ok = report.rows, report.ok
else:
    rows, ok = 0, True
    for r in iter_rows(campaign):
        rows += 1
        ok = ok and r.message is not None and bool(r.message.text)
        if rows == int(sys.argv[3]):
            break
elapsed = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu = usage.ru_utime + usage.ru_stime
print(json.dumps({"rows": rows, "seconds": elapsed, "cpu": cpu, "peak_mb": usage.ru_maxrss / 1024,
                  "ok": ok}))
"""


def write_inputs(folder: Path, rows: int) -> None:
    cities = ["Lisbon", "Porto", "Berlin", "Oslo", "Austin", "Kyoto", "Lagos", "Lima"]
    topics = ["roses;herbs", "compost", "bulbs;citrus;orchids", "tomatoes;herbs"]
    chunk = 1_000_000
    with (folder / "recipients.csv").open("wb") as fh:
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            i = pl.col("i")
            frame = pl.DataFrame({"i": pl.int_range(start, start + n, eager=True)}).select(
                email=pl.format("user{}@domain{}.example.com", i, i % 500),
                first_name=pl.format("First{}", i % 9973),
                last_name=pl.format("Last{}", i % 7919),
                city=pl.lit(pl.Series(cities)).gather(i % len(cities)),
                plan=pl.when(i % 3 == 0).then(pl.lit("pro")).otherwise(pl.lit("free")),
                points=(i * 7) % 5000,
                interests=pl.lit(pl.Series(topics)).gather(i % len(topics)),
            )
            frame.write_csv(fh, include_header=start == 0)
    (folder / "news.html.j2").write_text(HTML, encoding="utf-8")
    (folder / "campaign.toml").write_text(CAMPAIGN, encoding="utf-8")


def run_child(folder: Path, mode: str, limit: int = 0) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder / "campaign.toml"), mode, str(limit)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv if a.isdigit()] or [1_000_000, 5_000_000]
    print(f"template: {len(HTML)} bytes of HTML, 6 variables, a loop and a condition")
    for rows in sizes:
        with tempfile.TemporaryDirectory(prefix="batchsend-bench-") as tmp:
            folder = Path(tmp)
            t = time.perf_counter()
            write_inputs(folder, rows)
            size_mb = (folder / "recipients.csv").stat().st_size / 1e6
            print(f"{rows:>10,} rows: wrote {size_mb:.0f} MB CSV in {time.perf_counter() - t:.1f}s")
            result = run_child(folder, "preflight")
            assert result["rows"] == rows and result["ok"], result
            print(
                f"{rows:>10,} rows: preflight {result['seconds']:.1f}s,"
                f" {rows / result['seconds']:,.0f} rows/s wall,"
                f" {rows / result['cpu']:,.0f} rows per CPU-second (all threads, incl. start-up),"
                f" peak RSS {result['peak_mb']:.0f} MB"
            )
            if rows == sizes[0]:
                full = run_child(folder, "render", 20_000)
                print(
                    f"{full['rows']:>10,} rows: full render incl. HTML->text (inscriptis)"
                    f" {full['rows'] / full['seconds']:,.0f} rows/s"
                )


if __name__ == "__main__":
    main(sys.argv[1:])
