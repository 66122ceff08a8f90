"""The safety net under the pipeline: deploys and rollbacks that started and never finished.

A pipeline can still die with nobody watching (SIGKILL, the OOM killer, a power cut, a
SIGTERM at shutdown). In pull mode cron's `opskit deploy` comes back every minute; in push
mode nothing would ever look again, and a bad commit would stay live unreverted. cron-check
runs every few minutes in both: for each service whose last deploy is still 'running' with
its process gone, ended 'interrupted', or failed with its rollback left open, it does what
`opskit deploy SERVICE` does (deploy/recovery.py reports what was left, the branch tip is
deployed and gated again, and reverted when it fails) and tells the owner what it found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opskit.base import proc, statefs
from opskit.base.clock import SYSTEM, Clock
from opskit.base.config import Settings
from opskit.base.errors import OpsError
from opskit.base.lock import is_held
from opskit.base.text import short
from opskit.deploy.pipeline import deploy
from opskit.deploy.recovery import open_rollback
from opskit.notify.announce import announce
from opskit.storage.journal import Journal


@dataclass
class Unfinished:
    service: str
    found: str  # what was left: one line
    status: str | None = None  # the finishing deploy's result
    reason: str = ""
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _held(settings: Settings, service: str) -> bool | str:
    """True while a live process holds the service's lock (the flock probe: the only truth);
    a lock file that statefs refuses (a planted link, tests/test_state_links.py) is its one-line message."""
    try:
        return is_held(settings.state_dir, service)
    except statefs.Unsafe as e:
        return e.message


def left_open(settings: Settings, journal: Journal, service: str) -> str | None:
    """What a dead pipeline left for this service, or None (nothing, or a live one holds it).

    A row is only a claim (anyone in the state dir's group can write the journal): the lock's
    real holder decides. A 'running' row while nobody holds the lock is a dead pipeline, whatever
    pid it names (a forged or reused pid is not a holder), and finishing it is what
    `opskit deploy SERVICE` does — which its writer could run itself. Nothing is taken from the
    row but its words: no path, no pid to signal."""
    held = _held(settings, service)
    if held is True:
        return None  # someone is at work; they close what was left (recovery.py)
    if isinstance(held, str):
        return f"its lock cannot be checked ({held})"
    # Only what makes `opskit deploy` act (recovery.last_deployed is None): a newer verdict on
    # top means the next deploy reports the rest, and cron-check must not repeat itself.
    rows = journal.deploys(service, limit=1)
    if not rows:
        return None
    row = rows[0]
    if row["status"] == "running":
        gone = "died" if not proc.pid_alive(int(row["pid"] or 0)) else "no longer holds the lock"
        return (f"the {row['kind']} of {short(row['sha'])} (pid {row['pid']}) {gone} at step "
                f"'{row['step'] or 'start'}' without a verdict")
    if row["status"] == "interrupted":
        return f"the {row['kind']} of {short(row['sha'])} was interrupted without a verdict ({row['reason']})"
    if row["kind"] == "deploy" and row["status"] == "failed" and open_rollback(journal, service, row):
        return f"the rollback of {short(row['sha'])} was started and never ended"
    return None


def finish_unfinished(settings: Settings, journal: Journal, clock: Clock = SYSTEM) -> list[Unfinished]:
    """Finish each service's left-open deploy or rollback, as `opskit deploy SERVICE` would."""
    done: list[Unfinished] = []
    for name in settings.services:
        found = left_open(settings, journal, name)
        if found is None:
            continue
        item = Unfinished(service=name, found=found)
        lines: list[str] = []
        try:
            # lock_wait 0: a pipeline that just started holds the lock and closes it itself.
            result = deploy(settings, journal, name, None, clock=clock, write=lines.append, lock_wait=0)
            item.status, item.reason = result.status, result.reason
        except OpsError as e:
            if _held(settings, name) is True:
                continue  # a deploy started meanwhile; it closes what was left
            item.error = e.message
        done.append(item)
        outcome = (f"finished it: {item.status}: {item.reason}" if item.error is None
                   else f"could not finish it: {item.error}")
        announce(settings, journal, f"{name}: cron-check found that {found}; {outcome}\n"
                 f"See `opskit events --service {name}`.",
                 title=f"{name}: unfinished deploy {'finished' if item.error is None else 'NOT finished'}",
                 level="warning" if item.error is None and item.status in ("healthy", "reverted") else "error",
                 service=name, event_id=None, clock=clock)
    return done
