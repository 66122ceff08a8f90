"""Every event type opskit journals, and the one reading of `opskit events --type`.

The list is the contract of docs/ARCHITECTURE.md, Events (tests/test_fastpath.py holds the
code's own `emit`/`append` calls to it). `--type` is read here once, for the Typer command and
the fast path alike (both call commands/events.py `show`), and storage/journal.py turns what
this returns into SQL. Standard library only: the fast path imports it.
"""

from __future__ import annotations

from opskit.base.errors import UsageError

TYPES: tuple[str, ...] = (
    "push.received", "push.superseded", "push.fail", "push.verified", "push.unverified",
    "test.pass", "test.fail", "test.skipped",
    "review.pass", "review.fail", "review.needs-human", "review.skipped", "review.reminded",
    "merge.complete", "merge.fail",
    "deploy.start", "deploy.complete", "deploy.fail", "deploy.adopted",
    "health.pass", "health.fail",
    "rollback.start", "rollback.complete", "rollback.fail",
    "service.frozen", "service.unfrozen",
    "drift.detected", "drift.cleared", "drift.healed",
    "lockdown.blocked", "lockdown.breakglass",
    "quarantine.released",
    "notify.sent", "notify.failed",
    "job.start", "job.ok", "job.fail", "job.missed", "job.recovered",
    "decision.received", "decision.refused", "decision.applied",
    # outside monitoring: the heartbeat ping to an external dead man's switch
    "heartbeat.failed", "heartbeat.recovered",
    "reaction.ok", "reaction.fail", "reaction.gave-up",
    # a fleet: this host lost, then regained, the shared PostgreSQL journal
    "fleet.unreachable", "fleet.reachable",
)
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(t.split(".", 1)[0] for t in TYPES))


def parse(spec: str) -> tuple[str, ...]:
    """`--type` → what to match: each an exact type (`health.fail`) or a family prefix ending
    in "." (`rollback.`). A comma list; a bare family name (`rollback`, the form the
    notifications cite) means its prefix. Empty → () (no filter). Anything else is a
    UsageError naming the known ones, before the journal is read."""
    wanted: list[str] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        if item in TYPES:
            key = item
        elif item.rstrip(".") in FAMILIES and item.count(".") <= 1:
            key = item.rstrip(".") + "."
        else:
            raise UsageError(f"--type: unknown event type {item!r} (give types or prefixes, comma-separated: "
                             f"--type health.fail,rollback.); known: {known()}")
        if key not in wanted:
            wanted.append(key)
    return tuple(wanted)


def known() -> str:
    """The known types, one line, as docs/ARCHITECTURE.md writes them:
    `push.received|superseded|…, test.pass|…` (a family alone, `rollback.`, is a prefix)."""
    return ", ".join(f"{fam}." + "|".join(t.split(".", 1)[1] for t in TYPES if t.startswith(fam + "."))
                     for fam in FAMILIES)
