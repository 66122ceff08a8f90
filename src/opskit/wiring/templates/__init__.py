"""The hook and crontab templates, shipped as package data.

The files live once, at the top of the checkout (`hooks/`, `cron/`); `hooks` and `cron` here
are links to them, which the wheel build turns into real files. Code reads them from here in
every kind of install (editable, `pip install .`, a wheel, pipx), never from the checkout.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

TEMPLATES = Path(str(files(__name__)))
