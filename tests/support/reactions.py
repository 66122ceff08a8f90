"""Helpers for reaction tests: a [[reaction]] table, waiting for the dispatcher, reading cursors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opskit.base import bus, lock
from opskit.storage.journal import Journal
from tests.support.gitsandbox import make_sandbox
from tests.support.pipeline import toml_value


def reaction_toml(name: str, on: list[str], **keys: Any) -> str:
    lines = ["", "[[reaction]]", f"name = {toml_value(name)}", f"on = {toml_value(on)}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def add_reactions(config: Path, *tables: str) -> None:
    """Append the tables; the file's new mtime is where a new reaction's cursor starts."""
    time.sleep(0.01)  # the append's mtime is strictly after every event journaled so far
    with open(config, "a") as f:
        f.write("".join(tables))


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def idle(state_dir: Path) -> bool:
    """No dispatcher (nor a command one left running) holds the lock."""
    return not lock.is_held(state_dir, bus.LOCK)


def wait_idle(state_dir: Path, timeout: float = 30.0) -> None:
    time.sleep(0.2)  # a trigger's start is in flight: give it time to take the lock
    wait_until(lambda: idle(state_dir), timeout, "the dispatcher to finish")
    time.sleep(0.2)
    wait_until(lambda: idle(state_dir), timeout, "the dispatcher to finish")


def cursor(state_dir: Path, name: str) -> dict[str, Any] | None:
    v = Journal(state_dir).kv_get("reaction", name)
    return v if isinstance(v, dict) else None


def react(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opskit", "--config", str(config), "react", *args],
                          check=False, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def react_proc(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "opskit", "--config", str(config), "react", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def events(state_dir: Path, type_: str) -> list[dict[str, Any]]:
    return [json.loads(json.dumps(e.to_dict())) for e in Journal(state_dir).query(types=(type_,))]


def plain_config(tmp: Path, state_dir: Path, *tables: str, services: tuple[str, ...] = ("a", "b"),
                 opskit_keys: str = "", extra: str = "") -> Path:
    """A config with real (sandbox) services and the given [[reaction]] tables."""
    parts = [f"[opskit]\nstate_dir = {toml_value(state_dir)}\n{opskit_keys}", extra]
    for name in services:
        sb = make_sandbox(tmp / f"sb-{name}", name=name)
        parts.append(f"[service.{name}]\nrepo = {toml_value(sb.bare)}\nworktree = {toml_value(sb.worktree)}\n")
    cfg = tmp / "conf" / "opskit.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text("".join(parts) + "".join(tables))
    time.sleep(0.01)
    return cfg
