"""ToSend: ``POST /v2/emails`` and ``/v2/emails/batch``, ``GET /v2/info``, and the admin
API's ``GET /v2/emails/{message_id}`` (reconcile's lookups).

The contract is docs/providers.md, "tosend: ToSend v2". Personalised mail goes through
the batch endpoint, up to ``batch_size`` (default 100) different emails per request;
``batch_size=1`` uses the single-send endpoint. Each email carries ``message_hash`` =
its planned key, so the provider's ``message_id`` is known before the request leaves.

Classification (a batch's per-email results are classified the same way, each alone,
so one bad email never fails its neighbours):

====================================  ============================================
200 / batch ``success``               accepted (``message_id``)
batch ``spam`` (no ``status_code``)   permanent for that email (``disposable``)
403 ``to.spam`` (single send)         permanent for that email (``disposable``)
408, 429                              retryable (``Retry-After`` honoured)
5xx, another 2xx, an unreadable one   unknown: ToSend may have delivered it
401, 403 (key, credits, account)      fatal for the run
422 ``from``: domain not verified,    fatal for the run
not allowed for the key, not found
other 4xx                             permanent for that email (400, 404, 422)
====================================  ============================================

A calendar invite travels as an attachment: ToSend has no calendar field, so the
invite is ``invite.ics`` of type ``text/calendar; method=REQUEST``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from batchsend.errors import FatalSendError, RetryableSendError
from batchsend.outcome import MessageOutcome, OutcomeKind
from batchsend.plan import PlannedMessage, SendUnit
from batchsend.providers.base import (
    RETRYABLE_STATUSES,
    AccountInfo,
    HttpRequest,
    LookupAnswer,
    LookupKind,
    LookupTarget,
    Provider,
    _text,
    is_refusal,
    is_server_error,
    loads,
    rendered,
)
from batchsend.retry import RetryPolicy
from batchsend.transport import CONNECT_FAILURES, Transport, connect_hint, make_transport

SEND_PATH = "/v2/emails"
BATCH_PATH = "/v2/emails/batch"
INFO_PATH = "/v2/info"
MAX_BATCH = 100

_FATAL_DOMAIN_RULES = frozenset({"domain_not_verified", "domain_not_allowed", "domain_not_found"})
#: Rules that say every recipient was disposable: that email is never sent, on its own.
_SPAM_RULES = frozenset({"spam", "disposable"})
DISPOSABLE = "disposable"
#: Admin keys (the only keys that may read the delivery log) start with this.
INVITE_NAME = "invite.ics"
INVITE_TYPE = "text/calendar; method=REQUEST"


def _address(a: Any) -> dict[str, str]:
    return {"email": a.email, "name": a.name} if a.name else {"email": a.email}


class ToSendProvider(Provider):
    """ToSend. ``batch_size`` 2..100 uses the batch endpoint; 1 the single-send one."""

    name = "tosend"
    supports_batch = True

    def __init__(self, *, batch_size: int = MAX_BATCH, **kwargs: Any) -> None:
        if batch_size > MAX_BATCH:
            raise ValueError(f"ToSend takes at most {MAX_BATCH} emails per batch")
        super().__init__(batch_size=batch_size, **kwargs)
        self._send_url = self.base_url + SEND_PATH
        self._batch_url = self.base_url + BATCH_PATH

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"}

    def url_for(self, unit: SendUnit) -> str:
        return self._batch_url if unit.batch else self._send_url

    def request_body(self, unit: SendUnit) -> Any:
        if unit.batch:
            body = self.message_body
            return {"emails": [body(pm) for pm in unit.messages]}
        return self.message_body(unit.messages[0])

    def join_messages(self, unit: SendUnit, parts: list[bytes]) -> bytes:
        if unit.batch:  # what dumps({"emails": [...]}) gives, without encoding again
            return b'{"emails":[' + b",".join(parts) + b"]}"
        return super().join_messages(unit, parts)

    def message_body(self, planned: PlannedMessage) -> dict[str, Any]:
        m = rendered(planned)
        body: dict[str, Any] = {
            "from": _address(m.sender),
            "to": [_address(a) for a in m.to],
            "subject": m.subject,
        }
        if m.cc:
            body["cc"] = [_address(a) for a in m.cc]
        if m.bcc:
            body["bcc"] = [_address(a) for a in m.bcc]
        if m.reply_to is not None:
            body["reply_to"] = _address(m.reply_to)
        if m.html is not None:
            body["html"] = m.html
        if m.text is not None:
            body["text"] = m.text
        if m.headers:
            body["headers"] = dict(m.headers)
        if m.tags:
            body["tags"] = dict(m.tags)
        attachments = [_attachment(a) for a in m.attachments]
        if m.ical:
            attachments.append(
                {
                    "type": INVITE_TYPE,
                    "name": INVITE_NAME,
                    "content": base64.b64encode(m.ical.encode("utf-8")).decode("ascii"),
                }
            )
        if attachments:
            body["attachments"] = attachments
        body["message_hash"] = planned.key
        return body

    # --- answers ---------------------------------------------------------------------------

    def parse_response(
        self, unit: SendUnit, status: int, headers: Mapping[str, str], body: bytes
    ) -> list[MessageOutcome]:
        data = loads(body)
        if unit.batch and status in (200, 207):
            results = data.get("results") if isinstance(data, dict) else data
            if isinstance(results, list) and len(results) == len(unit.messages):
                return [
                    self._one(pm.key, r if isinstance(r, dict) else {}, status)
                    for pm, r in zip(unit.messages, results, strict=True)
                ]
            # ToSend processed the batch (200/207) but we cannot tell which email it
            # took: unknown, never sent again on our own.
            return self.same_for_all(
                unit,
                OutcomeKind.UNKNOWN,
                status,
                "bad_response",
                "the batch answer does not list one result per email",
            )
        if status == 200:
            if isinstance(data, dict) and data.get("message_id"):
                pm = unit.messages[0]
                return [
                    MessageOutcome(
                        pm.key,
                        OutcomeKind.ACCEPTED,
                        http_status=200,
                        provider_message_id=str(data["message_id"]),
                    )
                ]
            return self.same_for_all(
                unit, OutcomeKind.UNKNOWN, status, "bad_response", "200 without a message_id"
            )
        if not is_refusal(status) and not is_server_error(status):
            # A 2xx ToSend does not document (a gateway's 202, say), or anything stranger:
            # it may have been taken, and we cannot read that it was.
            return self.same_for_all(
                unit, OutcomeKind.UNKNOWN, status, "bad_response", f"unexpected HTTP {status}"
            )
        # The request as a whole was refused: every email shares the answer.
        data = data if isinstance(data, dict) else {}
        kind = classify(status, data)
        return self.same_for_all(
            unit,
            kind,
            status,
            _error_type(status, data),
            _text(data.get("message") or body[:200].decode("utf-8", "replace")),
            self.retry_after(headers) if kind is not OutcomeKind.PERMANENT else None,
        )

    def _one(self, key: str, result: dict[str, Any], batch_status: int) -> MessageOutcome:
        """One entry of a batch answer: ``success``, ``error`` or ``spam``."""
        kind_of = result.get("status")
        if kind_of == "success" and result.get("message_id"):
            return MessageOutcome(
                key,
                OutcomeKind.ACCEPTED,
                http_status=batch_status,
                provider_message_id=str(result["message_id"]),
            )
        message = _text(result.get("message") or "no result for this email")
        if kind_of == "spam":
            # every recipient disposable: never sent, and sending again changes nothing
            return MessageOutcome(
                key,
                OutcomeKind.PERMANENT,
                http_status=batch_status,
                error_type=DISPOSABLE,
                error_message=message,
            )
        status = result.get("status_code")
        status = status if isinstance(status, int) and not isinstance(status, bool) else 0
        if kind_of == "error":
            kind = classify(status, result) if status else OutcomeKind.PERMANENT
        else:  # a success without an id, or a shape ToSend does not document
            kind = OutcomeKind.UNKNOWN
        return MessageOutcome(
            key,
            kind,
            http_status=status or batch_status,
            error_type=_error_type(status, result) if kind_of == "error" else "bad_response",
            error_message=message,
        )

    # --- account ---------------------------------------------------------------------------

    def info_request(self) -> HttpRequest:
        """The ``GET /v2/info`` request."""
        headers = {k: v for k, v in self._base_headers.items() if k != "Content-Type"}
        return HttpRequest("GET", self.base_url + INFO_PATH, headers, None)

    def parse_info(
        self, status: int, body: bytes, headers: Mapping[str, str] | None = None
    ) -> AccountInfo:
        """``GET /v2/info``'s answer, or :class:`FatalSendError` saying what is wrong.

        A 429 or 5xx is :class:`RetryableSendError` carrying the answer's ``Retry-After``,
        so the account check waits as long as the provider asks, like a send does.
        """
        data = loads(body)
        data = data if isinstance(data, dict) else {}
        if status != 200:
            message = _text(data.get("message") or f"HTTP {status}")
            if status == 429 or 500 <= status <= 504:
                raise RetryableSendError(
                    f"GET /v2/info failed ({status}: {message})",
                    status=status,
                    error_type=_error_type(status, data),
                    retry_after=self.retry_after(headers) if headers else None,
                )
            if status in (401, 403):
                raise FatalSendError(
                    f"ToSend refused the API key ({status}: {message}); "
                    "check BATCHSEND_API_KEY or the campaign's api_key_file",
                    status=status,
                    error_type=_error_type(status, data),
                )
            raise FatalSendError(
                f"GET /v2/info failed ({status}: {message})",
                status=status,
                error_type=_error_type(status, data),
            )
        account = data.get("account") or {}
        domains = data.get("domains") or []
        verified = tuple(
            str(d.get("domain_name", "")).lower()
            for d in domains
            if isinstance(d, dict) and d.get("verification_status") == "verified"
        )
        pending = tuple(
            str(d.get("domain_name", "")).lower()
            for d in domains
            if isinstance(d, dict) and d.get("verification_status") != "verified"
        )
        credits = account.get("credit_balance")
        limit = account.get("limit_per_second")
        return AccountInfo(
            status=str(account.get("status") or "unknown"),
            credit_balance=int(credits) if isinstance(credits, int | float) else None,
            limit_per_second=float(limit) if isinstance(limit, int | float) and limit else None,
            verified_domains=verified,
            pending_domains=pending,
            plan_type=_opt(account.get("plan_type")),
        )

    async def account_info(
        self, transport: Transport | None = None, retry: RetryPolicy | None = None
    ) -> AccountInfo:
        """Ask ``GET /v2/info``. ``transport`` is shared when given, else a short-lived one.

        A 429, a 5xx, a timeout or a refused connection is tried again under ``retry``
        (a :class:`~batchsend.retry.RetryPolicy`; default 5 attempts within 60 s), as
        every send request is: a provider restarting as the run starts is not a reason
        to give up. Still failing, it is a :class:`FatalSendError` (nothing was sent).
        """
        request = self.info_request()
        policy = retry or RetryPolicy(max_attempts=5, max_time=60)

        async def ask(via: Any) -> AccountInfo:
            async def once(_attempt: int) -> AccountInfo:
                response = await via.send(request)
                return self.parse_info(response.status, response.body, response.headers)

            try:
                return await policy.call(once)
            except RetryableSendError as exc:
                unreachable = exc.error_type in CONNECT_FAILURES
                hint = f"; {connect_hint(request.url)}" if unreachable else ""
                raise FatalSendError(
                    f"{exc}; gave up after {policy.max_attempts} attempts, nothing was sent" + hint,
                    status=exc.status,
                    error_type="unreachable" if unreachable else exc.error_type,
                ) from None

        if transport is not None:
            return await ask(transport)
        async with make_transport("aiohttp", concurrency=1) as own:
            return await ask(own)

    # --- admin lookups (reconcile) ------------------------------------------------------

    def lookup_request(self, target: LookupTarget, page: int = 1) -> HttpRequest:
        """``GET /v2/emails/{message_id}`` for the message batchsend sent as ``message_hash``.

        The provider must have been built with an admin key (``tsend_admin_...``).
        """
        headers = {k: v for k, v in self._base_headers.items() if k != "Content-Type"}
        url = f"{self._send_url}/{quote(target.key, safe='')}"
        return HttpRequest("GET", url, headers, None)

    def parse_lookup(
        self,
        target: LookupTarget,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        page: int = 1,
    ) -> LookupAnswer:
        """The admin API's answer: 200 found, 404 not in the log; 429/5xx raise
        :class:`RetryableSendError` (a GET may always be asked again)."""
        data = loads(body)
        data = data if isinstance(data, dict) else {}
        if status == 200:
            record = data.get("data")
            if isinstance(record, dict) and str(record.get("message_id")) == target.key:
                return LookupAnswer(
                    LookupKind.FOUND,
                    provider_message_id=target.key,
                    accepted_at=_opt(record.get("created_at")),
                    detail=f"status {_text(record.get('status'), 40)}",
                )
            return LookupAnswer(LookupKind.FAILED, detail="a 200 without this message's record")
        message = _text(data.get("message") or body[:200].decode("utf-8", "replace"))
        errors = data.get("errors")
        errors = errors if isinstance(errors, dict) else {}
        if status == 404:
            if "endpoint" in errors:  # the route, not the message: no admin API there
                return LookupAnswer(
                    LookupKind.REFUSED,
                    detail=f"{self.base_url} has no admin lookup endpoint (404: {message})",
                )
            if data:  # the admin API's own JSON 404: no such message in the log
                return LookupAnswer(LookupKind.NOT_FOUND)
            # a 404 that is not ToSend's JSON (a proxy's page): it proves nothing
            return LookupAnswer(LookupKind.FAILED, detail=f"an unexpected 404: {message}")
        if status in RETRYABLE_STATUSES or is_server_error(status):
            raise RetryableSendError(
                f"GET /v2/emails/... failed ({status}: {message})",
                status=status,
                error_type=_error_type(status, data),
                retry_after=self.retry_after(headers),
            )
        if status in (401, 403):
            if errors.get("code") == "insufficient_scope":
                scope = _text(errors.get("required_scope") or "emails:read", 60)
                detail = (
                    f"the admin key lacks the scope {scope} (403 insufficient_scope); give it "
                    "that scope in ToSend, or use an admin key that has it"
                )
            else:
                detail = f"ToSend refused the admin key ({status}: {message})"
            return LookupAnswer(LookupKind.REFUSED, detail=detail)
        return LookupAnswer(LookupKind.FAILED, detail=f"unexpected HTTP {status}: {message}")


def check_account(info: AccountInfo, *, sender_domains: set[str], recipients: int) -> None:
    """Refuse to start a run the account cannot carry: :class:`FatalSendError` if so.

    ``sender_domains`` are the campaign's from-domains; ``recipients`` counts every
    address the run would send to (to + cc + bcc of every sendable row).
    """
    if info.status != "active":
        raise FatalSendError(
            f"the ToSend account is {info.status}, not active; nothing was sent",
            error_type="account_inactive",
        )
    for domain in sorted(sender_domains):
        if not info.domain_verified(domain):
            pending = domain.lower() in info.pending_domains
            state = "pending verification" if pending else "not on this account"
            raise FatalSendError(
                f"the sender domain {domain!r} is not verified on this ToSend account "
                f"({state}); verify it in ToSend, or change the campaign's sender",
                error_type="domain_not_verified",
            )
    if info.credit_balance is not None and info.credit_balance < recipients:
        raise FatalSendError(
            f"the ToSend account has {info.credit_balance} credits but this run needs "
            f"{recipients} (one per recipient); buy credits or send fewer rows (--limit)",
            error_type="insufficient_balance",
        )


def classify(status: int, data: Mapping[str, Any]) -> OutcomeKind:
    """The kind of a ToSend error answer (a whole response, or one batch result)."""
    if status in RETRYABLE_STATUSES:
        return OutcomeKind.RETRYABLE
    if not is_refusal(status):  # a 5xx, or an answer that is no refusal at all
        return OutcomeKind.UNKNOWN
    errors = data.get("errors")
    rules: dict[str, Any] = errors if isinstance(errors, dict) else {}
    if status == 401:
        return OutcomeKind.FATAL
    if status == 403:
        # Key invalid or credits exhausted stop the run; only an email whose every
        # recipient was disposable is refused on its own.
        if _is_spam(rules):
            return OutcomeKind.PERMANENT
        return OutcomeKind.FATAL
    if status == 422:
        from_rules = rules.get("from")
        if isinstance(from_rules, dict) and _FATAL_DOMAIN_RULES & from_rules.keys():
            return OutcomeKind.FATAL
    return OutcomeKind.PERMANENT


def _is_spam(rules: Mapping[str, Any]) -> bool:
    to_rules = rules.get("to")
    return isinstance(to_rules, dict) and bool(_SPAM_RULES & to_rules.keys())


def _error_type(status: int, data: Mapping[str, Any]) -> str:
    """The most specific reason we can name: the first rule, else ``error_type``."""
    errors = data.get("errors")
    if isinstance(errors, dict) and _is_spam(errors):
        return DISPOSABLE
    if isinstance(errors, dict):
        for field, rules in errors.items():
            if isinstance(rules, dict) and rules:
                rule = str(next(iter(rules)))
                # "domain_not_verified" speaks for itself; "invalid" needs its field.
                return rule if "_" in rule else f"{field}_{rule}"
    return str(data.get("error_type") or f"http_{status}")


def _attachment(a: Any) -> dict[str, str]:
    out = {
        "type": a.content_type,
        "name": a.filename,
        "content": base64.b64encode(a.content).decode("ascii"),
    }
    if a.content_id:
        out["content_id"] = a.content_id
    return out


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)
