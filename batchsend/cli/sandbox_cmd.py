"""``batchsend sandbox``: serve both provider APIs on loopback until Ctrl-C."""

from __future__ import annotations

import click

from batchsend.sandbox import Sandbox, is_loopback
from batchsend.sandbox.outcomes import DEFAULT_EVENT_DELAY_S
from batchsend.sandbox.rules import loopback_url_problem
from batchsend.sandbox.state import (
    ADMIN_KEY_PREFIX,
    DEFAULT_ADMIN_KEY,
    DEFAULT_KEEP_EVENTS,
    DEFAULT_KEEP_MESSAGES,
    INFO_SHAPES,
    WEBHOOK_SHAPES,
    SandboxConfig,
)

DEFAULT_KEY = "sk-test"
_DEFAULTS = SandboxConfig()


def _loopback(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not is_loopback(value):
        raise click.BadParameter(
            f"{value!r} is not a loopback address; the sandbox only listens on "
            "127.0.0.1, ::1 or localhost."
        )
    return value


def _webhook_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        problem = loopback_url_problem(value)
        if problem is not None:
            raise click.BadParameter(problem)
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
    "--slow-rate), to reproduce a run's faults, and for the delivery outcomes and "
    "--webhook-dup-rate, to reproduce a run's bounces, complaints and duplicates.",
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
    "--bounce-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of accepted recipients that bounce (a quarter of them soft), drawn "
    "from --seed and the message, not the order it came in.",
)
@click.option(
    "--complaint-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of delivered recipients that complain (mark it as spam).",
)
@click.option(
    "--open-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of delivered recipients that open the message.",
)
@click.option(
    "--click-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of delivered recipients that click its first link (and so open it).",
)
@click.option(
    "--event-delay",
    "event_delay_s",
    type=click.FloatRange(min=0),
    default=DEFAULT_EVENT_DELAY_S,
    show_default=True,
    metavar="SECONDS",
    help="How long after acceptance a delivery or bounce happens (an open or complaint "
    "one more delay later, a click a third).",
)
@click.option(
    "--keep-events",
    type=click.IntRange(min=0),
    default=DEFAULT_KEEP_EVENTS,
    show_default=True,
    metavar="N",
    help="Events kept in memory for /_sandbox/events, the Events API and webhooks; the "
    "oldest go first.",
)
@click.option(
    "--webhook-url",
    callback=_webhook_url,
    default=None,
    metavar="URL",
    help="Post both providers' events here (loopback only: 127.0.0.0/8, ::1, localhost).",
)
@click.option(
    "--tosend-webhook-url",
    callback=_webhook_url,
    default=None,
    metavar="URL",
    help="Post ToSend's events (bounced, complaint) here instead (loopback only).",
)
@click.option(
    "--v1-webhook-url",
    callback=_webhook_url,
    default=None,
    metavar="URL",
    help="Post v1's events (every type) here instead (loopback only; v1 signs nothing, so "
    "put a secret in the path).",
)
@click.option(
    "--webhook-secret",
    envvar="BATCHSEND_SANDBOX_WEBHOOK_SECRET",
    default=None,
    metavar="SECRET",
    help="Sign ToSend's posts: X-ToSend-Signature: sha256=<HMAC-SHA256 of the body>. "
    "Also read from $BATCHSEND_SANDBOX_WEBHOOK_SECRET.",
)
@click.option(
    "--webhook-shape",
    type=click.Choice(WEBHOOK_SHAPES),
    default="current",
    show_default=True,
    help="Which of ToSend's three documented webhook bodies to post.",
)
@click.option(
    "--webhook-dup-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of acknowledged events posted a second time, as providers warn they may.",
)
@click.option(
    "--webhook-max-attempts",
    type=click.IntRange(min=1),
    default=_DEFAULTS.webhook_max_attempts,
    show_default=True,
    metavar="N",
    help="Posts of one event at most: one answered other than 2xx, refused or timed out "
    "is tried again after --webhook-backoff, doubling each time.",
)
@click.option(
    "--webhook-backoff",
    "webhook_backoff_s",
    type=click.FloatRange(min=0),
    default=_DEFAULTS.webhook_backoff_s,
    show_default=True,
    metavar="SECONDS",
    help="The wait before the first retry of a webhook post.",
)
@click.option(
    "--webhook-timeout",
    "webhook_timeout_s",
    type=click.FloatRange(min=0, min_open=True),
    default=_DEFAULTS.webhook_timeout_s,
    show_default=True,
    metavar="SECONDS",
    help="How long a webhook post may take before it counts as unacknowledged.",
)
@click.option(
    "--webhook-concurrency",
    type=click.IntRange(min=1),
    default=_DEFAULTS.webhook_concurrency,
    show_default=True,
    metavar="N",
    help="Webhook posts in flight at once.",
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
    bounce_rate: float,
    complaint_rate: float,
    open_rate: float,
    click_rate: float,
    event_delay_s: float,
    keep_events: int,
    webhook_url: str | None,
    tosend_webhook_url: str | None,
    v1_webhook_url: str | None,
    webhook_secret: str | None,
    webhook_shape: str,
    webhook_dup_rate: float,
    webhook_max_attempts: int,
    webhook_backoff_s: float,
    webhook_timeout_s: float,
    webhook_concurrency: int,
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

    After acceptance each recipient is delivered, bounces, complains, opens and clicks
    as --bounce-rate, --complaint-rate, --open-rate and --click-rate draw it (the same
    with the same --seed), or as its address says: bounce@, softbounce@, complaint@,
    success@ on any domain. Those events are listed at GET /_sandbox/events, by v1's
    Events API and both suppression lists (GET /v2/suppressions,
    /api/customer/suppressions), and posted to --webhook-url (loopback only) as each
    provider would, retried with back-off.

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
      batchsend sandbox --bounce-rate 0.05 --complaint-rate 0.01 --open-rate 0.4 \\
          --click-rate 0.1 --event-delay 2 --seed 7 --keep-events 100000 \\
          --tosend-webhook-url http://127.0.0.1:9000/hooks/tosend \\
          --v1-webhook-url http://127.0.0.1:9000/hooks/v1/TOKEN --webhook-shape legacy \\
          --webhook-secret whsec-test --webhook-dup-rate 0.1 --webhook-max-attempts 5 \\
          --webhook-backoff 1 --webhook-timeout 10 --webhook-concurrency 4
      batchsend sandbox --webhook-url http://127.0.0.1:9000/hooks
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
        bounce_rate=bounce_rate,
        complaint_rate=complaint_rate,
        open_rate=open_rate,
        click_rate=click_rate,
        event_delay_s=event_delay_s,
        keep_events=keep_events,
        webhook_url=webhook_url,
        tosend_webhook_url=tosend_webhook_url,
        v1_webhook_url=v1_webhook_url,
        webhook_secret=webhook_secret,
        webhook_shape=webhook_shape,
        webhook_dup_rate=webhook_dup_rate,
        webhook_max_attempts=webhook_max_attempts,
        webhook_backoff_s=webhook_backoff_s,
        webhook_timeout_s=webhook_timeout_s,
        webhook_concurrency=webhook_concurrency,
    )

    def banner(running: Sandbox) -> None:
        click.echo(f"sandbox listening on {running.base_url}", err=False)
        click.echo(f"  v1:     POST {running.base_url}/api/v1/send")
        click.echo(f"  ToSend: POST {running.base_url}/v2/emails, /v2/emails/batch; GET /v2/info")
        click.echo(f"  lookups: GET {running.base_url}/v2/emails[/ID] (admin key), /api/v1/events")
        click.echo(
            f"  inspect: GET {running.base_url}/_sandbox/messages, /_sandbox/events, "
            "/_sandbox/stats"
        )
        click.echo("  accepted API keys: " + ", ".join(running.api_keys))
        click.echo("  admin keys: " + ", ".join(running.config.admin_keys))
        for provider in ("tosend", "v1"):
            url = running.state.webhook_url(provider)
            if url is not None:
                click.echo(f"  {provider} webhooks: POST {url}")
        click.echo("Ctrl-C to stop.")

    try:
        server.serve_forever(on_ready=banner)
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from exc
