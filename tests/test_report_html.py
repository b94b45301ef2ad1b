"""The one-page HTML summary: what it says, that it needs no network, and that a real
browser (headless Chromium) renders it."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.campaigns import write_campaign
from support.clock import SteppingClock
from support.runs import Person, build_run
from support.sandboxes import TEST_KEY

from batchsend.cli import main
from batchsend.report import write_report
from batchsend.report_html import RATE_COLOUR, STATE_COLOURS, render_html
from batchsend.states import RunState
from batchsend.store import Store
from batchsend.summary import MIN_BUCKET_SECONDS, read_summary

SCREENSHOT_COPY = Path("/work/notes/report_screenshot.png")


def mixed_people(n: int) -> list[Person]:
    plans = ["sent"] * 13 + ["retried", "retried", "failed", "failed", "exhausted", "skipped"]
    plans.append("sent")
    people = []
    for i in range(n):
        plan = plans[i % len(plans)]
        people.append(
            Person(
                f"user{i}@example.com",
                f"User {i}",
                plan,
                {"customer_id": f"C{i}"},
                reason="duplicate" if i % 3 else "invalid",
                error='Domain "example.net" is not verified' if plan == "failed" else "bad",
            )
        )
    return people


@pytest.fixture
def summary_run(tmp_path: Path) -> tuple[Path, str]:
    db = tmp_path / "b.db"
    with Store(db, now=SteppingClock()) as store:
        run_id = build_run(store, mixed_people(160), campaign_name="Autumn <b>news</b> & more")
    return db, run_id


def test_summary_counts_reasons_and_timeline(summary_run) -> None:
    db, run_id = summary_run
    summary = read_summary(db, run_id)
    assert summary.counts["sent"] + summary.counts["failed"] + summary.counts["skipped"] == 160
    assert summary.counts["failed"] == 24 and summary.counts["skipped"] == 8
    top = summary.reasons[0]
    assert (top.state, top.reason, top.http_status, top.count) == (
        "failed", "validation_error", 422, 16
    )  # fmt: skip
    assert (summary.reasons[1].reason, summary.reasons[1].count) == ("internal_error", 8)
    assert "not verified" in (top.example or "")
    assert {(r.reason, r.count) for r in summary.reasons} >= {("duplicate", 5), ("invalid", 3)}
    # at most 60 slices of one width, a second or more, covering the attempts
    assert 1 <= len(summary.timeline) <= 60
    assert len({b.width for b in summary.timeline}) == 1
    assert summary.timeline[0].width >= MIN_BUCKET_SECONDS
    assert sum(b.accepted for b in summary.timeline) == summary.counts["sent"]
    assert (
        sum(b.retries for b in summary.timeline) == 16 * 2 + 8 * 2
    )  # retried: 2 each, exhausted: 2 each
    assert summary.total_attempts == sum(b.attempts for b in summary.timeline)


def test_page_is_self_contained_and_escaped(summary_run) -> None:
    db, run_id = summary_run
    page = render_html(read_summary(db, run_id))
    assert "<script" not in page.lower()
    assert not re.search(r"(src|href)\s*=", page, re.I)  # nothing to fetch
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", page)  # only the SVG namespace
    assert "default-src 'none'" in page  # and the browser is told to fetch nothing
    assert "Autumn &lt;b&gt;news&lt;/b&gt; &amp; more" in page
    assert "validation_error" in page and "Domain &quot;example.net&quot;" in page
    assert "<svg" in page and "<polyline" in page


def test_unfinished_and_fatal_runs_say_so(tmp_path: Path) -> None:
    db = tmp_path / "b.db"
    with Store(db, now=SteppingClock()) as store:
        run_id = build_run(
            store,
            [Person("a@example.com", plan="pending")],
            final=RunState.FATAL,
            fatal_error="403 invalid_api_key",
        )
    page = write_report(db, run_id, tmp_path / "s.html", format="html").read_text("utf-8")
    assert "Stopped on a fatal error: 403 invalid_api_key" in page
    assert f"batchsend resume {run_id} --db {db}" in page
    assert "No HTTP attempt was recorded" in page


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), env={"BATCHSEND_API_KEY": TEST_KEY})


def test_a_tiny_run_reads_its_real_rate(tmp_path: Path, sandbox, monkeypatch) -> None:
    """Three rows answered within milliseconds are three per second, not hundreds of
    thousands: the chart's slices are a second wide at least."""
    monkeypatch.chdir(tmp_path)
    campaign = write_campaign(tmp_path / "c", rows=3, send={"batch_size": 1})
    sent = _cli("run", str(campaign), "--db", "b.db", "--base-url", sandbox.base_url, "--json")
    assert sent.exit_code == 0, sent.output
    run_id = json.loads(sent.stdout)["run_id"]
    assert _cli("report", run_id, "--db", "b.db", "--out", "s.html").exit_code == 0
    page = (tmp_path / "s.html").read_text("utf-8")
    peak = float(re.search(r"peak ([\d,.]+) recipients/s", page).group(1).replace(",", ""))
    assert 0 < peak <= 3
    svg = page[page.index("<svg") : page.index("</svg>")]
    axis = [float(v.replace(",", "")) for v in re.findall(r'text-anchor="end">([\d,.]+)<', svg)]
    assert max(axis) <= 5  # the rate axis ends at a round number above 3, not 1,000,000


# -- rendering in a real browser ------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "headless Chromium is needed to check the HTML report renders, and it is not "
        "installed: run scripts/test (it installs it), or `apt-get install -y chromium`"
    )


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        rows.append(bytes(line) if channels == 3 else bytes(
            v for j in range(0, stride, 4) for v in line[j : j + 3]
        ))  # fmt: skip
        prev = line
    return width, height, rows


def _rgb(colour: str) -> bytes:
    return bytes.fromhex(colour.lstrip("#"))


def test_chromium_renders_the_page(summary_run, tmp_path: Path) -> None:
    db, run_id = summary_run
    page = write_report(db, run_id, tmp_path / "summary.html", format="html")
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--window-size=1000,1250",
        f"--screenshot={shot}",
        page.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert shot.is_file() and shot.stat().st_size > 0, done.stderr[-2000:]
    width, height, rows = _png_pixels(shot.read_bytes())
    assert (width, height) == (1000, 1250)
    pixels = {row[i : i + 3] for row in rows[::2] for i in range(0, len(row), 6)}
    assert len(pixels) > 20, "the screenshot is blank"
    # the state bar (sent and failed colours) and the rate line are really painted
    for colour in (STATE_COLOURS["sent"], STATE_COLOURS["failed"], RATE_COLOUR):
        assert _rgb(colour) in pixels, f"{colour} is not on the page"
    if SCREENSHOT_COPY.parent.is_dir():  # kept for the report to the team
        shutil.copyfile(shot, SCREENSHOT_COPY)
