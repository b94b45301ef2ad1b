"""Attachments: resolve a path the campaign names, refuse it if it may not be read, load it.

A path is relative to the campaign folder and stays inside it (or inside what the user
allowed with ``--allow-outside``); :class:`AttachmentLoader` checks that before anything
opens the file, and holds the provider's size limits (:data:`ATTACHMENT_LIMITS`).
"""

from __future__ import annotations

import mimetypes
import re
from pathlib import Path, PurePosixPath

from batchsend.campaign import Campaign
from batchsend.errors import AttachmentError
from batchsend.message import Attachment

MB = 1024 * 1024

#: Provider attachment limits: (per file, total, whether the HTML counts in the total).
ATTACHMENT_LIMITS: dict[str, tuple[int | None, int, bool]] = {
    "v1": (10 * MB, 25 * MB, True),
    "tosend": (None, 10 * MB, False),
}
_PERCENT_ESCAPE = re.compile(r"%(?:2e|2f|5c|00)", re.IGNORECASE)


class AttachmentLoader:
    """Resolves and reads attachment paths safely: the campaign folder, or allowed paths."""

    def __init__(self, campaign: Campaign) -> None:
        self.folder = campaign.folder.resolve()
        self.confinement = campaign.confinement
        self.per_file, self.total, self.html_counts = ATTACHMENT_LIMITS[campaign.provider]

    def resolve(self, raw: str) -> Path:
        """The file ``raw`` names, or :class:`AttachmentError` if it may not be read."""
        fix = "use a path relative to the campaign folder, inside it"
        if "\0" in raw:
            raise AttachmentError(f"path {raw!r} contains NUL", fix=fix)
        if _PERCENT_ESCAPE.search(raw):
            raise AttachmentError(f"path {raw!r} contains percent-encoded separators", fix=fix)
        if "\\" in raw:
            raise AttachmentError(f"path {raw!r} contains a backslash", fix="use / in paths")
        pure = PurePosixPath(raw)
        # An absolute path only into what the user allowed with --allow-outside.
        if (pure.is_absolute() and not self.confinement.allowed) or raw.startswith("~"):
            raise AttachmentError(f"absolute path {raw!r} is not allowed", fix=fix)
        if ".." in pure.parts:
            raise AttachmentError(f"path {raw!r} leaves the campaign folder", fix=fix)
        if not self.confinement.contains(self.folder / pure):
            raise AttachmentError(
                f"path {raw!r} leads outside the campaign folder",
                fix=self.confinement.fix(self.folder / pure),
            )
        resolved = (self.folder / pure).resolve()
        if not resolved.is_file():
            raise AttachmentError(f"attachment {raw!r} not found", fix="check the file name")
        return resolved

    def load(
        self, raw: str, filename: str | None = None, content_type: str | None = None, cid=None
    ) -> Attachment:
        path = self.resolve(raw)
        size = path.stat().st_size
        limit = self.per_file or self.total
        if size > limit:
            raise AttachmentError(
                f"attachment {raw!r} is {size / MB:.1f} MB, over the provider's"
                f" {limit // MB} MB limit",
                fix="send a link instead, or compress the file",
            )
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise AttachmentError(f"cannot read attachment {raw!r}: {exc.strerror}") from None
        name = filename or path.name
        ctype = content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Attachment(name, ctype, content, cid)
