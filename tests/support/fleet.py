"""Hosts of a fleet on one machine: each a config, a state dir and a host name of its own,
sharing one PostgreSQL database (tests/support/postgres.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support.postgres import Postgres


@dataclass
class Host:
    name: str
    config: Path
    state_dir: Path

    def journal(self) -> Any:
        from opskit.base import config
        from opskit.storage.journal import Journal

        settings = config.load_file(self.config)
        return Journal(settings.state_dir, fleet=settings.fleet)


def make_host(root: Path, name: str, url: str, extra: str = "") -> Host:
    """A host whose config names the fleet database with the password as ${PGPASSWORD} from
    the .env beside it (0600), as the README tells an operator to write it."""
    parts = urlsplit(url)
    assert parts.password
    templated = url.replace(f":{parts.password}@", ":${PGPASSWORD}@", 1)
    conf_dir = root / f"host-{name}"
    conf_dir.mkdir(parents=True)
    state = root / f"state-{name}"
    env = conf_dir / ".env"
    env.write_text(f"PGPASSWORD={parts.password}\n")
    os.chmod(env, 0o600)
    cfg = conf_dir / "opskit.toml"
    cfg.write_text(f'[opskit]\nstate_dir = "{state}"\njournal = "{templated}"\nhost = "{name}"\n{extra}')
    return Host(name=name, config=cfg, state_dir=state)


def fleet_rows(pg: Postgres, url: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows straight from the fleet database, not through opskit."""
    import psycopg

    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def join_fleet(cfg: Path, url: str, host: str) -> Path:
    """Make an existing test config a host of the fleet at `url`: `journal` (the password as
    ${PGPASSWORD} from a 0600 .env beside it) and `host` in its [opskit] table."""
    parts = urlsplit(url)
    assert parts.password
    templated = url.replace(f":{parts.password}@", ":${PGPASSWORD}@", 1)
    env = cfg.parent / ".env"
    env.write_text(f"PGPASSWORD={parts.password}\n")
    os.chmod(env, 0o600)
    keys = f'journal = "{templated}"\nhost = "{host}"\n'
    text = cfg.read_text()
    if text.startswith("[opskit]\n"):
        text = "[opskit]\n" + keys + text[len("[opskit]\n"):]
    elif "\n[opskit]\n" in text:
        text = text.replace("\n[opskit]\n", "\n[opskit]\n" + keys, 1)
    else:
        text = "[opskit]\n" + keys + text
    cfg.write_text(text)
    return cfg


def migrated(host: Host) -> Host:
    """The fleet database's schema made current, as `opskit journal migrate` does."""
    from opskit.base import config
    from opskit.storage.fleet import Fleet, migrate

    settings = config.load_file(host.config)
    assert settings.fleet is not None
    migrate(Fleet(settings.fleet, settings.state_dir))
    return host
