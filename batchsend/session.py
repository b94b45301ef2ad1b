"""The provider side of one command: the API key, the base URL, an embedded sandbox,
and ToSend's account check."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

from batchsend.apikeys import is_loopback_url, load_api_key, remember
from batchsend.campaign import Campaign
from batchsend.errors import CampaignError
from batchsend.providers import (
    Provider,
    RecipientLimits,
    ToSendProvider,
    check_account,
    get_provider,
)
from batchsend.sandbox import Sandbox


class Session:
    """The provider side of an invocation: the key, the base URL, an embedded sandbox.

    ``base_url_confirmed``: the user gave the base URL (``--base-url``). Otherwise it
    comes from the campaign file, which may come from anyone, and the key is sent only
    to a loopback one.
    """

    def __init__(
        self, campaign: Campaign, *, sandbox: bool, dry_run: bool, base_url_confirmed: bool = False
    ) -> None:
        self.campaign = campaign
        self.sandboxed = sandbox
        self.dry_run = dry_run
        self.base_url = campaign.base_url
        self.base_url_confirmed = base_url_confirmed
        self.api_key = ""
        self._sandbox: Sandbox | None = None
        self.account_rate: float | None = None

    @property
    def placement(self) -> str:
        return self.campaign.merge.placement

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._sandbox is not None:
            self._sandbox.stop()
            self._sandbox = None

    def open(
        self, *, api_key: str | None, api_key_file: str | Path | None, api_key_stdin: bool
    ) -> None:
        """Find the key and the server (start the embedded sandbox if asked)."""
        if self.sandboxed:
            # A fresh key per invocation, registered for redaction like any other.
            self.api_key = remember("sk-sandbox-" + secrets.token_hex(12))
            self._sandbox = Sandbox(
                api_keys=(self.api_key,), domains=(self.campaign.sender_domain,)
            ).start()
            self.base_url = self._sandbox.base_url
            return
        if not self.dry_run:
            self._refuse_unconfirmed_base_url()
        if self.dry_run:
            self.api_key = "dry-run"  # never sent: a dry run makes no HTTP request
        elif api_key is not None:
            self.api_key = remember(api_key)
        else:
            campaign = self.campaign
            self.api_key = load_api_key(
                env_var=campaign.api_key_env,
                key_file=api_key_file or campaign.api_key_file,
                stdin=api_key_stdin,
            )
        if not self.base_url:
            if self.dry_run:
                self.base_url = "http://127.0.0.1:9"  # never contacted
                return
            raise CampaignError(
                "no provider base URL",
                file=str(self.campaign.path),
                fix="set base_url in the campaign, pass --base-url, or try it with --sandbox",
            )

    def provider_url(self) -> str:
        """The base URL a command other than a send may take a key to (the same rules as
        a send: a URL only the campaign file names must be on this machine)."""
        self._refuse_unconfirmed_base_url()
        if not self.base_url:
            raise CampaignError(
                "no provider base URL",
                file=str(self.campaign.path),
                fix="set base_url in the campaign, or pass --base-url",
            )
        return self.base_url

    def _refuse_unconfirmed_base_url(self) -> None:
        """The key goes to a host the campaign file alone named only if it is this machine."""
        url = self.base_url
        if url is None or self.base_url_confirmed or is_loopback_url(url):
            return
        raise CampaignError(
            f"base_url {url!r} is not on this machine, and batchsend would send your API key"
            " to it; a base URL from a campaign file is used only on loopback (127.0.0.1,"
            " ::1, localhost) unless you confirm it",
            file=str(self.campaign.path),
            fix=f"if you trust this host with your key, pass --base-url {url} on the command"
            " line (or try the campaign with --sandbox)",
        )

    def provider(self) -> Provider:
        n = self.campaign.send.max_recipients_per_field
        assert self.base_url is not None
        return get_provider(
            self.campaign.provider,
            base_url=self.base_url,
            api_key=self.api_key,
            batch_size=self.campaign.send.batch_size,
            limits=RecipientLimits(n, n, n),
        )

    def check_account(self, recipients: int) -> None:
        """ToSend: ``GET /v2/info`` says the run can go (key, account, domain, credits)."""
        if self.campaign.provider != "tosend":
            return
        provider = self.provider()
        assert isinstance(provider, ToSendProvider)  # what get_provider("tosend") makes
        info = asyncio.run(provider.account_info())
        check_account(info, sender_domains={self.campaign.sender_domain}, recipients=recipients)
        self.account_rate = info.limit_per_second
