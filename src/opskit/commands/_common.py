"""What every command shares: the loaded settings, the journal, output helpers."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from rich.console import Console

    from opskit.base.config import Settings
    from opskit.storage.journal import Journal


@dataclass
class _State:
    config_path: Path | None = None
    _settings: Settings | None = field(default=None, repr=False)
    _journal: Journal | None = field(default=None, repr=False)

    def settings(self) -> Settings:
        if self._settings is None:
            from opskit.base import config

            settings = config.load(self.config_path)
            if settings.reactions:
                from opskit.reactions.check import validate  # only configs with [[reaction]] tables

                validate(settings)  # event names are storage's list, below which config sits
            self._settings = settings
        return self._settings

    def state_dir(self) -> Path:
        if self._settings is not None:
            return self._settings.state_dir
        from opskit.base import config

        return config.default_state_dir()

    def journal(self) -> Journal:
        if self._journal is None:
            from opskit.storage.journal import Journal

            settings = self.settings()
            self._journal = Journal(settings.state_dir, fleet=settings.fleet)
        return self._journal


STATE = _State()


def settings() -> Settings:
    return STATE.settings()


def journal() -> Journal:
    return STATE.journal()


_console: Console | None = None
_err_console: Console | None = None


def console() -> Console:
    global _console
    if _console is None:
        _console = _shown_console(stderr=False)
    return _console


def err_console() -> Console:
    global _err_console
    if _err_console is None:
        _err_console = _shown_console(stderr=True)
    return _err_console


def _shown_console(*, stderr: bool) -> Console:
    """A Rich console whose text goes through shown(): Rich passes an ESC in a quarantine
    reason or a crontab line straight to the terminal (tests/test_bad_input.py)."""
    from rich.console import Console  # start-up: only commands that print through Rich

    from opskit.base.text import shown

    class Shown(Console):
        def print(self, *objects: Any, **kw: Any) -> None:
            super().print(*(shown(o, lines=True) if isinstance(o, str) else o for o in objects), **kw)

    return Shown(stderr=stderr, highlight=False)


def print_json(obj: Any) -> None:
    from opskit.base.errors import redact
    from opskit.base.text import json_shown

    # Result objects can carry a repo URL with a token in it (pull mode): mask on the way out.
    sys.stdout.write(json_shown(redact(json.dumps(obj, default=str, ensure_ascii=False))) + "\n")
    sys.stdout.flush()


def progress_writer(as_json: bool) -> Callable[[str], None]:
    """Where step-by-step progress goes: stderr under --json, so stdout stays one JSON object."""
    from opskit.base.text import shown  # only commands that report progress need it

    out = sys.stderr if as_json else sys.stdout

    def write(line: str) -> None:
        out.write(shown(line) + "\n")  # subjects, branch names and step output are data
        out.flush()

    return write


def seconds(option: str, value: float | None, *, positive: bool = False) -> float | None:
    """A duration from the command line: finite, and >= 0 (> 0 with positive=True).
    typer parses 'nan' and 'inf' as floats, and a wait of either never ends."""
    if value is None:
        return None
    import math

    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        usage(f"{option} {value}: must be a finite number of seconds"
              f"{' greater than 0' if positive else ', 0 or more'}")
    return value


# SQLite's INTEGER is 64-bit signed: sqlite3 raises OverflowError (exit 3) for a larger id,
# and no row has an id below 1 (tests/test_bad_input.py, ids out of range).
ID_MAX = 2**63 - 1


def row_id(option: str, value: int | str) -> int:
    """A journal row's id from the command line (an event, a parked change, an outbox
    message): a whole number from 1 to ID_MAX, else exit 2 naming the option and the range."""
    text = str(value).strip()
    digits = text[1:] if text[:1] in "+-" else text
    number = int(text) if digits.isascii() and digits.isdigit() else None
    if number is None or not 1 <= number <= ID_MAX:
        usage(f"{option} {text!r}: not an id; an id is a whole number from 1 to {ID_MAX}")
    return number


def exit_with(code: int) -> NoReturn:
    import typer  # only a command Typer runs gets here (the fast path returns its code)

    raise typer.Exit(int(code))


def usage(message: str) -> NoReturn:
    from opskit.base.errors import UsageError

    raise UsageError(message)
