"""The HTTP seam: one shared connection pool, sending bytes a provider prepared.

Two transports, chosen by name:

* ``"aiohttp"`` (default): it spends far less CPU per request than httpx, which is what
  lets one core keep a provider busy on v1's one-request-per-recipient API
  (docs/engine.md, "Choosing the HTTP client"; ``bench/send_bench.py`` measures it);
* ``"httpx"``: ``httpx.AsyncClient``, batchsend's first design, kept selectable
  (``--http-client httpx``). httpx is an optional extra (``pip install
  'batchsend[httpx]'``): :func:`require_transport` says so before anything is sent.

Both open ONE client for the whole run with at most ``concurrency`` connections, and
turn the library's own failures into one of two errors, so nothing above this module
knows which library is underneath (docs/engine.md, "Was it processed?"):

* :class:`RetryableSendError`, the request never reached the provider: the connection
  was refused or could not be made (``connection_refused``), or making it timed out
  (``connect_timeout``). Safe to send again.
* :class:`UncertainSendError`, the request was (or may have been) written and no
  complete answer came back: a read timeout (``timeout``), the connection closed or
  broken mid-answer (``connection_lost``). The provider may have delivered it.

Neither library re-sends a POST on its own (aiohttp retries a broken keep-alive
connection only for idempotent methods; httpx never), so one ``send`` is at most one
delivery.

Example::

    async with make_transport("aiohttp", concurrency=16) as transport:
        response = await transport.send(provider.build_request(unit))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import urlsplit

from batchsend.apikeys import is_loopback_url
from batchsend.errors import FatalSendError, InputError, RetryableSendError, UncertainSendError

TRANSPORTS = ("aiohttp", "httpx")
DEFAULT_TIMEOUT = 30.0
#: The ``error_type`` of a request that never reached the provider: no connection was made.
CONNECT_FAILURES = frozenset({"connection_refused", "connect_timeout"})
#: Connecting takes at most this long (or the whole timeout, when shorter): a request
#: whose connection is not made in time has not left, so it may be tried again.
CONNECT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One request, ready to go: the body is already the final bytes."""

    method: str
    url: str
    headers: Mapping[str, str] = field(repr=False)  # carries the API key: never printed
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What came back: headers are case-insensitive (each library's own mapping)."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class Transport(Protocol):
    """Sends one prepared request; usable as an async context manager."""

    name: str

    async def send(self, request: HttpRequest) -> HttpResponse: ...

    async def __aenter__(self) -> Transport: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def make_transport(
    name: str = "aiohttp", *, concurrency: int = 16, timeout: float = DEFAULT_TIMEOUT
) -> AiohttpTransport | HttpxTransport:
    """A transport by name (``"aiohttp"`` or ``"httpx"``), pool sized to ``concurrency``."""
    require_transport(name)
    if name == "httpx":
        return HttpxTransport(concurrency=concurrency, timeout=timeout)
    return AiohttpTransport(concurrency=concurrency, timeout=timeout)


def require_transport(name: str) -> None:
    """Raise unless transport ``name`` can be used here: called before a run records or
    sends anything, so a missing optional library costs nothing.

    :class:`InputError` (exit 2) when ``name`` is ``"httpx"`` and httpx is not installed,
    naming the extra that installs it; :class:`ValueError` for a name that is no
    transport at all.
    """
    if name not in TRANSPORTS:
        raise ValueError(f"unknown HTTP client {name!r}; choose one of: {', '.join(TRANSPORTS)}")
    if name == "httpx":
        _import_httpx()


def _import_httpx() -> Any:
    try:
        # httpx is an optional dependency (the batchsend[httpx] extra), imported only
        # when its transport is chosen, so the default path runs without it.
        import httpx
    except ImportError:
        raise InputError(
            "the httpx transport (--http-client httpx) needs httpx, which is not installed",
            fix="pip install 'batchsend[httpx]', or leave out --http-client (aiohttp)",
        ) from None
    return httpx


def base_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a provider's URL (``is not an http(s) URL``...), or None.

    The one check of a base URL: the campaign file's ``base_url``, ``--base-url`` and
    every request's URL at send time. It asks for an ``http://`` or ``https://`` URL with
    a host and a port in 1-65535; what each HTTP library then parses it into is its own.
    """
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError: out of range, a broken IPv6 literal
    except ValueError as exc:
        return f"is not a valid URL: {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "is not an http(s) URL"
    if port is not None and not 0 < port < 65536:
        return f"is not a valid URL: port {port} is out of range (1-65535)"
    return None


def _check_url(url: str) -> None:
    """Refuse, before it leaves, a request to what no provider URL can be."""
    problem = base_url_problem(url)
    if problem is not None:
        raise FatalSendError(f"invalid provider URL: it {problem}", error_type="bad_url") from None


class AiohttpTransport:
    """aiohttp's client: one ``ClientSession``, a connector limited to ``concurrency``."""

    name = "aiohttp"

    def __init__(self, *, concurrency: int = 16, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.concurrency = concurrency
        self.timeout = timeout
        self._session: Any = None
        self._urls: dict[str, Any] = {}

    async def __aenter__(self) -> AiohttpTransport:
        import aiohttp
        import yarl

        self._yarl = yarl
        self._aiohttp = aiohttp
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=0),
            # ``connect`` bounds waiting for a pooled connection and making one: a request
            # stopped there never left. ``total`` still bounds the whole exchange.
            timeout=aiohttp.ClientTimeout(
                total=self.timeout, connect=min(CONNECT_TIMEOUT, self.timeout)
            ),
            # our User-Agent comes from the provider's headers
            skip_auto_headers=("User-Agent",),
            auto_decompress=True,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _url(self, url: str) -> Any:
        # Parsing the same URL for every request costs more than the cache lookup.
        parsed = self._urls.get(url)
        if parsed is None:
            _check_url(url)
            try:
                parsed = self._yarl.URL(url)
            except ValueError as exc:  # a port out of range, a broken IPv6 literal
                raise FatalSendError(f"invalid provider URL: {exc}", error_type="bad_url") from None
            self._urls[url] = parsed
        return parsed

    async def send(self, request: HttpRequest) -> HttpResponse:
        """Send ``request``; see the module notes for the two kinds of failure."""
        if self._session is None:
            raise RuntimeError("use the transport as 'async with make_transport(...)'")
        aiohttp = self._aiohttp
        url = self._url(request.url)
        try:
            # Never follow a redirect: it would carry the key (X-API-Key travels to any
            # host) and the body somewhere the user did not choose.
            async with self._session.request(
                request.method,
                url,
                data=request.body,
                headers=request.headers,
                allow_redirects=False,
            ) as response:
                body = await response.read()
                return HttpResponse(response.status, response.headers, body)
        except aiohttp.ConnectionTimeoutError:
            raise not_sent("connect_timeout", _timed_out(request.url)) from None
        except aiohttp.ClientConnectorError as exc:
            raise not_sent("connection_refused", _refused(request.url, _reason(exc))) from None
        except TimeoutError:
            raise maybe_sent("timeout", f"no answer within {self.timeout:g} s") from None
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            # Only the URL is fatal: any other error inside the request stays what it is
            # (a ValueError there is a bug to see, not a provider to give up on).
            raise FatalSendError(f"invalid provider URL: {exc}", error_type="bad_url") from None
        except aiohttp.ClientError as exc:
            raise maybe_sent(
                "connection_lost",
                f"the connection broke before a full answer ({type(exc).__name__})",
            ) from None


class HttpxTransport:
    """httpx's ``AsyncClient`` with ``max_connections=concurrency``."""

    name = "httpx"

    def __init__(self, *, concurrency: int = 16, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.concurrency = concurrency
        self.timeout = timeout
        self._client: Any = None
        self._urls: dict[str, Any] = {}

    async def __aenter__(self) -> HttpxTransport:
        httpx = self._httpx = _import_httpx()
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=self.concurrency, max_keepalive_connections=self.concurrency
            ),
            timeout=self.timeout,
            follow_redirects=False,  # as aiohttp: the key never follows a redirect
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _url(self, url: str) -> Any:
        """The parsed URL, checked once: httpx itself accepts a port out of range (anyio
        then fails deep inside the connect) and a URL without a host."""
        parsed = self._urls.get(url)
        if parsed is None:
            _check_url(url)
            try:
                parsed = self._httpx.URL(url)
            except self._httpx.InvalidURL as exc:
                raise FatalSendError(f"invalid provider URL: {exc}", error_type="bad_url") from None
            self._urls[url] = parsed
        return parsed

    async def send(self, request: HttpRequest) -> HttpResponse:
        """Send ``request``; see the module notes for the two kinds of failure."""
        if self._client is None:
            raise RuntimeError("use the transport as 'async with make_transport(...)'")
        httpx = self._httpx
        url = self._url(request.url)
        try:
            response = await self._client.request(
                request.method, url, content=request.body, headers=request.headers
            )
        except (httpx.ConnectTimeout, httpx.PoolTimeout):
            raise not_sent("connect_timeout", _timed_out(request.url)) from None
        except httpx.TimeoutException:  # read or write: the request may be at the provider
            raise maybe_sent("timeout", f"no answer within {self.timeout:g} s") from None
        except httpx.ConnectError as exc:
            raise not_sent("connection_refused", _refused(request.url, str(exc))) from None
        except httpx.InvalidURL as exc:
            # Only the URL is fatal: any other ValueError inside the request is a bug to
            # see, not a provider to give up on (as with aiohttp).
            raise FatalSendError(f"invalid provider URL: {exc}", error_type="bad_url") from None
        except (httpx.TransportError, httpx.UnsupportedProtocol) as exc:
            if isinstance(exc, httpx.UnsupportedProtocol):
                raise FatalSendError(f"invalid provider URL: {exc}", error_type="bad_url") from None
            raise maybe_sent(
                "connection_lost",
                f"the connection broke before a full answer ({type(exc).__name__})",
            ) from None
        return HttpResponse(response.status_code, response.headers, response.content)


def not_sent(error_type: str, message: str) -> RetryableSendError:
    """The request never reached the provider: safe to send again."""
    return RetryableSendError(message, error_type=error_type)


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url``: where a request goes, without its path or query."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}" if parts.netloc else url
    except ValueError:
        return url


def connect_hint(url: str) -> str:
    """What to check when nothing answers at ``url``: a local provider is most often a
    sandbox that is not running; a remote one, the URL or the network."""
    if is_loopback_url(url):
        return "is `batchsend sandbox` (or your local provider) running? check base_url"
    return "check base_url, and that this machine can reach it"


def _refused(url: str, reason: str) -> str:
    return f"cannot connect to {origin(url)}: {reason}"


def _timed_out(url: str) -> str:
    return f"connecting to {origin(url)} timed out"


def maybe_sent(error_type: str, message: str) -> UncertainSendError:
    """The request may have been processed: its messages are unknown."""
    return UncertainSendError(message, error_type=error_type)


def _reason(exc: BaseException) -> str:
    """A connector error's cause in a few words (``Connection refused``), no traceback."""
    cause = getattr(exc, "os_error", None)
    text = getattr(cause, "strerror", None) or str(cause or exc)
    return str(text)[:200]
