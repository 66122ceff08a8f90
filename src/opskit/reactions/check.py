"""Does every `on` of every `[[reaction]]` name a known event type or prefix?

base/config.py reads `on` by its form only (it sits below storage/, where the one list of
types lives); each command that loads the config checks the names here, so a typo such as
`rollback.finished` is exit 2 naming the known ones, not a reaction that never fires.
"""

from __future__ import annotations

from opskit.base.config import Settings
from opskit.base.errors import ConfigError
from opskit.base.reactions_config import GATE_EVENT
from opskit.storage import event_types


def validate(settings: Settings) -> None:
    for r in settings.reactions:
        for item in r.on:
            if item == GATE_EVENT or item in event_types.TYPES:
                continue
            if item.endswith(".") and item[:-1] in event_types.FAMILIES:
                continue
            where = settings.path or "config"
            raise ConfigError(f"{where}: reaction.{r.name}.on: unknown event type {item!r}; use types or "
                              f"prefixes; known: {event_types.known()}, {GATE_EVENT} (with gate = true)")
