"""Freezing a service by hand (`opskit freeze`, the Freeze button): deploys are refused until
`opskit unfreeze`, the same freeze a failed rollback sets (revert.freeze), so every reader of
it (deploy, chain, status) already honours it."""

from __future__ import annotations

from collections.abc import Callable

from opskit.deploy import revert
from opskit.base.clock import SYSTEM, Clock
from opskit.base.config import Settings
from opskit.storage.journal import Journal
from opskit.deploy.pipeline import Run, new_chain_id


def freeze(settings: Settings, journal: Journal, service: str, *, by: str, reason: str | None = None,
           clock: Clock = SYSTEM, write: Callable[[str], None] = print) -> int | None:
    """Freeze `service`; the service.frozen event id, or None when it was frozen already."""
    svc = settings.service(service)
    if revert.is_frozen(journal, service) is not None:
        return None
    run = Run(settings=settings, journal=journal, svc=svc, chain=new_chain_id(), clock=clock, write=write)
    return revert.freeze(run, f"frozen by {by}" + (f": {reason}" if reason else ""), None)
