"""The reliability gauntlet's scenarios: crashes, faults, a fatal error mid-run, hostile files.

The default test suite runs these functions in a short form (``tests/test_crash_kill_points.py``,
``tests/test_provider_faults.py``, ``tests/test_api_key_secrecy.py``); ``python -m
bench.gauntlet`` runs them in the long form. docs/gauntlet.md lists every scenario and its
last result.
Every scenario raises ``GauntletFailure`` when a promise is broken and prints its
counts either way. The default test suite runs the same functions in a short form
(``tests/test_crash_kill_points.py``, ``tests/test_provider_faults.py``); docs/gauntlet.md
lists every scenario and its last result.

The crash campaign kills a real ``batchsend`` process with SIGKILL in three ways, in
turn: right after a unit's ``sending`` commit and right after a response arrives (the
process kills itself there, armed by ``BATCHSEND_TEST_ONLY_SIGKILL_AT``, see
:mod:`batchsend.crashpoints`), and at a random moment of its progress (the parent polls
the database and kills it from outside). Each kill is followed by a resume; unknown rows
are never sent again. The sandbox runs in this process and records every
accepted message to a JSON-lines file, which is the ground truth: who got what, how
many times.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from batchsend.crashpoints import ENV_VAR as CRASH_ENV
from batchsend.resume import resume_run
from batchsend.run import run_campaign
from batchsend.sandbox import Sandbox

from . import campaigns
from .campaigns import DOMAIN, KEY, deliveries
from .processes import batchsend_command, query

TERMINAL = frozenset({"sent", "failed", "skipped", "unknown"})


class GauntletFailure(AssertionError):
    """A promise batchsend makes was broken; the message says which and with what counts."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`GauntletFailure` with ``message`` unless ``condition``."""
    if not condition:
        raise GauntletFailure(message)


# --- campaign and observation helpers -------------------------------------------------------


def write_campaign(
    folder: Path,
    *,
    rows: int,
    provider: str = "tosend",
    send: dict[str, Any] | None = None,
    base_url: str = "http://127.0.0.1:9",
) -> Path:
    """A generated campaign with retries enough to outlast the faults the gauntlet injects."""
    settings: dict[str, Any] = {"concurrency": 4, "max_attempts": 5, "max_retry_time": 30}
    if provider == "tosend":
        settings["batch_size"] = 20
    return campaigns.write_campaign(
        folder, rows=rows, provider=provider, base_url=base_url, send={**settings, **(send or {})}
    )


def row_states(db: Path, run_id: str) -> dict[int, tuple[str, str | None, int | None]]:
    """row -> (state, error_type, retryable) for every row of the run."""
    found = query(
        db, "SELECT row, state, error_type, retryable FROM recipients WHERE run_id = ?", run_id
    )
    return {r: (s, e, k) for r, s, e, k in found}


def explain(
    db: Path, run_id: str, rows: int, delivered: Counter[str], *, lost_answers_ok: bool = True
) -> dict[str, int]:
    """Check a finished run against the sandbox's log; return its counts.

    Every row terminal; sent + failed + unknown + skipped = rows; each sent row delivered
    exactly once; nobody delivered twice; a row delivered but not ``sent`` is only
    possible when its answer was lost, and is then ``unknown`` (a ``failed`` row was
    certainly not accepted).
    """
    states = row_states(db, run_id)
    check(sorted(states) == list(range(1, rows + 1)), f"rows lost: {rows - len(states)}")
    counts = Counter(s for s, _, _ in states.values())
    not_terminal = {s: n for s, n in counts.items() if s not in TERMINAL}
    check(not not_terminal, f"rows without a terminal state: {not_terminal}")
    check(sum(counts.values()) == rows, f"counts {dict(counts)} do not add up to {rows}")
    twice = {a: n for a, n in delivered.items() if n > 1}
    check(not twice, f"{len(twice)} recipients got two messages or more, e.g. {list(twice)[:3]}")
    address = {f"user{r}@example.org": r for r in states}
    strangers = [a for a in delivered if a not in address]
    check(not strangers, f"messages to addresses not in the file: {strangers[:3]}")
    delivered_rows = {address[a] for a in delivered}
    missing = [r for r, (s, _, _) in states.items() if s == "sent" and r not in delivered_rows]
    check(not missing, f"rows marked sent that the provider never accepted: {missing[:10]}")
    lost_answer = 0
    for r in delivered_rows:
        state, error_type, _retryable = states[r]
        if state == "sent":
            continue
        lost = state == "unknown"
        check(
            lost and lost_answers_ok,
            f"row {r} was delivered but is {state} ({error_type}): not explained by a lost answer",
        )
        lost_answer += 1
    return {**{s: counts.get(s, 0) for s in sorted(TERMINAL)}, "delivered_unanswered": lost_answer}


# --- the crash campaign ---------------------------------------------------------------------


def _integrity(db: Path) -> str:
    found = query(db, "PRAGMA integrity_check")
    return found[0][0] if found else "no database"


def crash_campaign(
    workdir: Path,
    *,
    rows: int = 10_000,
    kills: int = 50,
    provider: str = "tosend",
    seed: int = 1,
    latency_ms: float = 2,
    modes: tuple[str, ...] = ("sending", "response", "random"),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """SIGKILL ``kills`` times across a campaign of ``rows``, resume after each; check the log.

    Kill modes rotate (``modes``): ``sending`` (just after a sending commit), ``response`` (just
    after an answer arrived, unrecorded), ``random`` (from outside, at a random point of
    the progress the database shows). The last resume is a plain one: an unknown row is
    never sent again (the sandbox does not de-duplicate), so the checks are that nobody got
    two messages, every row ends ``sent`` or ``unknown``, and every ``unknown`` row was in
    flight at a kill. Returns the counts; raises :class:`GauntletFailure` on a broken
    promise.
    """
    rng = random.Random(seed)
    started = time.monotonic()
    record = workdir / "record.jsonl"
    db = workdir / "gauntlet.db"
    send = {"concurrency": 4, "batch_size": 20} if provider == "tosend" else {"concurrency": 8}
    # keep_messages=None: the duplicate check reads every message ever accepted
    sandbox = Sandbox(
        api_keys=(KEY,),
        domains=(DOMAIN,),
        latency_ms=latency_ms,
        record=str(record),
        keep_messages=None,
    ).start()
    campaign = write_campaign(
        workdir / "campaign", rows=rows, provider=provider, send=send, base_url=sandbox.base_url
    )
    per_unit = send.get("batch_size", 1)
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    env["BATCHSEND_API_KEY"] = KEY
    common = ["--db", str(db), "--json", "--report", str(workdir / "report.csv")]
    run_id: str | None = None
    killed = Counter[str]()
    in_flight_at_kills: set[int] = set()
    sending_left = 0
    missed = 0  # processes that finished before their kill point came
    integrity_ok = 0

    def command() -> list[str]:
        if run_id is None:
            return batchsend_command("run", str(campaign), *common)
        return batchsend_command("resume", run_id, *common)

    try:
        for i in range(kills):
            mode = modes[i % len(modes)]
            done = query(db, "SELECT count(*) FROM recipients WHERE state != 'pending'")
            remaining = rows - (done[0][0] if done else 0)
            # Spread the kills over the campaign: about an equal share of units each.
            share = max(1, remaining // per_unit // (kills - i + 1))
            n = rng.randint(1, 2 * share)
            proc_env = dict(env)
            if mode != "random":
                proc_env[CRASH_ENV] = f"{mode}:{n}"
            proc = subprocess.Popen(
                command(), env=proc_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            if mode == "random":
                target = rows - remaining + n * per_unit
                deadline = time.monotonic() + 120
                while proc.poll() is None and time.monotonic() < deadline:
                    found = query(db, "SELECT count(*) FROM recipients WHERE state != 'pending'")
                    if found and found[0][0] >= target:
                        break
                    time.sleep(0.001)
                proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=300)
            if proc.returncode != -signal.SIGKILL:
                # 3: it finished, with the unknown rows an earlier kill left
                check(proc.returncode in (0, 3, None), f"kill {i}: exit {proc.returncode}: {err!r}")
                missed += 1
            else:
                killed[mode] += 1
            if run_id is None:
                ids = query(db, "SELECT id FROM runs")
                run_id = ids[0][0] if ids else None
            integrity = _integrity(db)
            check(integrity in ("ok", "no database"), f"kill {i}: integrity_check: {integrity}")
            integrity_ok += integrity == "ok"
            if run_id is not None:
                sending = {
                    r for (r,) in query(db, "SELECT row FROM recipients WHERE state = 'sending'")
                }
                in_flight_at_kills |= sending
                sending_left += len(sending)
        check(run_id is not None, "no kill left a recorded run")
        assert run_id is not None
        before_final = Counter(
            s for (s,) in query(db, "SELECT state FROM recipients WHERE run_id = ?", run_id)
        )
        # A plain resume: the sandbox does not de-duplicate, so sending an unknown row again
        # could deliver it twice; those rows stay unknown for the user to settle.
        final = subprocess.run(command(), env=env, capture_output=True, text=True, timeout=600)
        check(
            final.returncode in (0, 3),
            f"the last resume failed ({final.returncode}): {final.stderr}",
        )
        summary = json.loads(final.stdout)
        check(summary["state"] == "finished", f"the last resume ended {summary['state']}")
        stats = sandbox.stats()
        sandbox.stop()  # closes the record file
        delivered = deliveries(
            [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines()]
        )
        counts = explain(db, run_id, rows, delivered)
        unknown = {
            r
            for (r,) in query(
                db, "SELECT row FROM recipients WHERE run_id = ? AND state = 'unknown'", run_id
            )
        }
        strays = unknown - in_flight_at_kills
        check(
            not strays, f"unknown rows that were never in flight at a kill: {sorted(strays)[:10]}"
        )
        check(
            counts["sent"] + counts["unknown"] == rows,
            f"rows neither sent nor unknown after the last resume: {counts}",
        )
        never = rows - len(delivered)
        check(
            never <= len(unknown),
            f"{never} recipients never got a message, but only {len(unknown)} rows are unknown",
        )
        integrity = _integrity(db)
        check(integrity == "ok", f"integrity_check after the last resume: {integrity}")
        check(integrity_ok == kills, f"integrity_check ok after {integrity_ok} of {kills} kills")
    finally:
        sandbox.stop()
    result = {
        "rows": rows,
        "provider": provider,
        "kills": sum(killed.values()),
        "kills_by_mode": dict(killed),
        "processes_that_finished_before_their_kill": missed,
        "rows_left_sending_by_kills": sending_left,
        "distinct_rows_in_flight_at_a_kill": len(in_flight_at_kills),
        "unknown_before_last_resume": before_final.get("unknown", 0),
        "unknown_at_the_end": len(unknown),
        "unknown_that_were_delivered": counts["delivered_unanswered"],
        "recipients_with_two_messages": sum(1 for n in delivered.values() if n > 1),
        "recipients_without_a_message": rows - len(delivered),
        "rows_without_terminal_state": rows - sum(counts[s] for s in TERMINAL),
        "integrity_checks_ok": f"{integrity_ok + 1} of {kills + 1} (after every kill and the end)",
        "final_counts": counts,
        "sandbox_requests": stats["requests"],
        "sandbox_idempotent_replays": stats["duplicates"],
        "seconds": round(time.monotonic() - started, 1),
    }
    log(json.dumps(result, indent=2))
    return result


# --- the fault matrix -----------------------------------------------------------------------


class Controller(threading.Thread):
    """Watches the sandbox's counters from a thread and acts once a condition holds.

    ``steps`` is a list of (condition on stats, action); each step fires once, in order.
    """

    def __init__(self, sandbox: Sandbox, steps: list[tuple[Callable[[dict], bool], Callable]]):
        super().__init__(daemon=True)
        self.sandbox = sandbox
        self.steps = list(steps)
        self.done = threading.Event()
        self.fired: list[dict[str, Any]] = []

    def run(self) -> None:
        while self.steps and not self.done.is_set():
            stats = self.sandbox.stats() if self.sandbox.running else {}
            condition, action = self.steps[0]
            if stats and condition(stats):
                self.fired.append(action() or {})
                self.steps.pop(0)
                continue
            time.sleep(0.002)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=10)


#: How long a held request waits; the controller restarts the sandbox well before.
HOLD_MS = 20_000
#: The fault matrix's ToSend batch size (its 429 storm is set in emails per second).
TOSEND_BATCH = 10


def _settle_in_flight(sandbox: Sandbox, timeout: float = 10.0) -> None:
    """Wait until the sandbox has finished every request it holds (a slow one delivers late)."""
    deadline = time.monotonic() + timeout
    while sandbox.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)


def _restart(sandbox: Sandbox, down_s: float) -> dict[str, Any]:
    sandbox.stop()  # drops the held requests: their answers are lost
    sandbox.configure(latency_ms=0)  # stopped: applied to the kept state
    time.sleep(down_s)  # the provider is down: connections are refused meanwhile
    sandbox.start()
    return {"restarted": True}


def _cells(requests: int, provider: str = "tosend") -> dict[str, dict[str, Any]]:
    """Fault matrix cells: sandbox settings, live steps, campaign [send] overrides.

    ``requests`` is how many requests the campaign needs without faults. Every fault is
    keyed to the sandbox's own request count (its ``schedule`` setting), so it lands at
    the same point of the run however fast the client is: a thread polling the counters
    missed a whole run once runs got faster. The 429 storms refuse a few requests
    outright (so even a fast run meets one), then hold the account to a quarter of the
    requests per second, so the storm lasts about four seconds whatever the size, and 8
    workers start well over the limit. They begin after ToSend's ``GET /v2/info``: the
    client paces itself to the rate that advertises, so the storm is a provider limiting
    below it (shared account, a lowered limit). The restart is the one live step: the
    sandbox holds every request from a scheduled one on until the controller thread has
    restarted it.
    """
    burst_at = requests // 10
    burst_faults = max(8, requests // 5)
    storm = max(2, requests // 4)
    after_info = 1 if provider == "tosend" else 0
    first = after_info + burst_at + 1  # the first request a scheduled fault hits
    hold_at = after_info + max(1, burst_at) + 1  # after at least one send answered

    def storm_schedule(**extra: Any) -> dict[str, Any]:
        # a few certain 429s (fewer than the workers), then the lowered limit's own
        # the same request rate in each provider's own unit: ToSend counts emails (this
        # matrix sends batches of TOSEND_BATCH one-recipient emails), v1 requests a minute
        limit = (
            {"tosend_emails_per_second": storm * TOSEND_BATCH}
            if provider == "tosend"
            else {"v1_requests_per_minute": storm * 60}
        )
        changes = {**limit, "refuse_next": min(storm, 4), **extra}
        return {"schedule": ((after_info + 1, changes),)}

    return {
        "latency_spikes": {
            "config": {"spike_rate": 0.3, "spike_ms": 300, "seed": 1},
            "send": {"timeout": 5},
            "expect_fault": "spike",
        },
        "5xx_bursts": {
            # A burst of exactly burst_faults 500/502/503 answers, then back to normal. The
            # client cannot know that these were refused before processing: unknown.
            "config": {
                "seed": 2,
                "schedule": (
                    (first, {"fail_rate": 1.0}),
                    (first + burst_faults, {"fail_rate": 0.0}),
                ),
            },
            "send": {"max_attempts": 8},
            "expect_fault": ("500", "502", "503"),
            "unknown_rows": "not_delivered",
        },
        "429_storm_retry_after": {
            "config": storm_schedule(),
            "send": {"concurrency": 8, "max_attempts": 10},
            "expect_fault": "429",
        },
        "429_storm_no_retry_after": {
            "config": storm_schedule(retry_after=False),
            "send": {"concurrency": 8, "max_attempts": 10},
            "expect_fault": "429",
        },
        "dropped_responses": {
            # accepted, then the connection closed: delivered, and the client cannot know
            "config": {"drop_rate": 0.3, "seed": 3},
            "send": {"max_attempts": 8},
            "expect_fault": "dropped",
            "unknown_rows": "delivered",
        },
        "slow_answers": {
            # accepted and delivered, answered after 1.5 s; the client gave up at 0.3 s
            "config": {"slow_rate": 0.3, "slow_ms": 1500, "seed": 4},
            "send": {"timeout": 0.3, "max_attempts": 3},
            "expect_fault": "slow",
            "unknown_rows": "delivered",
        },
        "accepted_then_500": {
            # accepted and delivered, then answered 500: the client cannot tell
            "config": {"fail_after_accept_rate": 0.3, "seed": 1},
            "send": {"max_attempts": 3},
            "expect_fault": "failed_after_accept",
            "unknown_rows": "delivered",
        },
        "provider_hangs": {
            # Every request sleeps 1 s on the server before it is read; the client gives up
            # after 0.2 s and closes the connection, so the sandbox never processes it.
            # The client cannot know that: every row unknown, none sent again on its own.
            "config": {"latency_ms": 1000},
            "send": {"timeout": 0.2, "max_attempts": 2, "max_retry_time": 1},
            "expect_all_unknown": "timeout",
            "unknown_rows": "not_delivered",
        },
        "sandbox_restarted": {
            # From request hold_at on the sandbox answers nothing (the client's timeout is
            # longer) until the controller sees that request and restarts it.
            "config": {"schedule": ((hold_at, {"latency_ms": HOLD_MS}),)},
            "steps": [
                (lambda s: s["requests"] >= hold_at, lambda sb: _restart(sb, 0.3)),
            ],
            "send": {"max_attempts": 10, "timeout": 2 * HOLD_MS / 1000},
            # the held requests were dropped before the sandbox processed them
            "unknown_rows": "not_delivered",
        },
    }


FAULT_CELLS = tuple(_cells(1))


def fault_cell(
    name: str,
    workdir: Path,
    *,
    rows: int = 200,
    provider: str = "tosend",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run one cell of the fault matrix in this process; check and return its counts.

    Rows that failed with a retryable error are then sent with ``resume --retry-failed``
    once the fault is gone: each ends ``sent``, still one message per recipient. Rows left
    ``unknown`` are checked against what the sandbox knows (the cell's ``unknown_rows``):
    where they were ``delivered`` (a dropped answer), each was delivered exactly once and
    is left alone; where they were ``not_delivered`` (refused before processing, which
    the client cannot know), ``resume --resend-unknown`` sends each, once.
    """
    send = (
        {"concurrency": 4, "batch_size": TOSEND_BATCH}
        if provider == "tosend"
        else {"concurrency": 4}
    )
    cell = _cells(-(-rows // send.get("batch_size", 1)), provider)[name]
    workdir.mkdir(parents=True, exist_ok=True)
    sandbox = Sandbox(api_keys=(KEY,), domains=(DOMAIN,), keep_messages=None).start()
    if cell.get("config"):
        sandbox.configure(**cell["config"])
    send.update(cell.get("send", {}))
    campaign = write_campaign(
        workdir / name, rows=rows, provider=provider, send=send, base_url=sandbox.base_url
    )
    db = workdir / f"{name}.db"
    steps = [(cond, lambda act=act: act(sandbox)) for cond, act in cell.get("steps", [])]
    controller = Controller(sandbox, steps)
    started = time.monotonic()
    controller.start()
    try:
        summary = run_campaign(
            campaign,
            db_path=db,
            api_key=KEY,
            progress=False,
            report_path=workdir / f"{name}.csv",
        )
    finally:
        controller.stop()
    try:
        check(not controller.steps, f"{name}: the fault never happened (steps left)")
        stats = sandbox.stats()
        expected = cell.get("expect_fault")
        if expected:
            kinds = (expected,) if isinstance(expected, str) else expected
            check(
                sum(stats["faults"].get(k, 0) for k in kinds) > 0,
                f"{name}: no {expected} fault injected",
            )
        _settle_in_flight(sandbox)
        first = explain(db, summary.run_id, rows, deliveries(sandbox.messages()))
        statuses = Counter(
            str(s)
            for (s,) in query(
                db, "SELECT http_status FROM attempts WHERE run_id = ?", summary.run_id
            )
        )
        errors = Counter(
            e
            for (e,) in query(
                db,
                "SELECT error_type FROM recipients WHERE run_id = ? AND error_type IS NOT NULL",
                summary.run_id,
            )
        )
        if cell.get("expect_all_unknown"):
            check(
                first["unknown"] == rows and set(errors) == {cell["expect_all_unknown"]},
                f"{name}: expected every row unknown by {cell['expect_all_unknown']}: "
                f"{first} {errors}",
            )
        else:
            check(summary.state.value == "finished", f"{name}: the run ended {summary.state}")
        if first["unknown"]:
            expected_unknown = cell.get("unknown_rows")
            delivered = first["delivered_unanswered"]
            check(
                (expected_unknown == "delivered" and delivered == first["unknown"])
                or (expected_unknown == "not_delivered" and delivered == 0),
                f"{name}: {first['unknown']} unknown rows, {delivered} of them delivered; "
                f"expected {expected_unknown}",
            )
        # Permanent failures would be a client bug here: every fault is transient.
        permanent = query(
            db,
            "SELECT count(*) FROM recipients WHERE run_id = ? AND state = 'failed'"
            " AND retryable IS NOT 1",
            summary.run_id,
        )[0][0]
        check(permanent == 0, f"{name}: {permanent} rows failed permanently on a transient fault")
        retried = None
        resend = first["unknown"] and cell.get("unknown_rows") == "not_delivered"
        if first["failed"] or resend:
            sandbox.configure(
                fail_rate=0.0,
                drop_rate=0.0,
                latency_ms=0,
                spike_rate=0.0,
                tosend_emails_per_second=None,
                v1_requests_per_minute=None,
            )
            again = resume_run(
                summary.run_id,
                db_path=db,
                api_key=KEY,
                retry_failed=bool(first["failed"]),
                resend_unknown=bool(resend),
                progress=False,
                report_path=workdir / f"{name}-retry.csv",
            )
            check(again.state.value == "finished", f"{name}: the resume ended {again.state}")
            retried = explain(db, summary.run_id, rows, deliveries(sandbox.messages()))
            check(
                retried["sent"] + retried["unknown"] == rows and retried["failed"] == 0,
                f"{name}: after the resume: {retried}",
            )
        result = {
            "cell": name,
            "rows": rows,
            "counts": first,
            "after_retry_failed": retried,
            "http_statuses": dict(statuses),
            "row_errors": dict(errors),
            "sandbox_faults": stats["faults"],
            "sandbox_requests": stats["requests"],
            "sandbox_replays": stats["duplicates"],
            "seconds": round(time.monotonic() - started, 2),
        }
    finally:
        sandbox.stop()
    log(json.dumps(result))
    return result


# --- fatal error mid-run ----------------------------------------------------------------------


def fatal_mid_run(
    workdir: Path,
    *,
    rows: int = 2000,
    provider: str = "tosend",
    concurrency: int = 4,
    batch_size: int = 10,
    revoke_after: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Revoke the key mid-run: the run stops within one in-flight window; a resume finishes.

    "Within one in-flight window": the requests the sandbox refused with 403 after the
    revocation carry at most ``concurrency x batch_size`` rows -- the ones in flight when
    the first 403 arrived; nothing new is taken after it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    sandbox = Sandbox(api_keys=(KEY,), domains=(DOMAIN,), latency_ms=2, keep_messages=None).start()
    per_request = batch_size if provider == "tosend" else 1
    send = {"concurrency": concurrency}
    if provider == "tosend":
        send["batch_size"] = batch_size
    campaign = write_campaign(
        workdir / "fatal", rows=rows, provider=provider, send=send, base_url=sandbox.base_url
    )
    db = workdir / "fatal.db"
    revoke_after = revoke_after or rows // 4
    # The key is revoked as the request after the first ``revoke_after`` rows' arrives
    # (ToSend's GET /v2/info comes first): keyed to the sandbox's request count, the
    # revocation always lands mid-run; a thread watching the counters could miss a fast run.
    revoke_at = (1 if provider == "tosend" else 0) + -(-revoke_after // per_request) + 1
    sandbox.configure(schedule=((revoke_at, {"api_keys": ()}),))
    summary = run_campaign(campaign, db_path=db, api_key=KEY, progress=False,
                           report_path=workdir / "fatal.csv")  # fmt: skip
    try:
        check(summary.state.value == "fatal", f"the run ended {summary.state}, not fatal")
        stats = sandbox.stats()
        refused = stats["rejections"].get("403", 0) + stats["rejections"].get("401", 0)
        window = concurrency * per_request
        check(refused >= 1, "the sandbox never refused a request: the key was not revoked mid-run")
        rows_after = refused * per_request
        check(
            rows_after <= window,
            f"{rows_after} rows attempted after the revocation, over one in-flight window "
            f"({window})",
        )
        counts = Counter(s for (s,) in query(db, "SELECT state FROM recipients"))
        check(counts.get("sending", 0) == 0, f"rows left sending after a fatal stop: {counts}")
        delivered_before = deliveries(sandbox.messages())
        check(counts.get("sent", 0) == len(delivered_before), f"sent {counts} vs delivered")
        sandbox.configure(api_keys=(KEY,))  # the key is fixed
        again = resume_run(summary.run_id, db_path=db, api_key=KEY, progress=False,
                           report_path=workdir / "fatal-resume.csv")  # fmt: skip
        check(again.state.value == "finished", f"the resume ended {again.state}")
        final = explain(db, summary.run_id, rows, deliveries(sandbox.messages()))
        check(final["sent"] == rows, f"after the resume: {final}")
        result = {
            "rows": rows,
            "concurrency": concurrency,
            "rows_per_request": per_request,
            "in_flight_window_rows": window,
            "requests_refused_after_revocation": refused,
            "rows_attempted_after_revocation": rows_after,
            "counts_at_fatal_stop": dict(counts),
            "fatal_error": summary.fatal_error,
            "exit_code": summary.exit_code,
            "after_resume": final,
        }
    finally:
        sandbox.stop()
    log(json.dumps(result))
    return result


# --- hostile recipient files, full size ----------------------------------------------------


def _fill_fifo(path: Path) -> None:
    os.mkfifo(path)


def _dev_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def _sparse_header(path: Path) -> None:
    with path.open("wb") as fh:  # 1 GB long, a few KB on disk
        fh.write(b"email,first,")
        fh.seek(1 << 30)
        fh.write(b"\nann@example.org,Ann\n")


def _long_record(path: Path) -> None:
    with path.open("wb") as fh:  # a 70 MB record: over the real 64 MB limit
        fh.write(b"email,first\nann@example.org,Ann\nbob@example.org,")
        for _ in range(70):
            fh.write(b"x" * (1 << 20))
        fh.write(b"\n")


HOSTILE_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo": (_fill_fifo, "not a regular file"),
    "dev_zero": (_dev_zero, "not a regular file"),
    "header_1gb": (_sparse_header, "longer than 1 MB"),
    "record_70mb": (_long_record, "longer than 64 MB"),
}


def hostile_file(
    name: str, root: Path, *, timeout: float = 60.0, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """``batchsend check`` on one hostile recipient file, in a child process.

    Pass: exit 2, the expected words in the message, no traceback, within ``timeout``;
    the child's peak memory (ru_maxrss) is reported, to show the limits hold at full size
    (the test suite uses smaller files or lowered limits).
    """
    import resource

    make, needle = HOSTILE_FILES[name]
    folder = root / name
    campaign = write_campaign(folder, rows=1)
    (folder / "recipients.csv").unlink()
    make(folder / "recipients.csv")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.monotonic()
    try:
        proc = subprocess.run(
            batchsend_command("check", str(campaign)),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise GauntletFailure(f"{name}: still running after {timeout:.0f} s") from None
    seconds = time.monotonic() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    check(proc.returncode == 2, f"{name}: exit {proc.returncode}: {proc.stderr[-500:]}")
    check(needle in proc.stderr, f"{name}: {needle!r} not in {proc.stderr[-500:]!r}")
    check("Traceback" not in proc.stderr, f"{name}: traceback: {proc.stderr[-500:]}")
    result = {
        "file": name,
        "exit": proc.returncode,
        "seconds": round(seconds, 2),
        # the children's high-water mark so far (KB on Linux): an upper bound for this one
        "peak_rss_mb_at_most": round(max(peak, before) / 1024),
        "message": proc.stderr.strip().splitlines()[0][-160:],
    }
    log(json.dumps(result))
    return result
