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
