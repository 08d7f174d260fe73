"""Webhooks: every HTTP request modelhost makes to a URL a user named, signed and guarded.

:mod:`~modelhost.webhooks.signing` signs bodies with per-tenant secrets,
:mod:`~modelhost.webhooks.egress` sends them (SSRF guard, pinned connections, one deadline, no
redirects, metrics), :mod:`~modelhost.webhooks.delivery` decides retries and delivers events
in process. Job callbacks (:mod:`modelhost.jobs.webhooks`) retry through the queue instead.
"""
