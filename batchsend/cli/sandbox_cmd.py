"""``batchsend sandbox``: serve both provider APIs on loopback until Ctrl-C."""

from __future__ import annotations

import click

from batchsend.sandbox import Sandbox, is_loopback
from batchsend.sandbox.state import DEFAULT_KEEP_MESSAGES

DEFAULT_KEY = "sk-test"


def _loopback(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not is_loopback(value):
        raise click.BadParameter(
            f"{value!r} is not a loopback address; the sandbox only listens on "
            "127.0.0.1, ::1 or localhost."
        )
    return value


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
    "--rate-limit",
    type=click.IntRange(min=1),
    default=None,
    metavar="REQ_PER_S",
    help="Requests per wall-clock second; beyond it 429 with Retry-After "
    "(v1 also X-RateLimit-*). Default: unlimited.",
)
@click.option(
    "--fail-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Probability that a send is answered 500, 502 or 503 (nothing accepted).",
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
    "--seed",
    type=int,
    default=None,
    help="Seed for --fail-rate and --drop-rate, to reproduce a run's faults.",
)
@click.option(
    "--keep-messages",
    type=click.IntRange(min=0),
    default=DEFAULT_KEEP_MESSAGES,
    show_default=True,
    metavar="N",
    help="Accepted messages kept in memory for /_sandbox/messages (about 4-5 KB each); "
    "older ones are forgotten but counted (--record still writes every one).",
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
    rate_limit: int | None,
    fail_rate: float,
    latency_ms: float,
    drop_rate: float,
    seed: int | None,
    keep_messages: int,
    record: str | None,
) -> None:
    """Serve both provider APIs on loopback, for trying and testing batchsend offline.

    Serves v1 (POST /api/v1/send) and ToSend (POST /v2/emails, POST /v2/emails/batch,
    GET /v2/info) until Ctrl-C, and prints the base URL and the accepted keys. Every
    accepted message can be inspected, without a key, at GET /_sandbox/messages;
    counters at GET /_sandbox/stats; settings change live with POST /_sandbox/config
    (a JSON object, e.g. {"fail_rate": 0.2}). Like ToSend's edge, the ToSend routes
    refuse urllib's default User-Agent (403 "error code: 1010"): set your own.

    \b
    Defaults: key sk-test, verified domain example.com, port 8025, no faults.

    \b
    Example:
      batchsend sandbox
      batchsend sandbox --host 127.0.0.1 --port 8025 --api-key sk-live-test \\
          --domain acme.com --pending-domain news.acme.com --credits 1000 --rate-limit 50
      batchsend sandbox --fail-rate 0.1 --drop-rate 0.05 --latency 20 --seed 7 \\
          --record sent.jsonl --keep-messages 10000
      batchsend sandbox --api-key sk-a --api-key sk-b --domain a.com --domain b.com \\
          --key-domain sk-b=b.com
    """
    server = Sandbox(
        api_keys=api_keys or (DEFAULT_KEY,),
        domains=domains or ("example.com",),
        pending_domains=pending_domains,
        credits=credits,
        rate_limit=rate_limit,
        fail_rate=fail_rate,
        latency_ms=latency_ms,
        drop_rate=drop_rate,
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
        click.echo(f"  inspect: GET {running.base_url}/_sandbox/messages, /_sandbox/stats")
        click.echo("  accepted API keys: " + ", ".join(running.api_keys))
        click.echo("Ctrl-C to stop.")

    try:
        server.serve_forever(on_ready=banner)
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from exc
