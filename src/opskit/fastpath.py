"""The fast path: the plain command lines of `opskit events` and `opskit drift-scan`, read
without Typer.

Importing Typer (and the click it carries) is about half of an `opskit events`' start-up and
costs more than a ten-worktree drift scan's own work; cron runs drift-scan every hour and
operators run events all day. This module reads only what it knows for certain: the global
`--config PATH`, the command's own options in the forms click reads them (`--name VALUE`,
`--name=VALUE`, `-x VALUE`), and drift-scan's service names. It then calls the very command
function Typer would call (`commands/events.py` `show`, `commands/drift.py` `scan`). Anything
else — `--help`, an option it does not know, a flag given a value, a value that starts with
`-`, `--`, a number that is not one or is out of range — is left to Typer, so help and errors
read the same either way. `tests/test_fastpath.py` holds the two paths to the same output and
exit code, and to the same option names as the Typer commands. Stdlib only, at import.
With a fleet journal, `show` itself reads the fleet database (psycopg is imported there, by
the command, never by this module or the hooks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Spec:
    """One command's options: flag → (parameter name, kind), kind "flag", "str" or "int>=1"."""

    options: dict[str, tuple[str, str]]
    positional: str | None = None  # the parameter that takes the other words, if any


EVENTS = Spec({
    "--service": ("service", "str"), "-s": ("service", "str"),
    "--type": ("type_", "str"), "-t": ("type_", "str"),
    "--since": ("since", "str"),
    "--limit": ("limit", "int>=1"), "-n": ("limit", "int>=1"),
    "--follow": ("follow", "flag"), "-f": ("follow", "flag"),
    "--json": ("as_json", "flag"),
    "--host": ("host", "str"),
})
DRIFT_SCAN = Spec({
    "--heal": ("heal", "flag"),
    "--json": ("as_json", "flag"),
    "--no-notify": ("no_notify", "flag"),
}, positional="services")
COMMANDS = {"events": EVENTS, "drift-scan": DRIFT_SCAN}
GLOBAL = Spec({"--config": ("config", "str"), "-c": ("config", "str")})


def match(args: Sequence[str]) -> Callable[[], int] | None:
    """The command to run for `args`, or None: then Typer parses them."""
    i = 0
    glob: dict[str, object] = {}
    while i < len(args) and args[i].startswith("-"):
        i = _option(GLOBAL, args, i, glob)
        if i < 0:
            return None
    if i >= len(args) or args[i] not in COMMANDS:
        return None
    name = args[i]
    spec = COMMANDS[name]
    values: dict[str, object] = {}
    words: list[str] = []
    i += 1
    while i < len(args):
        if args[i].startswith("-"):
            i = _option(spec, args, i, values)
            if i < 0:
                return None
        elif spec.positional is None:
            return None
        else:
            words.append(args[i])
            i += 1
    config = glob.get("config")
    if config == "":
        return None  # click reads `--config ""` as the current folder; leave that to it
    if spec.positional is not None:
        values[spec.positional] = words

    def run() -> int:
        # the command modules import their cores inside the command body: start-up stays small
        from opskit.commands import _common, drift, events

        _common.STATE.config_path = Path(str(config)) if config is not None else None
        if name == "events":
            return events.show(_str(values, "service"), _str(values, "type_"), _str(values, "since"),
                               _int(values, "limit"), bool(values.get("follow")),
                               bool(values.get("as_json")), _str(values, "host"))
        return drift.scan(list(words), bool(values.get("heal")), bool(values.get("as_json")),
                          bool(values.get("no_notify")))

    return run


def _option(spec: Spec, args: Sequence[str], i: int, into: dict[str, object]) -> int:
    """Read the option at args[i] into `into`; the index after it, or -1 to leave it to Typer."""
    token = args[i]
    name, eq, value = token.partition("=") if token.startswith("--") else (token, "", "")
    known = spec.options.get(name)
    if known is None:
        return -1  # --help, --, an unknown or attached form (-n5): Typer's to read or refuse
    param, kind = known
    if kind == "flag":
        if eq:
            return -1  # click refuses a value for a flag; let it say so
        into[param] = True
        return i + 1
    if not eq:
        if i + 1 >= len(args):
            return -1
        value = args[i + 1]
        i += 1
        if value.startswith("-"):
            return -1  # a value or a forgotten one? click decides
    if kind == "int>=1":
        try:
            number = int(value)
        except ValueError:
            return -1
        if number < 1:
            return -1
        into[param] = number
    else:
        into[param] = value
    return i + 1


def _str(values: dict[str, object], key: str) -> str | None:
    v = values.get(key)
    return v if isinstance(v, str) else None


def _int(values: dict[str, object], key: str) -> int | None:
    v = values.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else None
