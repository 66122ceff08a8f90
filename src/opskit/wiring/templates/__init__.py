"""The hook and crontab templates, shipped as package data.

The files live once, at the top of the checkout (`hooks/`, `cron/`); `hooks` and `cron` here
are links to them, which the wheel build turns into real files. Code reads them from here in
every kind of install (editable, `pip install .`, a wheel, pipx), never from the checkout.
"""

from __future__ import annotations

from pathlib import Path

# What importlib.resources.files() gives for a package on disk, without importing it and
# zipfile (~6 ms of every drift-scan and hook check): installed hooks exec files from here,
# so opskit is never run from a zip.
TEMPLATES = Path(__file__).parent
