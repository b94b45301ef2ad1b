"""Fingerprints: one hash of a campaign's recipients, one of everything else it reads.

A run stores both. A resume refuses to continue when either changed since; a report
joins the recipient file's columns to the run's rows only while the first is unchanged.
Hashing is reading, so every path is checked as the run would check it before it is
opened.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import jinja2
import jinja2.meta

from batchsend.attachments import AttachmentLoader
from batchsend.campaign import Campaign, TemplateRef
from batchsend.errors import AttachmentError, SourceError, TemplateError
from batchsend.render import read_template
from batchsend.source import open_regular


def fingerprints(campaign: Campaign) -> tuple[str, str]:
    """(sha256 of the recipient file, sha256 of the campaign file and everything it uses).

    The second covers the campaign file, every template file and the templates they
    include, static attachments and suppression lists: a resume refuses to continue
    when either changed.
    """
    return _sha256_files([campaign.source]), _sha256_files(campaign_files(campaign))


def campaign_files(campaign: Campaign) -> list[Path]:
    """The campaign file, then every file it reads but the recipients, as real paths:
    template files and the templates they include, attachments, suppression lists."""
    files = [campaign.path]
    # Parsing needs no sandbox, loader or compiled templates: a plain environment will do.
    env = jinja2.Environment()
    confinement = campaign.confinement
    pending = [r for r in campaign.templates()]
    seen: set[str] = set()
    while pending:
        ref = pending.pop()
        if ref.name in seen:
            continue
        seen.add(ref.name)
        if ref.file is not None:
            files.append(ref.file)
            source = read_template(ref)
        else:
            source = ref.inline or ""
        try:
            tree = env.parse(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(
                f"template syntax error at line {exc.lineno}: {exc.message}", file=ref.name
            ) from None
        for name in jinja2.meta.find_referenced_templates(tree):
            if not name:
                continue
            target = (campaign.folder / name).resolve()
            # an include outside the folder is the renderer's to refuse; never read it here
            if confinement.contains(target) and target.is_file():
                pending.append(TemplateRef(name, file=target))
    # Resolved (and refused if escaping the folder) before anything reads them: hashing
    # is reading, and a path like ../secret.txt must never be opened.
    loader = AttachmentLoader(campaign)
    for attachment in campaign.attachments:
        try:
            files.append(loader.resolve(attachment.path))
        except AttachmentError as exc:
            raise AttachmentError(
                exc.detail, file=str(campaign.path), column="attachments", fix=exc.fix
            ) from None
    files += list(campaign.suppression_files)
    return files


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path.name).encode() + b"\0")
        try:
            # Never a FIFO or a device: hashing one would wait, or read, for ever. The
            # reader that comes next refuses it with the message that says why.
            with open_regular(path, str(path)) as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
        except OSError:
            h.update(b"<missing>")
        except SourceError:
            h.update(b"<not a regular file>")
        h.update(b"\0")
    return h.hexdigest()
