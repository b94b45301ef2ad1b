"""The row pass on several worker processes gives the same rows as one, byte for byte.

The file mixes what makes a row pass order-dependent or fallible: duplicates within a
chunk and across chunks (in another case), the duplicate of an invalid row (which must
be sendable: an invalid row does not count), rows the template fails on, addresses on
the campaign's suppression list and on the database's, empty rows, cc lists. Chunks are
made small so that a few hundred rows span many of them and both workers.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from support.campaigns import recipients_in

from batchsend import preflight as pf
from batchsend.campaign import load_campaign
from batchsend.errors import TemplateError
from batchsend.providers.encoder import WireEncoder
from batchsend.run import run_campaign
from batchsend.sandbox import Sandbox
from batchsend.store import Store

ROWS = 420
CHUNK = 40
LISTED = {"user21@example.org": "hard bounce on 2026-12-01"}  # the database's list


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(pf, "CHUNK_ROWS", CHUNK)  # read by the main process, which cuts
    monkeypatch.chdir(tmp_path)


def mixed_campaign(folder: Path, provider: str = "tosend") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["email", "name", "first", "points", "cc"])
    for n in range(1, ROWS + 1):
        email, points, cc = f"user{n}@example.org", str(n % 9), ""
        if n % 50 == 7:
            email = f"not-an-address-{n}"
        elif n % 40 == 3 and n > 40:
            email = f"USER{n - 37}@Example.org"  # a duplicate from an earlier chunk
        elif n % 97 == 5:
            email = f"user{n - 1}@example.org"  # a duplicate in the same chunk
        if n == 150:
            email = "user144@example.org"  # row 144 fails to render: this one is sendable
        if n % 9 == 0 and n != 150:
            points = "0"  # 100 // 0: the template fails on this row
        if n % 13 == 0:
            cc = f"cc{n}@example.org, cc{n}b@example.org"
        if n % 61 == 0:
            w.writerow(["", "", "", "", ""])  # an empty row keeps its number
            continue
        w.writerow([email, f"Name {n}", f"First{n}", points, cc])
    (folder / "recipients.csv").write_text(out.getvalue(), encoding="utf-8")
    (folder / "blocked.csv").write_text("email\nuser33@example.org\n", encoding="utf-8")
    (folder / "campaign.toml").write_text(
        f"""name = "mixed"
provider = "{provider}"
base_url = "http://127.0.0.1:9"
[source]
path = "recipients.csv"
[columns]
name = "name"
cc = "cc"
[sender]
email = "news@example.com"
[message]
subject = "{{{{ first }}}}, your {{{{ 100 // points|int }}}} points"
html = "<p>Hello {{{{ first }}}} &amp; co</p><p>{{{{ 100 // points|int }}}}</p>"
[suppression]
files = ["blocked.csv"]
[send]
batch_size = 7
""",
        encoding="utf-8",
    )
    return folder / "campaign.toml"


def test_two_workers_give_the_rows_one_gives(tmp_path: Path) -> None:
    campaign = load_campaign(mixed_campaign(tmp_path / "c"))
    for derive_text in (True, False):
        one = list(pf.iter_rows(campaign, derive_text=derive_text, suppressed=LISTED, workers=1))
        two = list(pf.iter_rows(campaign, derive_text=derive_text, suppressed=LISTED, workers=2))
        assert one == two
    reasons = Counter(r.skip_reason for r in one)
    # the mix is what it says: every kind of row is there, more than once
    assert reasons["duplicate"] >= 8 and reasons["invalid"] >= 40 and reasons["suppressed"] == 2
    assert reasons[None] > 250
    by_row = {r.row: r for r in one}
    assert by_row[144].skip_reason == "invalid" and by_row[150].skip_reason is None
    assert 61 not in by_row and by_row[62].row == 62  # the empty row is gone, numbers kept
    assert by_row[21].skip_detail == LISTED["user21@example.org"]


def test_two_workers_encode_the_bytes_one_does(tmp_path: Path) -> None:
    campaign = load_campaign(mixed_campaign(tmp_path / "c"))
    encoder = WireEncoder("tosend", "http://127.0.0.1:9", 7, 50, "run-1")

    def planned(workers: int) -> list[tuple[int, str | None, bytes | None, str | None]]:
        rows = pf.iter_rows(
            campaign, derive_text=False, encoder=encoder, keep_values=False, workers=workers
        )
        return [
            (r.row, r.skip_reason, r.planned.wire if r.planned else None,
             r.planned.key if r.planned else None)
            for r in rows
        ]  # fmt: skip

    one, two = planned(1), planned(2)
    assert one == two
    assert sum(wire is not None for _, _, wire, _ in one) > 250
    # the worker derived the text part from the HTML before encoding
    wire = next(w for _, _, w, _ in one if w is not None)
    assert json.loads(wire)["text"].startswith("Hello")


def test_check_reports_the_same_with_any_number_of_workers(tmp_path: Path) -> None:
    campaign = load_campaign(mixed_campaign(tmp_path / "c"))
    reports, errors = [], []
    for workers in (1, 2):
        out = io.StringIO()
        reports.append(pf.preflight(campaign, errors=out, suppressed=LISTED, workers=workers))
        errors.append(out.getvalue())
    assert reports[0] == reports[1] and not reports[0].ok
    assert errors[0] == errors[1] and errors[0].count("\n") > 40


def test_a_run_on_two_workers_records_and_delivers_what_one_does(tmp_path: Path) -> None:
    """Over real HTTP: the same rows recorded, the same emails delivered, once each."""
    campaign = mixed_campaign(tmp_path / "c")
    seen = []
    for workers in (1, 2):
        with Sandbox() as sandbox:
            result = run_campaign(
                campaign,
                base_url=sandbox.base_url,
                db_path=tmp_path / f"w{workers}.db",
                api_key="sk-test",
                progress=False,
                skip_invalid=True,
                workers=workers,
                again=workers > 1,  # the same campaign, sent again from another database
            )
            assert result.exit_code == 0, result
            messages = sandbox.messages()
        delivered = Counter(recipients_in(messages))
        assert set(delivered.values()) == {1}
        with Store(tmp_path / f"w{workers}.db") as store:
            rows = [
                (r["row"], r["email"], r["state"], r["reason"], r["error_message"])
                for r in store.recipients(result.run_id)
            ]
        emails = sorted(
            (m["to"][0]["email"] if isinstance(m["to"][0], dict) else m["to"][0],
             m.get("subject"), m.get("html"), m.get("text"))
            for m in messages
        )  # fmt: skip
        seen.append((rows, emails, delivered))
    assert seen[0] == seen[1]
    assert len(seen[0][1]) > 250


def test_a_script_without_a_main_guard_is_not_run_again_by_the_workers(tmp_path: Path) -> None:
    """Spawned workers import batchsend, never the script that started them: a script
    with no ``if __name__ == "__main__":`` would otherwise run its campaign again in each."""
    campaign = mixed_campaign(tmp_path / "c")
    marker = tmp_path / "ran.txt"
    script = tmp_path / "send.py"
    script.write_text(
        "from batchsend import preflight as pf\n"
        "from batchsend.campaign import load_campaign\n"
        f"pf.CHUNK_ROWS = {CHUNK}\n"
        f"open({str(marker)!r}, 'a').write('x')\n"
        f"rows = list(pf.iter_rows(load_campaign({str(campaign)!r}), workers=2))\n"
        "print(len(rows))\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 400
    assert marker.read_text() == "x"  # the script's body ran once: in this process only


def test_workers_do_not_outlive_a_killed_run(tmp_path: Path) -> None:
    """kill -9 of the main process: its workers exit on their own (nobody reads their work)."""
    campaign = mixed_campaign(tmp_path / "c")
    tag = f"batchsend-test-{os.getpid()}-{tmp_path.name}"
    script = (
        "import os, signal\n"
        "from batchsend import preflight as pf\n"
        "from batchsend.campaign import load_campaign\n"
        f"pf.CHUNK_ROWS = {CHUNK}\n"
        f"rows = pf.iter_rows(load_campaign({str(campaign)!r}), workers=2)\n"
        "for n, _ in enumerate(rows):\n"
        "    if n == 100:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "BATCHSEND_TEST_MARK": tag}
    done = subprocess.run([sys.executable, "-c", script], env=env, timeout=120)
    assert done.returncode == -9

    def marked() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if tag.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    import time

    deadline = time.monotonic() + 10
    while marked() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marked() == []


def test_the_progress_lines_say_how_many_workers(tmp_path: Path, sandbox: Sandbox) -> None:
    from support.campaigns import write_campaign
    from support.processes import run_batchsend

    campaign = write_campaign(tmp_path / "p", rows=2500)
    done = run_batchsend(
        "run", str(campaign), "--base-url", sandbox.base_url, "--workers", "2",
        key="sk-test", env={"BATCHSEND_PROGRESS_INTERVAL": "0.001"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    checking = [line for line in done.stderr.splitlines() if "rows checked" in line]
    assert checking and all(line.endswith("(2 workers)") for line in checking), done.stderr
    sending = [line for line in done.stderr.splitlines() if line.startswith("batchsend: sent")]
    assert sending and sending[-1].endswith("(2 workers)"), done.stderr


def _two_of_one_address(folder: Path, html: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "r.csv").write_text(
        "email,first,vip\nann@example.org,,0\nbob@example.org,Bob,0\n"
        "ann@example.org,Ann,1\ncarl@example.org,Carl,0\n",
        encoding="utf-8",
    )
    (folder / "campaign.toml").write_text(
        f"""provider = "tosend"
base_url = "http://127.0.0.1:9"
[source]
path = "r.csv"
[columns]
required = ["first"]
[sender]
email = "news@example.com"
[message]
subject = "Hi"
html = "{html}"
""",
        encoding="utf-8",
    )
    return folder / "campaign.toml"


def test_a_template_error_on_a_duplicate_row_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A serial pass never renders a duplicate; a worker may (its first copy is in an
    earlier chunk): its template error must then not stop the pass. On a row that is
    no duplicate, it stops the pass with the same words whatever the workers."""
    monkeypatch.setattr(pf, "CHUNK_ROWS", 2)
    html = "{% if vip == '1' %}{{ ''.__class__ }}{% endif %}<p>{{ first }}</p>"
    campaign = load_campaign(_two_of_one_address(tmp_path / "c", html))
    (tmp_path / "c" / "r.csv").write_text(
        "email,first,vip\nann@example.org,Ann,0\nbob@example.org,Bob,0\n"
        "ann@example.org,Ann,1\ncarl@example.org,Carl,0\n",
        encoding="utf-8",
    )
    for workers in (1, 2):
        rows = list(pf.iter_rows(campaign, workers=workers))
        assert [r.skip_reason for r in rows] == [None, None, "duplicate", None]
    (tmp_path / "c" / "r.csv").write_text(
        "email,first,vip\nann@example.org,Ann,0\nbob@example.org,Bob,0\ndan@example.org,Dan,1\n",
        encoding="utf-8",
    )
    errors = []
    for workers in (1, 2):
        with pytest.raises(TemplateError) as info:
            list(pf.iter_rows(campaign, workers=workers))
        errors.append((str(info.value), info.value.exit_code))
    assert errors[0] == errors[1] and "rendering row 3" in errors[0][0]


def test_rows_asked_for_are_rendered_though_an_invalid_row_shares_their_address(
    tmp_path: Path,
) -> None:
    """Row 1 (empty required column) was refused, so row 3, the same address, was sent
    as the first of it. Rendering row 3 again (a resume; a run going on from a checkpoint)
    must give its message: row 1, not rendered, is not taken for a sendable first copy."""
    campaign = load_campaign(_two_of_one_address(tmp_path / "c", "<p>{{ first }}</p>"))
    full = list(pf.iter_rows(campaign))
    assert [r.skip_reason for r in full] == ["invalid", None, None, None]
    for workers in (1, 2):
        again = [r for r in pf.iter_rows(campaign, only={3}.__contains__, workers=workers)]
        assert again[2].message is not None and again[2].message.to[0].email == "ann@example.org"


def test_a_run_whose_spool_fills_up_renders_the_rest_when_it_sends(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big campaign outgrows the spool's cap: the rows it holds are read back, the
    others rendered again (on the workers) as they are sent; each person once."""
    from support.campaigns import write_campaign

    from batchsend import spool as spool_module
    from batchsend.render import Renderer

    monkeypatch.setattr(spool_module, "MAX_BYTES", 6_000)
    renders: list[int] = []
    real = Renderer.render

    def counted(self, values, **kw):
        renders.append(1)
        return real(self, values, **kw)

    monkeypatch.setattr(Renderer, "render", counted)  # one worker: this process renders
    campaign = write_campaign(tmp_path / "s", rows=300)
    result = run_campaign(
        campaign, base_url=sandbox.base_url, db_path=tmp_path / "s.db", api_key="sk-test",
        progress=False, workers=1,
    )  # fmt: skip
    assert result.exit_code == 0 and result.counts["sent"] == 300
    # every row rendered in preflight; at send time only those the full spool refused
    assert 300 + 200 < len(renders) < 600
    delivered = Counter(recipients_in(sandbox.messages()))
    assert delivered == Counter({f"user{n}@example.org": 1 for n in range(1, 301)})


def test_a_pass_for_some_rows_yields_those_alone_as_the_full_pass_has_them(
    tmp_path: Path,
) -> None:
    campaign = load_campaign(mixed_campaign(tmp_path / "c"))
    full = list(pf.iter_rows(campaign, suppressed=LISTED))
    asked = {r.row for r in full if r.skip_reason is None and r.row % 3 == 0}
    for workers in (1, 2):
        rows = pf.iter_rows(campaign, only=asked.__contains__, suppressed=LISTED, workers=workers)
        every = [r for r in rows if r.row in asked]
        lean = list(
            pf.iter_rows(
                campaign, only=asked.__contains__, suppressed=LISTED, workers=workers, others=False
            )
        )
        assert lean == every == [r for r in full if r.row in asked] and len(lean) == len(asked)
