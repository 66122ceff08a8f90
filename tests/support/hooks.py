"""A service with opskit's hooks installed in a real sandbox (bare repo, worktree, dev clone)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from opskit.base import config
from opskit.base.config import Settings
from opskit.storage.journal import Event, Journal
from opskit.wiring import hooks
from tests.support.gitsandbox import Sandbox, make_sandbox


def toml_str(value: object) -> str:
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


@dataclass
class Hooked:
    sb: Sandbox
    config: Path
    state_dir: Path
    name: str = "svc"

    def settings(self) -> Settings:
        return config.load(self.config)

    def journal(self) -> Journal:
        return Journal(self.state_dir)

    def events(self, type_prefix: str) -> list[Event]:
        return self.journal().query(type_prefix=type_prefix, service=self.name)

    def wait_events(self, type_prefix: str, count: int = 1, timeout: float = 10.0) -> list[Event]:
        """For events written by a detached child (the worktree refusal journals after
        answering the committer)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(type_prefix)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def write_service_config(path: Path, sb: Sandbox, state_dir: Path, *, name: str = "svc",
                         repo: str | None = None, extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"[opskit]\nstate_dir = {toml_str(state_dir)}\n"
        f"[service.{name}]\nrepo = {toml_str(repo or sb.bare)}\nworktree = {toml_str(sb.worktree)}\n"
        f"branch = {toml_str(sb.branch)}\n{extra}"
    )
    return path


def hooked_service(root: Path, state_dir: Path, *, extra: str = "", install: bool = True,
                   config_dir: str = "conf") -> Hooked:
    sb = make_sandbox(root / "sb")
    cfg = write_service_config(root / config_dir / "opskit.toml", sb, state_dir, extra=extra)
    h = Hooked(sb=sb, config=cfg, state_dir=state_dir)
    if install:
        s = h.settings()
        hooks.install(s, s.service(h.name))
    return h
