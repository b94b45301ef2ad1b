"""``batchsend sandbox``: serve both provider APIs on loopback until Ctrl-C."""

from __future__ import annotations

import click

from batchsend.sandbox import Sandbox, is_loopback
from batchsend.sandbox.state import (
    ADMIN_KEY_PREFIX,
    DEFAULT_ADMIN_KEY,
    DEFAULT_KEEP_MESSAGES,
    INFO_SHAPES,
)

DEFAULT_KEY = "sk-test"


def _loopback(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not is_loopback(value):
        raise click.BadParameter(
            f"{value!r} is not a loopback address; the sandbox only listens on "
            "127.0.0.1, ::1 or localhost."
        )
    return value


def _admin_keys(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    for value in values:
        if not value.startswith(ADMIN_KEY_PREFIX):
            raise click.BadParameter(f"admin keys start with {ADMIN_KEY_PREFIX!r}")
    return values


def _key_domains(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for value in values:
        key, sep, domain = value.partition("=")
        if not sep or not key or not domain:
            raise click.BadParameter(f"{value!r}: expected KEY=DOMAIN, e.g. sk-test=example.com")
        out.setdefault(key, []).append(domain)
    return out


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    callback=_loopback,
    help="Loopback address to listen on (anything else is refused).",
)
@click.option(
    "--port",
    default=8025,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on; 0 picks a free one.",
)
@click.option(
    "--api-key",
    "api_keys",
    multiple=True,
    metavar="KEY",
    help=f"A key the sandbox accepts (repeatable). Default: {DEFAULT_KEY}.",
)
@click.option(
    "--domain",
    "domains",
    multiple=True,
    metavar="DOMAIN",
    help="A verified sending domain (repeatable; the first is v1's default). Default: example.com.",
)
@click.option(
    "--pending-domain",
    "pending_domains",
    multiple=True,
    metavar="DOMAIN",
    help="A domain on the account that is NOT verified (repeatable): sends from "
    "it fail (ToSend 422, v1 403) and /v2/info lists it as pending.",
)
@click.option(
    "--key-domain",
    "key_domains",
    multiple=True,
    metavar="KEY=DOMAIN",
    callback=_key_domains,
    help="Restrict KEY to DOMAIN (repeatable); other domains answer "
    "'domain not allowed for this API key'.",
)
@click.option(
    "--credits",
    type=click.IntRange(min=0),
    default=None,
    help="Credit balance: one credit per accepted recipient (to+cc+bcc); "
    "then 403 insufficient_balance. Default: not credit-based.",
)
@click.option(
    "--tosend-emails-per-second",
    type=click.IntRange(min=1),
    default=None,
    metavar="EMAILS",
    help="ToSend's sending rate in EMAILS/s (every to+cc+bcc address of every message "
    "counts), reported as limit_per_second by /v2/info: a bucket of one second's worth, "
    "refilled continuously; beyond it 429 with Retry-After. Default: unlimited.",
)
@click.option(
    "--v1-requests-per-minute",
    type=click.IntRange(min=1),
    default=None,
    metavar="REQUESTS",
    help="v1 requests in any sliding 60 s (the real service: 600); every v1 answer then "
    "carries X-RateLimit-Limit/-Remaining/-Reset, 429 with Retry-After beyond it. "
    "Default: unlimited.",
)
@click.option(
    "--idempotency-keys",
    is_flag=True,
    default=False,
    help="Model a provider that honours Idempotency-Key: a repeat with the same body "
    "replays the first answer, a different body is 409. Neither real provider does; "
    "by default a request sent twice is two messages.",
)
@click.option(
    "--info-shape",
    type=click.Choice(INFO_SHAPES),
    default="current",
    show_default=True,
    help="Which documented GET /v2/info body to answer with.",
)
@click.option(
    "--admin-key",
    "admin_keys",
    multiple=True,
    metavar="KEY",
    callback=_admin_keys,
    help="A ToSend admin key (tsend_admin_..., repeatable) for GET /v2/emails and "
    f"GET /v2/emails/ID, with the emails:read scope. Default: {DEFAULT_ADMIN_KEY}.",
)
@click.option(
    "--events-api",
    type=click.Choice(("on", "off")),
    default="on",
    show_default=True,
    help="v1's Events API (GET /api/v1/events, /api/v1/emails/ID/events); off answers "
    "403 event_api_disabled, as for an account without it.",
)
@click.option(
    "--fail-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Probability that a send is refused BEFORE processing: 500, 502 or 503, nothing accepted.",
)
@click.option(
    "--latency",
    "latency_ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="MS",
    help="Delay every provider answer by MS.",
)
@click.option(
    "--drop-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Probability that an ACCEPTED send gets no answer: the connection is "
    "closed after the message was recorded (the 'unknown outcome' case).",
)
@click.option(
    "--fail-after-accept-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Probability that an ACCEPTED send is answered 500 (the message was delivered).",
)
@click.option(
    "--slow-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Probability that an ACCEPTED send is answered only after --slow-ms (a client "
    "timeout shorter than that sees no answer, though the message was delivered).",
)
@click.option(
    "--slow-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="MS",
    help="How late a --slow-rate answer comes.",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Seed for every drawn fault (--fail-rate, --drop-rate, --fail-after-accept-rate, "
    "--slow-rate), to reproduce a run's faults.",
)
@click.option(
    "--keep-messages",
    type=click.IntRange(min=0),
    default=DEFAULT_KEEP_MESSAGES,
    show_default=True,
    metavar="N",
    help="Accepted messages kept whole in memory for /_sandbox/messages (a few KB "
    "each); older ones are compacted to what lookups need (a fraction of that) and "
    "still found by the admin and events endpoints (--record writes every one).",
)
@click.option(
    "--record",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Append every accepted message to this file as a JSON line.",
)
def sandbox(
    host: str,
    port: int,
    api_keys: tuple[str, ...],
    domains: tuple[str, ...],
    pending_domains: tuple[str, ...],
    key_domains: dict[str, list[str]],
    credits: int | None,
    tosend_emails_per_second: int | None,
    v1_requests_per_minute: int | None,
    idempotency_keys: bool,
    info_shape: str,
    admin_keys: tuple[str, ...],
    events_api: str,
    fail_rate: float,
    latency_ms: float,
    drop_rate: float,
    fail_after_accept_rate: float,
    slow_rate: float,
    slow_ms: float,
    seed: int | None,
    keep_messages: int,
    record: str | None,
) -> None:
    """Serve both provider APIs on loopback, behaving as the real services document.

    Serves v1 (POST /api/v1/send; GET /api/v1/events, /api/v1/emails/ID/events) and
    ToSend (POST /v2/emails, POST /v2/emails/batch, GET /v2/info; with an admin key
    GET /v2/emails, /v2/emails/ID) until Ctrl-C, and prints the base URL and the keys.
    As at both real providers, nothing is de-duplicated: a request sent twice is two
    messages (--idempotency-keys models one that honours Idempotency-Key). Every
    accepted message can be inspected, without a key, at GET /_sandbox/messages;
    counters at GET /_sandbox/stats; settings change live with POST /_sandbox/config
    (a JSON object, e.g. {"fail_rate": 0.2}). Like ToSend's edge, the ToSend routes
    refuse urllib's default User-Agent (403 "error code: 1010"): set your own.
    docs/sandbox.md records each behaviour the providers' documents leave open.

    \b
    Defaults: key sk-test, admin key tsend_admin_test, verified domain example.com,
    port 8025, no rate limits, no faults, no idempotency.

    \b
    Example:
      batchsend sandbox
      batchsend sandbox --host 127.0.0.1 --port 8025 --api-key sk-live-test \\
          --domain acme.com --pending-domain news.acme.com --credits 1000 \\
          --tosend-emails-per-second 14 --v1-requests-per-minute 600
      batchsend sandbox --fail-rate 0.1 --drop-rate 0.05 --fail-after-accept-rate 0.05 \\
          --slow-rate 0.05 --slow-ms 5000 --latency 20 --seed 7 \\
          --record sent.jsonl --keep-messages 10000
      batchsend sandbox --api-key sk-a --api-key sk-b --domain a.com --domain b.com \\
          --key-domain sk-b=b.com
    """
    server = Sandbox(
        api_keys=api_keys or (DEFAULT_KEY,),
        domains=domains or ("example.com",),
        pending_domains=pending_domains,
        credits=credits,
        tosend_emails_per_second=tosend_emails_per_second,
        v1_requests_per_minute=v1_requests_per_minute,
        idempotency_keys=idempotency_keys,
        info_shape=info_shape,
        admin_keys=admin_keys or (DEFAULT_ADMIN_KEY,),
        events_api=events_api == "on",
        fail_rate=fail_rate,
        latency_ms=latency_ms,
        drop_rate=drop_rate,
        fail_after_accept_rate=fail_after_accept_rate,
        slow_rate=slow_rate,
        slow_ms=slow_ms,
        seed=seed,
        record=record,
        host=host,
        port=port,
        key_domains=key_domains,
        keep_messages=keep_messages,
    )

    def banner(running: Sandbox) -> None:
        click.echo(f"sandbox listening on {running.base_url}", err=False)
        click.echo(f"  v1:     POST {running.base_url}/api/v1/send")
        click.echo(f"  ToSend: POST {running.base_url}/v2/emails, /v2/emails/batch; GET /v2/info")
        click.echo(f"  lookups: GET {running.base_url}/v2/emails[/ID] (admin key), /api/v1/events")
        click.echo(f"  inspect: GET {running.base_url}/_sandbox/messages, /_sandbox/stats")
        click.echo("  accepted API keys: " + ", ".join(running.api_keys))
        click.echo("  admin keys: " + ", ".join(running.config.admin_keys))
        click.echo("Ctrl-C to stop.")

    try:
        server.serve_forever(on_ready=banner)
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from exc
