"""A deployable service on real git for pipeline/revert tests.

Stage = the sandbox repos (bare + worktree + dev clone) + an opskit.toml whose deploy command
restarts the sandbox HTTP service (its mode comes from `service.mode` in the deployed
worktree, so a commit writing `crash` is a bad deploy) + a local webhook receiver.
Gate settings are tight so a whole deploy → fail → revert → pass loop takes a few seconds.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from opskit.base import config, proc
from opskit.base.config import Settings
from opskit.deploy.pipeline import DeployResult, deploy
from opskit.standins import free_port
from opskit.standins.receiver import Receiver
from opskit.standins.service import deploy_command, kill_pid, stop
from opskit.storage.journal import Journal
from tests.support.gitsandbox import Sandbox, git, make_sandbox, rev
from tests.support.procs import processes_pointing_into

FAST_HEALTH = {"window": 0.8, "period": 0.2, "timeout": 0.5, "failures": 2, "startup": 2.0}


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


@dataclass
class Stage:
    sb: Sandbox
    root: Path
    config_path: Path
    port: int
    pidfile: Path
    log: Path
    receiver: Receiver | None
    service: str = "svc"
    outage_flag: Path = field(default_factory=Path)

    @property
    def settings(self) -> Settings:
        return config.load(self.config_path)

    def journal(self) -> Journal:
        return Journal(self.settings.state_dir)

    def deploy(self, sha: str | None = None, **kw: Any) -> DeployResult:
        lines: list[str] = kw.pop("lines", [])
        s = self.settings
        return deploy(s, Journal(s.state_dir), self.service, sha, write=lines.append, **kw)

    def types(self, prefix: str | None = None) -> list[str]:
        return [e.type for e in self.journal().query(service=self.service, type_prefix=prefix)]

    def good(self, mode: str = "healthy", files: Mapping[str, str] | None = None,
             message: str = "good change") -> str:
        sha = self.sb.commit({"service.mode": mode + "\n", **(files or {})}, message)
        self.sb.push(self.sb.branch)
        return sha

    def merge_feature(self, files: Mapping[str, str | bytes | None], *, name: str = "feature/x",
                      message: str = "feature work", merge_message: str | None = None) -> str:
        """A feature branch merged --no-ff into the branch in the dev clone and pushed."""
        dev = self.sb.dev
        git(dev, "checkout", "-q", "-b", name)
        self.sb.commit(files, message)
        git(dev, "checkout", "-q", self.sb.branch)
        git(dev, "merge", "-q", "--no-ff", "-m", merge_message or f"Merge {name}", name)
        self.sb.push(self.sb.branch)
        return rev(dev)

    def sync(self) -> None:
        """Bring the dev clone up to the canonical branch (after opskit pushed a revert)."""
        git(self.sb.dev, "fetch", "-q", "origin")
        git(self.sb.dev, "reset", "-q", "--hard", f"origin/{self.sb.branch}")

    def worktree_head(self) -> str:
        return rev(self.sb.worktree)

    def close(self) -> None:
        stop(self.pidfile)
        # `restart` returns before the new `serve` writes its pidfile: a service started a
        # moment ago is found by the pidfile path on its command line.
        for pid, _ in processes_pointing_into(self.pidfile):
            kill_pid(pid)
        if self.receiver is not None:
            self.receiver.stop()


def make_stage(tmp: Path, *, deploy: str | None = None, health: Mapping[str, Any] | None = None,
               receiver: bool = True, notify_url: str | None = None, branch: str = "master",
               extra: Mapping[str, Any] | None = None, repo: str | None = None,
               retry_for: float = 2.0) -> Stage:
    """Sandbox + config; the first commit (service.mode = healthy) is NOT deployed yet."""
    sb = make_sandbox(tmp / "sb", files={"app.txt": "v1\n", "service.mode": "healthy\n"}, branch=branch)
    run = tmp / "run"
    run.mkdir()
    port = free_port()
    pidfile, log = run / "svc.pid", run / "svc.log"
    outage = run / "outage"
    rcv = Receiver.start() if receiver else None
    url = notify_url or (rcv.url("discord") if rcv else None)
    base_deploy = deploy_command(port, pidfile, log)
    cmd = (deploy or "{restart}").replace("{restart}", base_deploy).replace("{outage}", shlex.quote(str(outage)))
    h = {"url": f"http://127.0.0.1:{port}/health", **FAST_HEALTH, **(health or {})}
    svc: dict[str, Any] = {"repo": repo or str(sb.bare), "worktree": str(sb.worktree), "branch": branch,
                           "deploy": cmd, "deploy_timeout": 20, "direct_push": True, **(extra or {})}
    lines = []
    if url:
        lines += ["[opskit]", 'notify = ["ops"]', "", "[notify.ops]", 'type = "discord"',
                  f"url = {toml_value(url)}", f"retry_for = {retry_for}", "timeout = 2", ""]
    lines.append("[service.svc]")
    lines += [f"{k} = {toml_value(v)}" for k, v in svc.items()]
    lines.append("\n[service.svc.health]")
    lines += [f"{k} = {toml_value(v)}" for k, v in h.items() if v is not None]
    cfg = tmp / "conf" / "opskit.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text("\n".join(lines) + "\n")
    return Stage(sb=sb, root=tmp, config_path=cfg, port=port, pidfile=pidfile, log=log, receiver=rcv,
                 outage_flag=outage)


@pytest.fixture
def stage(tmp_path: Path) -> Iterator[Stage]:
    st = make_stage(tmp_path)
    try:
        yield st
    finally:
        st.close()


@pytest.fixture(name="st")
def deployed_stage_fixture(tmp_path: Path) -> Iterator[Stage]:
    """`st`: a stage whose first good commit is deployed and healthy."""
    s = deployed_stage(tmp_path)
    try:
        yield s
    finally:
        s.close()


def deployed_stage(tmp: Path, **kw: Any) -> Stage:
    """A stage whose first commit is deployed and healthy (the last known-good)."""
    st = make_stage(tmp, **kw)
    r = st.deploy()
    assert r.ok and r.status == "healthy", r
    return st


def seeded_stage(tmp: Path, **kw: Any) -> Stage:
    """Like deployed_stage, but the first deploy is recorded instead of gated: the service is
    started by its deploy command and the commit written down as the last known-good. Saves a
    gate per test where the first deploy is not what is tested."""
    st = make_stage(tmp, **kw)
    svc = st.settings.service(st.service)
    assert svc.deploy is not None
    proc.run(proc.shell_argv(svc.deploy), cwd=st.sb.worktree, check=True, timeout=30)  # not fooled by `cmd &`
    j = st.journal()
    did = j.deploy_start(st.service, st.sb.tip(), previous=None, chain="seed")
    j.deploy_finish(did, "healthy")
    return st


def hooked_stage(tmp: Path, **kw: Any) -> Stage:
    """A seeded stage with opskit's hooks installed: pushes go through pre- and post-receive."""
    from opskit.wiring import hooks

    st = seeded_stage(tmp, **kw)
    hooks.install(st.settings, st.settings.service(st.service))
    return st


def env_for(stage: Stage) -> dict[str, str]:
    return {"OPSKIT_CONFIG": str(stage.config_path), "OPSKIT_STATE_DIR": os.environ["OPSKIT_STATE_DIR"]}
