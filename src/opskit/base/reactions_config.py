"""`[[reaction]]` tables: what a user's step runs after which events (reactions/dispatch.py).

Kept apart from config.py so the rules of one feature read in one place; config.py calls
`parse` with its own parser, whose converters (`nonempty`, `secret`, …) give every key the
same one-line errors as the rest of the file. `on` is read here by its form (a type, a
prefix ending in ".", a bare family); whether each names a known type is checked against
storage/event_types.py, the one list, by reactions/check.py when a command loads the config
(base/ sits below storage/).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The one synchronous kind: run inside the deploy pipeline, before the deploy command.
GATE_EVENT = "deploy.pre"
FAMILY = "reaction."  # a reaction's own events: reach only reactions that name them exactly


@dataclass(frozen=True)
class ReactionSettings:
    name: str
    on: tuple[str, ...]  # exact types, or prefixes ending in "."
    service: str | None = None
    run: str | None = None  # a shell command (the operator's, like `deploy`)
    url: Any = None  # a config.Secret: POST of the event JSON
    timeout: float = 300.0
    retries: int = 5  # a failed run is run again this many times, then it gives up
    backoff: float = 10.0  # seconds before the first retry; doubled after each failure
    gate: bool = False
    user: str | None = None  # the account it runs as; "root" only when written so

    def matches(self, type: str, service: str | None, data: Mapping[str, Any] | None = None) -> bool:
        """Does an event of this type (and service) reach this reaction? A reaction's own
        events reach only reactions that name them exactly, never the one that wrote them, and
        only one step deep: the run of a reaction to a reaction's event starts nothing more, so
        two reactions naming each other's `reaction.gave-up` cannot feed each other forever."""
        if self.gate:
            return False  # gates run in the pipeline, never from the journal
        if self.service is not None and service != self.service:
            return False
        if type.startswith(FAMILY):
            d = data or {}
            return (type in self.on and d.get("reaction") != self.name
                    and not str(d.get("event_type") or "").startswith(FAMILY))
        return any(type == t or (t.endswith(".") and type.startswith(t)) for t in self.on)


MAX_BACKOFF = 3600.0
_FORM = re.compile(r"^[a-z]+(\.([a-z]+(-[a-z]+)*)?)?$")


def normal(item: str) -> str | None:
    """An `on` item as matches() reads it: `deploy` → `deploy.`; None when it is no event name."""
    if not _FORM.match(item):
        return None
    return item if "." in item else item + "."


def parse(p: Any, raw: Any, services: Mapping[str, Any]) -> tuple[ReactionSettings, ...]:
    """The `[[reaction]]` array of tables → settings; p is config's _Parser."""
    if not isinstance(raw, list):
        raise p.fail("reaction", "expected an array of tables", 'write each one as [[reaction]] with name = "…"')
    out: dict[str, ReactionSettings] = {}
    for i, table in enumerate(raw):
        where = f"reaction[{i}]"
        if isinstance(table, dict) and isinstance(table.get("name"), str):
            where = f"reaction.{table['name']}"
        fields = p.table(where, table, {
            "name": p.nonempty, "on": p.strings, "service": p.nonempty, "run": p.nonempty,
            "url": p.secret, "timeout": p.positive, "retries": _retries(p), "backoff": _backoff(p),
            "gate": p.boolean, "user": p.account,
        })
        if "name" not in fields:
            raise p.fail(f"{where}.name", "is missing", 'add name = "migrate-down" (unique)')
        name = fields["name"]
        p.check_name(f"{where}.name", name)
        if name in out:
            raise p.fail(f"{where}.name", f"{name!r} is used by another [[reaction]]", "give each reaction its own name")
        on = fields.get("on") or ()
        if not on:
            raise p.fail(f"{where}.on", "is missing", 'add on = ["rollback.complete"] (event types or prefixes like "deploy.")')
        wanted: list[str] = []
        for item in on:
            if item == GATE_EVENT:
                if not fields.get("gate"):
                    raise p.fail(f"{where}.on", f"{GATE_EVENT} is the gate before a deploy",
                                 "add gate = true (it runs in the pipeline and can stop the deploy)")
                wanted.append(item)
                continue
            key = normal(item)
            if key is None:
                raise p.fail(f"{where}.on", f"{item!r} is not an event type",
                             'write types or prefixes, e.g. ["rollback.complete", "deploy."]')
            if key == FAMILY:
                raise p.fail(f"{where}.on", f"{item!r}: a reaction's own events reach only reactions naming them exactly",
                             "write e.g. reaction.gave-up")
            if key not in wanted:
                wanted.append(key)
        if fields.get("gate") and wanted != [GATE_EVENT]:
            raise p.fail(f"{where}.on", "a gate runs only before a deploy", f'write on = ["{GATE_EVENT}"]')
        if fields.get("gate") and "url" in fields:
            raise p.fail(f"{where}.url", "a gate runs a command", "use run = \"…\" (its exit code decides)")
        fields["on"] = tuple(wanted)
        if ("run" in fields) == ("url" in fields):
            raise p.fail(where, "needs exactly one of run or url",
                         'add run = "./scripts/step.sh" or url = "${WEBHOOK_URL}"')
        if "url" in fields and p.url_problem(fields["url"].reveal()):
            raise p.fail(f"{where}.url", "is not an http(s) URL", "use https://… (or http:// on loopback)")
        svc = fields.get("service")
        if svc is not None and svc not in services:
            known = ", ".join(sorted(services)) or "none"
            raise p.fail(f"{where}.service", f"names service {svc!r}, which is not configured (configured: {known})",
                         f"add a [service.{svc}] table or fix the name")
        out[name] = ReactionSettings(**fields)
    return tuple(out.values())


def _retries(p: Any) -> Any:
    def conv(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise p.fail(key, f"expected a whole number of 0 or more, got {value!r}", "write e.g. retries = 5")
        return value

    return conv


def _backoff(p: Any) -> Any:
    def conv(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise p.fail(key, f"expected a number of seconds of 0 or more, got {value!r}", "write e.g. backoff = 10")
        return min(float(value), MAX_BACKOFF)

    return conv
