"""Provider events read into one vocabulary: :mod:`~batchsend.events.model` (the
:class:`Event`), :mod:`~batchsend.events.tosend` and :mod:`~batchsend.events.v1` (each
provider's payloads; parsing only, no network, like :mod:`batchsend.providers`).

The receiver that takes webhooks is :mod:`batchsend.receiver`; the pull from
MailerLogic's Events API is :mod:`batchsend.pull`; both store through
:mod:`batchsend.store.events`.
"""
