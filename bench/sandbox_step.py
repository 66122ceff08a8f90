"""Benchmark 7: what the bubblewrap sandbox adds to a chain step (target ≤ 50 ms added).

The demo's own test step (`python ci/test.py` on the demo's feature commit, primerouter's
files) run the way the chain runs it — `chain._test`: a throwaway worktree of the pushed
commit, the command, the test.pass event — once with `sandbox = "bwrap"` and once with
`sandbox = "none"`, alternately in the same round, the difference taken within each round.
The bwrap side pays everything a hook pays per push: the start probe (`bwrap.available`, its
cache cleared each round), the private copy of the checkout, and bwrap's namespaces and mounts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, Result, Stats, diffs, interleave  # noqa: E402

from opskit.base import (
    bwrap,  # noqa: E402
    config,
)
from opskit.chain import feature as chain
from opskit.demo.scenario import BRANCH, FEATURE, FEATURE_FILES, FIRST_FILES, SERVICE  # noqa: E402
from opskit.standins.repos import build  # noqa: E402
from opskit.storage.journal import Journal  # noqa: E402


def _stage(root: Path) -> tuple[config.Settings, str]:
    gitconfig = root / "gitconfig"
    gitconfig.write_text("[user]\n\tname = Bench\n\temail = bench@example.invalid\n")
    os.environ.update({"GIT_CONFIG_GLOBAL": str(gitconfig), "GIT_CONFIG_NOSYSTEM": "1",
                       "HOME": str(root / "home"), "OPSKIT_STATE_DIR": str(root / "state")})
    (root / "home").mkdir()
    repos = build(root / "sb", SERVICE, FIRST_FILES, BRANCH)
    dev = repos.git()
    dev.run("checkout", "-q", "-b", FEATURE)
    head = repos.commit(FEATURE_FILES, "add the humanrail channel")
    dev.run("push", "-q", "origin", FEATURE)
    cfg = root / "conf" / "opskit.toml"
    cfg.parent.mkdir()
    (cfg.parent / ".env").write_text("OPSKIT_DEMO_WEBHOOK_URL=http://127.0.0.1:9/never\n")
    q = json.dumps
    cfg.write_text(f"[opskit]\nstate_dir = {q(str(root / 'state'))}\n\n[service.{SERVICE}]\n"
                   f"repo = {q(str(repos.bare))}\nworktree = {q(str(repos.worktree))}\nbranch = {q(BRANCH)}\n"
                   f"direct_push = false\ntest = {q(PY + ' ci/test.py')}\ntest_timeout = 30\n")
    return config.load(cfg), head


def run(rounds: int = 15, warmup: int = 2) -> Result:
    res = Result()
    b = "7 sandbox"
    why = bwrap.available()
    if why is not None:
        res.add(b, f"bwrap unavailable here: {why}", None, "")
        return res
    with tempfile.TemporaryDirectory(prefix="opskit-bench-sandbox-") as tmp:
        settings, head = _stage(Path(tmp))
        journal = Journal(settings.state_dir)
        svc = settings.service(SERVICE)

        def step(mode: str) -> float:
            s = dataclasses.replace(settings, services={SERVICE: dataclasses.replace(svc, sandbox=mode)})
            bwrap._start.cache_clear()  # a hook is a fresh process: it pays the probe on every push
            t = time.perf_counter()
            ctx = chain._context(s, journal, SERVICE, f"refs/heads/{FEATURE}", head, chain="bench",
                                 clock=chain.SYSTEM, write=lambda _line: None)
            chain._test(ctx)
            ms = (time.perf_counter() - t) * 1000
            ev = journal.last("test.", SERVICE)
            if ctx.stopped is not None or ev is None or ev.type != "test.pass" or ev.data.get("sandbox") != mode:
                raise RuntimeError(f"the demo's test step did not pass with sandbox={mode}: {ev and ev.data}")
            return ms

        def probe() -> float:
            bwrap._start.cache_clear()
            t = time.perf_counter()
            assert bwrap.available() is None
            return (time.perf_counter() - t) * 1000

        xs = interleave({"bwrap": lambda: step("bwrap"), "none": lambda: step("none"), "probe": probe},
                        rounds, warmup)
    res.add(b, "demo test step, sandbox = \"none\" (worktree + ci/test.py + event)", Stats.of(xs["none"]), "ms")
    res.add(b, "demo test step, sandbox = \"bwrap\"", Stats.of(xs["bwrap"]), "ms")
    added = Stats.of(diffs(xs["bwrap"], xs["none"]))
    res.add(b, "added by the sandbox (paired: bwrap − none, same round)", added, "ms", "≤ 50 ms",
            added.median <= 50)
    res.add(b, "the start probe alone (bwrap.available; included above, once per hook process)", Stats.of(xs["probe"]), "ms")
    return res


if __name__ == "__main__":
    from report import render_table

    out = run()
    print(render_table(out.rows))
