"""A service whose feature-branch pushes run the chain, through really installed hooks.

The stage (tests/support/pipeline.py) gives a real bare repo, worktree, dev clone, an HTTP
service restarted by the deploy command and a Discord stand-in. On top, the test and review
commands read files of the pushed commit, so each test steers the chain by what it commits:

    test.fail   → the test prints it, exits 1   test.hang → it sleeps past test_timeout
    test.spam   → it prints 200 000 lines, then fails
    review.exit → the review's exit code (default 0)
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from opskit.storage.journal import Event
from tests.support.gitsandbox import git, rev
from tests.support.pipeline import Stage, env_for, hooked_stage

# Sandboxed (the default) they cannot write {probe}: what they saw is printed (`pwd:`, `env:`
# lines, kept in the events' tails); with sandbox = "none" it is written there too.
TEST_CMD = ('echo "pwd: $(pwd)"; {{ pwd > {probe}/test.pwd; }} 2>/dev/null; '
            'if [ -e test.hang ]; then echo hanging; sleep 60; fi; '
            'if [ -e test.spam ]; then yes "spam line" | head -n 200000; echo "LAST LINE"; exit 1; fi; '
            'if [ -e test.fail ]; then cat test.fail; echo "FAILED test_thing: assert 1 == 2"; exit 1; fi; '
            'echo "3 passed"')
REVIEW_CMD = ('env | grep -a ^OPSKIT_ | LC_ALL=C sort | sed "s/^/env: /"; echo "pwd: $(pwd)"; '
              '{{ env | grep -a ^OPSKIT_ | LC_ALL=C sort > {probe}/review.env; pwd > {probe}/review.pwd; }} 2>/dev/null; '
              'echo "reviewing $OPSKIT_RANGE"; exit "$(cat review.exit 2>/dev/null || echo 0)"')


@dataclass
class ChainStage:
    st: Stage
    probe: Path

    @property
    def sb(self) -> Any:
        return self.st.sb

    def feature(self, name: str, files: Mapping[str, str | bytes | None], *, message: str = "feature work",
                base: str | None = None) -> str:
        """Commit files on branch `name` (from `base`, default the canonical branch tip) in the dev clone."""
        dev = self.sb.dev
        git(dev, "fetch", "-q", "origin")
        start = base or f"origin/{self.sb.branch}"
        exists = git(dev, "rev-parse", "--verify", "--quiet", f"refs/heads/{name}", check=False).returncode == 0
        if exists and base is None:
            git(dev, "checkout", "-q", name)
        else:
            git(dev, "checkout", "-q", "-B", name, start)
        return self.sb.commit(files, message)

    def push(self, name: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = git(self.sb.dev, "push", "origin", name, check=False)
        if check:
            assert p.returncode == 0, p.stderr
        return p

    def push_async(self, name: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["git", "push", "origin", name], cwd=self.sb.dev, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace")

    def events(self, prefix: str | None = None, chain: str | None = None) -> list[Event]:
        return self.st.journal().query(service="svc", type_prefix=prefix, chain=chain)

    def last(self, type_: str) -> Event:
        ev = self.st.journal().last(type_, "svc")
        assert ev is not None, f"no {type_} event; have {[e.type for e in self.events()]}"
        return ev

    def seen(self, type_: str, prefix: str) -> list[str]:
        """What the last `type_` event's command printed after `prefix` (`pwd: `, `env: `)."""
        return [ln[len(prefix):] for ln in self.last(type_).data["tail"].splitlines() if ln.startswith(prefix)]

    def tip(self) -> str:
        return self.sb.tip()

    def cli(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        import sys

        e = {**os.environ, **env_for(self.st), **(env or {})}
        from tests.conftest import IN_PROCESS, _in_process

        if IN_PROCESS:  # a mutation run (bench/mutation.sh): the mutant is on in this process only
            return _in_process(list(args), None, None, e)
        return subprocess.run([sys.executable, "-m", "opskit", *args], check=False, capture_output=True, text=True,
                              env=e, timeout=120, errors="replace")

    def json_lines(self, *args: str) -> list[dict[str, Any]]:
        p = self.cli(*args)
        assert p.returncode == 0, p.stderr
        return [json.loads(ln) for ln in p.stdout.splitlines() if ln.strip()]

    def wait_chain_step(self, step: str, count: int = 1, timeout: float = 20.0) -> None:
        """Until `count` chains of svc report `step` in their progress (opskit status data)."""
        j = self.st.journal()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [v for v in j.kv_all("chain").values() if v.get("service") == "svc" and v.get("step") == step]
            if len(live) >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"never saw {count} chain(s) at step {step!r}: {j.kv_all('chain')}")

    def worktrees_left(self) -> list[str]:
        out = git(self.sb.bare, "worktree", "list", "--porcelain").stdout
        return [ln for ln in out.splitlines() if ln.startswith("worktree ") and not ln.endswith(str(self.sb.bare))]


def make_chain_stage(tmp: Path, **extra: Any) -> ChainStage:
    probe = tmp / "probe"
    probe.mkdir(parents=True, exist_ok=True)
    cfg: dict[str, Any] = {"direct_push": False, "feature_branches": ["feature/*"],
                           "test": TEST_CMD.format(probe=probe), "test_timeout": 10,
                           "review": REVIEW_CMD.format(probe=probe), "review_timeout": 10, "merge": "merge"}
    cfg.update(extra)
    for k in [k for k, v in cfg.items() if v is None]:
        del cfg[k]
    # A shorter watch than the pipeline tests': the chain's own steps are what is tested here.
    return ChainStage(st=hooked_stage(tmp, extra=cfg, health={"window": 0.6}), probe=probe)


@pytest.fixture(name="cs")
def chain_stage_fixture(tmp_path: Path) -> Iterator[ChainStage]:
    """A deployed, hooked service with test and review configured (import chain_stage_fixture)."""
    c = make_chain_stage(tmp_path)
    try:
        yield c
    finally:
        c.st.close()


def order(types: list[str], *wanted: str) -> bool:
    """wanted appear in types in that order (other events may sit between)."""
    it = iter(types)
    return all(any(t == w for t in it) for w in wanted)


__all__ = ["ChainStage", "make_chain_stage", "chain_stage_fixture", "order", "rev"]
