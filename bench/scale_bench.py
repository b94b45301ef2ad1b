"""Scale benchmark for issue 16 ("ten million recipients on one machine").

Run from the repository root::

    python -m bench.scale_bench                        # the 1M suite, workers 1 and 2
    python -m bench.scale_bench --rows 20000           # the same, small (plumbing)
    python -m bench.scale_bench --big 10000000         # plus one 10M-row run
    python -m bench.scale_bench --big 5000000,10000000 --skip-sdk --skip-kill --skip-resume
    python -m bench.scale_bench --no-workers-flag      # against a batchsend without --workers

Options: ``--rows N`` (default 1,000,000), ``--workers 1,2`` (each value is one full run),
``--big N[,M...]`` (one extra run per size, at the largest --workers), ``--skip-sdk``,
``--skip-kill``, ``--skip-resume``, ``--keep DIR`` (inputs, databases, logs and
``results.json`` stay there; inputs already there are reused), ``--seed S`` (the kill
test's random moment), ``--no-workers-flag`` (never pass ``--workers``; also chosen by
itself when ``batchsend run --help`` does not list it).

Everything runs as subprocesses of this script, from the repository this file is in
(so the ``batchsend`` beside it is the one measured), nothing is pinned (the sandbox
shares the machine, as the issue says):

* the sandbox: ``python -m batchsend sandbox --port 0 --api-key sk-bench
  --keep-messages 0 --keep-events 0`` (a fresh one per measurement; keeping nothing
  whole holds its memory to ~1 KB per accepted message, see below); the kill test's
  also gets ``--record FILE``, the record the no-one-twice check reads;
* ``python -m batchsend run CAMPAIGN --base-url URL --db DB --json [--workers N]`` with
  ``BATCHSEND_API_KEY=sk-bench`` and a fresh ``XDG_STATE_HOME`` per scenario (batchsend's
  per-user register would otherwise refuse to send the same campaign from a second
  database);
* the official-SDK loop (``--sdk-child``): what a ToSend user writes instead: ``csv``,
  jinja2 (autoescape for the HTML), ``tosend.ToSend(api_key, base_url=URL).batch()`` in
  batches of 100, no checks, no state.

Figures, each measured from the moment the subprocess is started:

* time to first email: the sandbox's ``/_sandbox/stats`` ``accepted`` count polled every
  50 ms, first above its value at the start. batchsend prints nothing when preflight
  ends, so "preflight time" here is the time to first email (start-up, preflight of
  every row, the store's insert and the first request) and the preflight rate is rows
  divided by it (a lower bound);
* wall time: start to exit (the SDK loop: start to its last response and exit);
* memory: ``main`` = the peak RSS that ``wait4`` reports for the batchsend process (the
  largest of it and the descendants it waited for), ``tree`` = the peak of the RSS of the
  process and all its descendants summed, sampled every 0.2 s (shared pages count once
  per process, so it over-states a forked tree; the PSS sum is printed beside it);
  the goal is judged on ``tree``. The sandbox's own peak (VmHWM) is printed too;
* resume: ``run --limit ROWS/2``, then ``batchsend resume RUN_ID``: its time to first
  email is the moment the sandbox's count first passes the half;
* kill: ``run`` is SIGKILLed (its whole process group) at a moment drawn uniformly in
  [20%, 90%] of the fresh run's time to first email, checked to be before any email;
  then the same command again (or, if batchsend refuses it, the command its refusal
  names). Reported: the second run's time to first email vs the fresh run's, any line of
  its output about checked work kept, and the checks: every row ``sent`` and the per-row
  states equal to the fresh run's (SQLite), the sandbox's count == rows, and in its
  record every address exactly once and the same set of addresses as the input file.

The output ends with a table of every figure, the goals judged (OK/MISSED) and the
exact command behind each figure (``results.json`` in the work folder has them too).

Cost: the 100k suite took 3.4 minutes on this 2-core machine (batchsend without
--workers); the default 1M suite is about ten times that (two full runs, the SDK loop,
the resume's two halves, the kill and its second run). The kill test's sandbox record is
~4.2 KB per message (4.2 GB at 1M, deleted afterwards unless --keep); a 1M-row database
is ~300 MB. The sandbox holds ~1 KB per accepted message even with --keep-messages 0
(the compacted log and its index): ~10 GB at 10M; a warning is printed when that is
more than the memory available.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-bench"
SANDBOX_OPTIONS = ["--keep-messages", "0", "--keep-events", "0"]
# What the sandbox holds with SANDBOX_OPTIONS (measured at 100k: ~120 MB at start, then
# ~1 KB per accepted message: the compacted log and its index); for the warning below.
SANDBOX_BASE_MB = 120
SANDBOX_KB_PER_MESSAGE = 1.0
STATS_EVERY = 0.05
MEMORY_EVERY = 0.2
# Lines of a run's output that may say how much checked work a run kept or reused.
KEPT_WORK = re.compile(r"preflight|checked|kept|reus|resum", re.IGNORECASE)
KEPT_KEYS = re.compile(r"preflight|checked|kept|reus", re.IGNORECASE)

# --- the official-SDK loop (a child process) ------------------------------------------------


def sdk_child(folder: str, base_url: str) -> None:
    """The loop a ToSend user writes: csv, jinja2, the SDK's batch call; no checks, no state."""
    import tomllib

    import jinja2
    from tosend import ToSend

    root = Path(folder)
    campaign = tomllib.loads((root / "tosend.toml").read_text(encoding="utf-8"))
    message, sender = campaign["message"], campaign["sender"]
    loader = jinja2.FileSystemLoader(root)
    html_env = jinja2.Environment(loader=loader, autoescape=True)
    text_env = jinja2.Environment(loader=loader)
    subject = text_env.from_string(message["subject"])
    html = html_env.get_template(message["html_file"])
    text = text_env.get_template(message["text_file"])
    from_address = {"email": sender["email"], "name": sender["name"]}
    client = ToSend(os.environ["TOSEND_API_KEY"], base_url=base_url)
    sent = failed = 0

    def send(batch: list[dict]) -> None:
        nonlocal sent, failed
        for result in client.batch(batch).results:
            if result.status == "success":
                sent += 1
            else:
                failed += 1

    batch: list[dict] = []
    with (root / "recipients.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            batch.append(
                {
                    "from": from_address,
                    "to": [{"email": row["email"], "name": row["last_name"]}],
                    "subject": subject.render(row),
                    "html": html.render(row),
                    "text": text.render(row),
                }
            )
            if len(batch) == 100:
                send(batch)
                batch = []
    if batch:
        send(batch)
    print(json.dumps({"sent": sent, "failed": failed}))


# --- processes: the sandbox, a measured child ----------------------------------------------


def _drain(stream, sink: list, t0: float | None = None) -> None:
    for line in stream:
        sink.append(line if t0 is None else (time.perf_counter() - t0, line.rstrip("\n")))


def proc_status(pid: int, *names: str) -> dict[str, int]:
    """kB values of /proc/PID/status fields (empty if the process is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in names:
                    out[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return out


def proc_meminfo(name: str) -> int:
    """A kB value of /proc/meminfo (0 if absent)."""
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
        pass
    return 0


def descendants(root: int) -> list[int]:
    """root and every process below it (via /proc/PID/task/TID/children)."""
    seen, todo = [], [root]
    while todo:
        pid = todo.pop()
        seen.append(pid)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
            except (FileNotFoundError, ProcessLookupError):
                continue
    return seen


class Sandbox:
    def __init__(self, work: Path, record: Path | None = None) -> None:
        self.args = [
            sys.executable,
            "-m",
            "batchsend",
            "sandbox",
            "--port",
            "0",
            "--api-key",
            KEY,
            *SANDBOX_OPTIONS,
        ]
        if record is not None:
            self.args += ["--record", str(record)]
        self.log = (work / "sandbox.log").open("a")
        self.proc = subprocess.Popen(
            self.args, cwd=REPO, stdout=subprocess.PIPE, stderr=self.log, text=True
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", first)
        if not match:
            raise SystemExit(f"the sandbox did not print its URL: {first!r}")
        self.url = match.group(0)
        self._rest: list[str] = []
        threading.Thread(target=_drain, args=(self.proc.stdout, self._rest), daemon=True).start()

    def stats(self) -> dict:
        with urllib.request.urlopen(self.url + "/_sandbox/stats", timeout=30) as r:
            return json.loads(r.read())

    def accepted(self) -> int:
        return int(self.stats()["accepted"])

    def peak_mb(self) -> float:
        return proc_status(self.proc.pid, "VmHWM").get("VmHWM", 0) / 1024

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@dataclass
class Measured:
    command: list[str]
    rc: int
    wall: float
    first_email: float | None
    main_peak_mb: float
    tree_peak_mb: float
    tree_pss_peak_mb: float
    cpu_s: float
    stdout: str
    stderr: list[tuple[float, str]]
    killed_at: float | None = None
    accepted_at_kill: int | None = None
    json: dict = field(default_factory=dict)


def measure(
    command: list[str],
    env: dict[str, str],
    sandbox: Sandbox,
    *,
    baseline: int = 0,
    kill_at: float | None = None,
) -> Measured:
    """Run ``command``; poll the sandbox for its first email, sample its tree's memory."""
    out: list[str] = []
    err: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    readers = [
        threading.Thread(target=_drain, args=(proc.stdout, out), daemon=True),
        threading.Thread(target=_drain, args=(proc.stderr, err, t0), daemon=True),
    ]
    for r in readers:
        r.start()
    first = killed_at = accepted_at_kill = None
    tree_peak = pss_peak = 0
    next_memory = 0.0
    while True:
        now = time.perf_counter() - t0
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            break
        if first is None and sandbox.accepted() > baseline:
            first = time.perf_counter() - t0
        if now >= next_memory:
            pids = descendants(proc.pid)
            tree_peak = max(tree_peak, sum(proc_status(p, "VmRSS").get("VmRSS", 0) for p in pids))
            pss_peak = max(pss_peak, sum(pss_kb(p) for p in pids))
            next_memory = now + MEMORY_EVERY
        if kill_at is not None and killed_at is None and now >= kill_at:
            accepted_at_kill = sandbox.accepted() - baseline
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group this script started
            killed_at = time.perf_counter() - t0
        time.sleep(STATS_EVERY)
    wall = time.perf_counter() - t0
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join(timeout=30)
    if first is None and killed_at is None and sandbox.accepted() > baseline:
        first = wall  # sent and gone between two polls
    stdout = "".join(out)
    m = Measured(
        command=command,
        rc=proc.returncode,
        wall=wall,
        first_email=first,
        main_peak_mb=usage.ru_maxrss / 1024,
        tree_peak_mb=tree_peak / 1024,
        tree_pss_peak_mb=pss_peak / 1024,
        cpu_s=usage.ru_utime + usage.ru_stime,
        stdout=stdout,
        stderr=err,
        killed_at=killed_at,
        accepted_at_kill=accepted_at_kill,
    )
    with contextlib.suppress(ValueError, IndexError):
        m.json = json.loads(stdout[stdout.index("{") :])
    return m


# --- the scenarios ---------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, base: Path) -> None:
        self.args = args
        self.base = base
        self.figures: list[tuple[str, str, str, str, str]] = []  # name, value, goal, verdict, cmd
        self.commands: list[str] = []
        self.results: dict = {"cpu_count": os.cpu_count(), "runs": {}}
        self.counter = 0

    # inputs and environment

    def inputs(self, rows: int) -> Path:
        folder = self.base / f"input-{rows}"
        marker = folder / ".complete"
        if not marker.exists():
            from bench import send_bench

            folder.mkdir(parents=True, exist_ok=True)
            (folder / "recipients.csv").unlink(missing_ok=True)
            t = time.perf_counter()
            send_bench.write_campaign(folder, rows, "tosend", "http://127.0.0.1:1")
            marker.write_text(str(rows))
            size = (folder / "recipients.csv").stat().st_size / 1e6
            print(f"inputs: {rows:,} rows, {size:,.0f} MB CSV in {time.perf_counter() - t:.1f}s")
        return folder / "tosend.toml"

    def scenario(self, name: str) -> tuple[Path, dict[str, str]]:
        """A fresh folder and environment (per-user state of its own) for one scenario."""
        self.counter += 1
        work = self.base / f"{self.counter:02d}-{re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-')}"
        shutil.rmtree(work, ignore_errors=True)
        (work / "state").mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if k != "BATCHSEND_DB"}
        env.update(BATCHSEND_API_KEY=KEY, TOSEND_API_KEY=KEY, XDG_STATE_HOME=str(work / "state"))
        return work, env

    def workers_args(self, workers: int | None) -> list[str]:
        return [] if workers is None else ["--workers", str(workers)]

    def run_cmd(self, campaign: Path, url: str, db: Path, workers: int | None) -> list[str]:
        return [
            sys.executable,
            "-m",
            "batchsend",
            "run",
            str(campaign),
            "--base-url",
            url,
            "--db",
            str(db),
            "--json",
            *self.workers_args(workers),
        ]

    def cite(self, m: Measured, env: dict[str, str], sandbox: Sandbox) -> str:
        """Record the exact command (and its sandbox) behind a figure; returns [cN]."""
        prefix = f"BATCHSEND_API_KEY={KEY} XDG_STATE_HOME={shlex.quote(env['XDG_STATE_HOME'])} "
        if "--sdk-child" in m.command:
            prefix = f"TOSEND_API_KEY={KEY} "
        self.commands.append(
            f"(cd {shlex.quote(str(REPO))} && {prefix}{shlex.join(m.command)})"
            f"  # sandbox: {shlex.join(['python', *sandbox.args[1:]])} (its URL was {sandbox.url})"
        )
        return f"c{len(self.commands)}"

    def log(self, work: Path, name: str, m: Measured) -> None:
        with (work / f"{name}.log").open("w") as fh:
            fh.write(shlex.join(m.command) + f"\nrc={m.rc}\n--- stdout\n{m.stdout}\n--- stderr\n")
            fh.writelines(f"{t:8.2f} {line}\n" for t, line in m.stderr)

    def figure(
        self, name: str, value: str, goal: str = "", ok: bool | None = None, cite: str = ""
    ) -> None:
        verdict = "" if ok is None else ("OK" if ok else "MISSED")
        self.figures.append((name, value, goal, verdict, cite))
        print(f"  {name}: {value}" + (f"  [goal {goal}: {verdict}]" if goal else ""))

    @staticmethod
    def fail(what: str, m: Measured) -> None:
        tail = "\n".join(line for _, line in m.stderr[-15:])
        if "No such option" in tail and "--workers" in tail:
            tail += "\n(this batchsend has no --workers: run the bench with --no-workers-flag)"
        raise SystemExit(f"{what}: exit {m.rc}\n{shlex.join(m.command)}\n{tail}")

    def check_sent(self, m: Measured, rows: int, what: str, sent: int | None = None) -> None:
        counts = m.json.get("counts", {})
        if m.rc != 0 or counts.get("sent") != (rows if sent is None else sent):
            self.fail(f"{what} did not send every row (counts {counts})", m)

    # one full run

    def full_run(self, rows: int, workers: int | None, label: str) -> Measured:
        campaign = self.inputs(rows)
        work, env = self.scenario(f"run-{rows}-{label}")
        projected = SANDBOX_BASE_MB + rows * SANDBOX_KB_PER_MESSAGE / 1024
        available = proc_meminfo("MemAvailable") / 1024
        if projected > 0.8 * available:
            print(
                f"warning: the sandbox will need ~{projected:,.0f} MB for {rows:,} messages;"
                f" {available:,.0f} MB available"
            )
        sandbox = Sandbox(work)
        try:
            m = measure(
                self.run_cmd(campaign, sandbox.url, work / "batchsend.db", workers), env, sandbox
            )
            accepted = sandbox.accepted()
            sandbox_peak = sandbox.peak_mb()
        finally:
            sandbox.stop()
        self.log(work, "run", m)
        self.check_sent(m, rows, f"batchsend run ({label})")
        if accepted != rows:
            self.fail(f"the sandbox accepted {accepted:,}, not {rows:,}", m)
        c = self.cite(m, env, sandbox)
        print(f"-- {rows:,} rows, {label}")
        first = m.first_email or m.wall
        self.figure(
            f"{rows:,} {label}: time to first email",
            f"{first:.1f} s",
            "< 60 s" if rows <= 1_000_000 else "",
            first < 60 if rows <= 1_000_000 else None,
            c,
        )
        self.figure(
            f"{rows:,} {label}: preflight rate (rows / first email)",
            f"{rows / first:,.0f} rows/s",
            cite=c,
        )
        self.figure(
            f"{rows:,} {label}: whole run",
            f"{m.wall:.1f} s, {rows / m.wall:,.0f} msg/s, {m.cpu_s:.0f} CPU-s (batchsend)",
            cite=c,
        )
        self.figure(
            f"{rows:,} {label}: peak memory, tree (RSS sum)",
            f"{m.tree_peak_mb:.0f} MB"
            f" (PSS sum {m.tree_pss_peak_mb:.0f} MB; main process {m.main_peak_mb:.0f}"
            " MB)",
            "< 500 MB",
            m.tree_peak_mb < 500,
            c,
        )
        self.figure(
            f"{rows:,} {label}: sandbox",
            f"{accepted:,} accepted, peak {sandbox_peak:.0f} MB"
            f" (~{(sandbox_peak - SANDBOX_BASE_MB) * 1024 / rows:.2f} KB per message)",
            f"= {rows:,}",
            accepted == rows,
            c,
        )
        m.json["db"] = str(work / "batchsend.db")
        self.results["runs"][f"{rows}-{label}"] = self._summary(m, accepted, sandbox_peak)
        return m

    @staticmethod
    def _summary(m: Measured, accepted: int, sandbox_peak: float) -> dict:
        return {
            "command": m.command,
            "rc": m.rc,
            "wall_s": m.wall,
            "first_email_s": m.first_email,
            "main_peak_mb": m.main_peak_mb,
            "tree_peak_mb": m.tree_peak_mb,
            "tree_pss_peak_mb": m.tree_pss_peak_mb,
            "cpu_s": m.cpu_s,
            "sandbox_accepted": accepted,
            "sandbox_peak_mb": sandbox_peak,
            "run_id": m.json.get("run_id"),
            "counts": m.json.get("counts"),
        }

    # the SDK loop

    def sdk_loop(self, rows: int) -> Measured:
        campaign = self.inputs(rows)
        work, env = self.scenario(f"sdk-{rows}")
        sandbox = Sandbox(work)
        try:
            command = [
                sys.executable,
                "-m",
                "bench.scale_bench",
                "--sdk-child",
                str(campaign.parent),
                sandbox.url,
            ]
            m = measure(command, env, sandbox)
            accepted = sandbox.accepted()
            sandbox_peak = sandbox.peak_mb()
        finally:
            sandbox.stop()
        self.log(work, "sdk", m)
        if m.rc != 0 or m.json.get("sent") != rows or accepted != rows:
            self.fail(f"the SDK loop sent {m.json}, the sandbox accepted {accepted:,}", m)
        c = self.cite(m, env, sandbox)
        print(f"-- {rows:,} rows, the official-SDK loop")
        self.figure(
            f"{rows:,} SDK loop: whole run",
            f"{m.wall:.1f} s, {rows / m.wall:,.0f} msg/s,"
            f" first email {m.first_email or m.wall:.1f} s, peak {m.main_peak_mb:.0f} MB,"
            f" sandbox peak {sandbox_peak:.0f} MB",
            cite=c,
        )
        self.results["runs"][f"{rows}-sdk"] = self._summary(m, accepted, sandbox_peak)
        return m

    # resume of a half-sent run

    def resume(self, rows: int, workers: int | None, label: str) -> None:
        campaign = self.inputs(rows)
        work, env = self.scenario(f"resume-{rows}")
        db = work / "batchsend.db"
        half = rows // 2
        sandbox = Sandbox(work)
        try:
            first = measure(
                [*self.run_cmd(campaign, sandbox.url, db, workers), "--limit", str(half)],
                env,
                sandbox,
            )
            self.log(work, "run-half", first)
            self.check_sent(first, rows, "run --limit", sent=half)
            run_id = first.json["run_id"]
            baseline = sandbox.accepted()
            command = [
                sys.executable,
                "-m",
                "batchsend",
                "resume",
                run_id,
                "--db",
                str(db),
                "--base-url",
                sandbox.url,
                "--json",
                *self.workers_args(workers),
            ]
            m = measure(command, env, sandbox, baseline=baseline)
            accepted = sandbox.accepted()
        finally:
            sandbox.stop()
        self.log(work, "resume", m)
        self.check_sent(m, rows, "resume")
        c = self.cite(m, env, sandbox)
        print(f"-- resume of a half-sent {rows:,}-row run ({half:,} sent by run --limit), {label}")
        t = m.first_email if m.first_email is not None else m.wall
        self.figure(
            f"{rows:,} resume ({label}): time to first email", f"{t:.1f} s", "< 5 s", t < 5, c
        )
        self.figure(
            f"{rows:,} resume ({label}): whole resume",
            f"{m.wall:.1f} s for {rows - half:,} rows, tree peak {m.tree_peak_mb:.0f} MB,"
            f" sandbox {accepted:,} accepted",
            f"= {rows:,}",
            accepted == rows,
            c,
        )
        self.results["runs"][f"{rows}-resume"] = self._summary(m, accepted, 0)

    # a kill during preflight, then run again

    def kill(self, rows: int, workers: int | None, label: str, fresh: Measured) -> None:
        campaign = self.inputs(rows)
        work, env = self.scenario(f"kill-{rows}")
        db = work / "batchsend.db"
        record = work / "sandbox-record.jsonl"
        fresh_first = fresh.first_email or fresh.wall
        rng = random.Random(self.args.seed)
        sandbox = Sandbox(work, record=record)
        try:
            command = self.run_cmd(campaign, sandbox.url, db, workers)
            for attempt in range(1, 4):
                delay = rng.uniform(0.2, 0.9) * fresh_first
                killed = measure(command, env, sandbox, kill_at=delay)
                self.log(work, f"killed-{attempt}", killed)
                if killed.killed_at is None:
                    self.fail("the run ended before the kill", killed)
                if not killed.accepted_at_kill:
                    break
                print(f"  (kill at {delay:.1f}s came after the first email: again, earlier)")
            else:
                raise SystemExit("could not kill the run before its first email")
            again = measure(command, env, sandbox)
            typed = command
            if again.rc == 2:  # refused: what does batchsend tell the user to type?
                self.log(work, "refused", again)
                said = "\n".join(line for _, line in again.stderr)
                hint = re.search(r"batchsend (resume|run) [^\n`']+", said)
                print(f"  the second run was refused:\n{said}")
                if not hint:
                    self.fail("the second run was refused with no command to type", again)
                typed = [sys.executable, "-m", *shlex.split(hint.group(0))]
                for option, value in (("--base-url", sandbox.url), ("--db", str(db))):
                    if option not in typed:
                        typed += [option, value]
                if "--json" not in typed:
                    typed.append("--json")
                if workers is not None and "--workers" not in typed:
                    typed += self.workers_args(workers)
                again = measure(typed, env, sandbox)
            accepted = sandbox.accepted()
        finally:
            sandbox.stop()
        self.log(work, "again", again)
        self.check_sent(again, rows, "the run after the kill")
        c = self.cite(again, env, sandbox)
        print(f"-- kill during preflight of {rows:,} rows, then run again, {label}")
        self.figure(
            f"{rows:,} kill: killed at",
            f"{killed.killed_at:.1f} s (fresh first email"
            f" {fresh_first:.1f} s; seed {self.args.seed}), {killed.accepted_at_kill}"
            " emails before it",
            cite=c,
        )
        if typed is not command:
            self.figure(f"{rows:,} kill: the user had to type", shlex.join(typed[2:]), cite=c)
        second = again.first_email if again.first_email is not None else again.wall
        self.figure(
            f"{rows:,} kill: second run's preflight (time to first email)",
            f"{second:.1f} s vs fresh {fresh_first:.1f} s ({second / fresh_first:.2f}x)",
            cite=c,
        )
        kept = [line for _, line in again.stderr if KEPT_WORK.search(line)]
        kept += [f"json {k}: {v}" for k, v in again.json.items() if KEPT_KEYS.search(k) and v]
        kept += [f"note: {n}" for n in again.json.get("notes") or [] if KEPT_KEYS.search(n)]
        self.figure(
            f"{rows:,} kill: checked work kept (as batchsend says it)",
            " | ".join(kept)[:300] or "nothing said (today's run keeps no checked work)",
            cite=c,
        )
        # identical result: the database's rows, the sandbox's record
        states = _row_states(db, again.json["run_id"])
        fresh_states = _row_states(Path(fresh.json["db"]), fresh.json["run_id"])
        all_sent = states["counts"] == {"sent": rows}
        self.figure(
            f"{rows:,} kill: every row sent, states as a fresh run's",
            f"{states['counts']}; same per-row states as the fresh run:"
            f" {states['digest'] == fresh_states['digest']}",
            "identical",
            all_sent and states["digest"] == fresh_states["digest"],
            c,
        )
        delivered, distinct, same_set = _record_check(record, campaign.parent / "recipients.csv")
        self.figure(
            f"{rows:,} kill: sandbox record",
            f"{accepted:,} accepted, {delivered:,}"
            f" addresses recorded, {distinct:,} distinct, same set as the input:"
            f" {same_set}",
            f"{rows:,} once each",
            accepted == delivered == distinct == rows and same_set,
            c,
        )
        if not self.args.keep:
            record.unlink(missing_ok=True)
        self.results["runs"][f"{rows}-kill-again"] = self._summary(again, accepted, 0)
        self.results["runs"][f"{rows}-kill-again"]["killed_at_s"] = killed.killed_at


def _row_states(db: Path, run_id: str) -> dict:
    """The run's per-row states: counts, and a digest of (row, state) in row order."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        digest = hashlib.sha256()
        counts: dict[str, int] = {}
        query = "SELECT row, state FROM recipients WHERE run_id = ? ORDER BY row"
        for row, state in con.execute(query, (run_id,)):
            digest.update(f"{row}:{state}\n".encode())
            counts[state] = counts.get(state, 0) + 1
    finally:
        con.close()
    return {"counts": counts, "digest": digest.hexdigest()}


TO_FIELD = re.compile(r'"to": (\[[^\]]*\])')


def _record_check(record: Path, recipients: Path) -> tuple[int, int, bool]:
    """Addresses in the sandbox's record, distinct ones, and whether they are the input's."""
    seen: set[bytes] = set()
    total = 0
    with record.open(encoding="utf-8") as fh:
        for line in fh:
            match = TO_FIELD.search(line, 0, 2000)  # "to" comes before the body
            for address in json.loads(match.group(1)) if match else ():
                total += 1
                seen.add(hashlib.blake2b(address.lower().encode(), digest_size=12).digest())
    wanted: set[bytes] = set()
    with recipients.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            wanted.add(hashlib.blake2b(row["email"].lower().encode(), digest_size=12).digest())
    return total, len(seen), seen == wanted


# --- the command line ------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def _has_workers_flag() -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "batchsend", "run", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "--workers" in out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,2", help="comma-separated, one run each")
    parser.add_argument("--big", default="", help="N[,M...]: one extra run per size")
    parser.add_argument("--skip-sdk", action="store_true")
    parser.add_argument("--skip-kill", action="store_true")
    parser.add_argument("--skip-resume", action="store_true")
    parser.add_argument("--keep", type=Path, help="keep inputs, databases and logs here")
    parser.add_argument("--seed", type=int, default=None, help="the kill test's random moment")
    parser.add_argument(
        "--no-workers-flag",
        action="store_true",
        help="never pass --workers (a batchsend without it)",
    )
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    import batchsend

    where = Path(batchsend.__file__).resolve().parent.parent
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"cores: {os.cpu_count()} (nothing pinned: the sandbox shares them); batchsend from"
        f" {where} at {commit or '?'}"
    )
    if where != REPO:
        print(f"note: this process imports batchsend from {where}; the children run in {REPO}")
    flag = not args.no_workers_flag
    if flag and not _has_workers_flag():
        print("note: `batchsend run --help` lists no --workers: running without the flag")
        flag = False
    workers: list[int | None] = _sizes(args.workers) if flag else [None]
    top = workers[-1] if workers[-1] is None else max(w for w in workers if w is not None)

    def label(w: int | None) -> str:
        return "default workers (no flag)" if w is None else f"--workers {w}"

    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        base = args.keep.resolve()
    else:
        base = Path(tempfile.mkdtemp(prefix="batchsend-scale-"))
    print(f"work folder: {base}; sandbox options: {shlex.join(SANDBOX_OPTIONS)}")
    bench = Bench(args, base)
    started = time.perf_counter()
    try:
        rows = args.rows
        bench.inputs(rows)
        runs = {w: bench.full_run(rows, w, label(w)) for w in workers}
        if not args.skip_sdk:
            sdk = bench.sdk_loop(rows)
            for w, m in runs.items():
                ratio = sdk.wall / m.wall
                bench.figure(
                    f"{rows:,} SDK loop / batchsend ({label(w)})",
                    f"{ratio:.2f} ({sdk.wall:.1f} s / {m.wall:.1f} s)",
                    ">= 1.0",
                    ratio >= 1.0,
                )
        if len(runs) > 1:
            w1, w2 = min(runs), max(runs)
            a, b = runs[w1], runs[w2]
            fa, fb = a.first_email or a.wall, b.first_email or b.wall
            bench.figure(
                f"{rows:,} scaling {w1} -> {w2} workers",
                f"preflight rate x{fa / fb:.2f}"
                f" (first email {fa:.1f} s -> {fb:.1f} s), whole run x{a.wall / b.wall:.2f}",
            )
        if not args.skip_resume:
            bench.resume(rows, top, label(top))
        if not args.skip_kill:
            bench.kill(rows, top, label(top), runs[top])
        for big in _sizes(args.big):
            bench.full_run(big, top, label(top))
    finally:
        elapsed = time.perf_counter() - started
        print(f"\n== issue 16 scale benchmark: {os.cpu_count()} cores, {elapsed / 60:.1f} min")
        width = max((len(f[0]) for f in bench.figures), default=10)
        for name, value, goal, verdict, cite in bench.figures:
            judged = f"  goal {goal}: {verdict}" if goal else ""
            print(
                f"{name:<{width}}  {value}{judged}  [{cite}]"
                if cite
                else f"{name:<{width}}  {value}{judged}"
            )
        print("commands (run from the repository root, against a sandbox started as shown):")
        for i, command in enumerate(bench.commands, 1):
            print(f"  [c{i}] {command}")
        bench.results["figures"] = bench.figures
        bench.results["commands"] = bench.commands
        (base / "results.json").write_text(json.dumps(bench.results, indent=1))
        if args.keep:
            print(f"kept: {base} (results.json, logs, databases)")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--sdk-child":
        sdk_child(sys.argv[2], sys.argv[3])
    else:
        main()
