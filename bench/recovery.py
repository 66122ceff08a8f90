"""Benchmark 2: time to detect and restore, in a real sandbox (opskit.standins: a bare repo with
opskit's hooks installed, a deployed worktree, a service restarted by the deploy command).

Each round pushes two bad commits straight to master (direct_push; post-receive runs the
pipeline) and waits for the push to return after the verdict:
  never-starts  the commit makes the service exit at start-up (the 03:53 incident)
  dies-later    the service answers for DIE_AFTER s, then exits
A watcher polls the journal every 10 ms and notes when each event appears (event timestamps
have whole seconds only). Figures:
  (a) deploy.complete → health.fail, beside `startup` (never-starts) and beside
      DIE_AFTER + failures × period (dies-later): detection tracks the settings within a period;
  (b) health.fail → the revert's deploy.complete, minus the revert's own deploy command time
      (from the event's `duration`): opskit's overhead to decide, commit, push and start
      redeploying the revert. Target ≤ 1 s;
  (c) push → rollback.complete (the reverted code deployed and through its gate), with the
      tight settings measured and the seed's settings computed from it:
      c_seed = c_tight − startup_tight − window_tight + startup_seed + window_seed.
      `--full` runs the seed's settings (60 s window) once for real.
The seed's own figure: merge 03:53 → rollback complete 03:57:27 (≈ 267 s, by hand).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OPSKIT, ROOT, Result, Row, Stats, bench_env  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))
TIGHT = {"window": 3.0, "period": 0.5, "timeout": 1.0, "failures": 2, "startup": 2.0}
SEED = {"window": 60.0, "period": 2.0, "timeout": 2.0, "failures": 3, "startup": 30.0}
SEED_FIGURE = 267.0  # 03:53:00 → 03:57:27
DIE_AFTER = 1.0


class Watcher(threading.Thread):
    """When each new journal event first became visible (monotonic seconds)."""

    def __init__(self, state_dir: Path, after_id: int) -> None:
        super().__init__(daemon=True)
        self.state_dir, self.after_id = state_dir, after_id
        self.seen: list[tuple[float, Any]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from opskit.storage.journal import Journal

        j = Journal(self.state_dir)
        while True:
            stopping = self.stop.is_set()
            for ev in j.query(after_id=self.after_id):
                self.after_id = ev.id
                self.seen.append((time.monotonic(), ev))
            if stopping:
                break
            self.stop.wait(0.01)
        j.close()

    def finish(self) -> list[tuple[float, Any]]:
        self.stop.set()
        self.join(5)
        return self.seen


class Sandbox:
    def __init__(self, root: Path, health: dict[str, float]) -> None:
        from opskit.standins import free_port
        from opskit.standins.repos import build
        from opskit.standins.service import deploy_command

        self.root, self.health = root, health
        self.env = bench_env(root)
        self.state = root / "state"
        self.port = free_port()
        self.pidfile, log = root / "run" / "svc.pid", root / "run" / "svc.log"
        self.repos = build(root, "svc", {"app.txt": "v1\n", "service.mode": "healthy\n"}, "master", env=self.env)
        self.config = root / "opskit.toml"
        q = json.dumps
        h = "\n".join(f"{k} = {v}" for k, v in health.items())
        self.config.write_text(
            f"[opskit]\nstate_dir = {q(str(self.state))}\nnotify = []\n\n"
            f"[service.svc]\nrepo = {q(str(self.repos.bare))}\nworktree = {q(str(self.repos.worktree))}\n"
            f'branch = "master"\ndeploy = {q(deploy_command(self.port, self.pidfile, log))}\n'
            f"deploy_timeout = 30\ndirect_push = true\n\n[service.svc.health]\n"
            f'url = "http://127.0.0.1:{self.port}/health"\n{h}\n')
        for args in (["hooks", "install", "svc"], ["deploy", "svc"]):
            r = self.opskit(*args)
            if r.returncode != 0:
                raise RuntimeError(f"opskit {' '.join(args)}: exit {r.returncode}\n{r.stdout[-800:]}{r.stderr[-800:]}")
        self.n = 0

    def opskit(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*OPSKIT, "--config", str(self.config), *args], env=self.env, capture_output=True,
                              text=True, timeout=300, check=False)

    def bad_push(self, mode: str) -> tuple[float, float, list[tuple[float, Any]]]:
        """Commit a bad mode (and a unique file, so no tree repeats a quarantined one), push;
        (push start, push end, events seen)."""
        from opskit.storage.journal import Journal

        self.n += 1
        self.repos.commit({"service.mode": mode + "\n", "round.txt": f"{self.n}\n"}, f"bad change {self.n}")
        j = Journal(self.state)
        last = j.last()
        j.close()
        w = Watcher(self.state, last.id if last else 0)
        w.start()
        t0 = time.monotonic()
        r = subprocess.run(["git", "-C", str(self.repos.dev), "push", "-q", "origin", "master"], env=self.env,
                           capture_output=True, text=True, timeout=600, check=False)
        t1 = time.monotonic()
        seen = w.finish()
        if r.returncode != 0:
            raise RuntimeError(f"push refused: {r.stderr[-800:]}")
        # The next round starts from the reverted code: bring the dev clone up to date.
        subprocess.run(["git", "-C", str(self.repos.dev), "pull", "-q", "--ff-only", "origin", "master"],
                       env=self.env, check=True, capture_output=True)
        return t0, t1, seen

    def close(self) -> None:
        from opskit.standins.service import stop

        stop(self.pidfile)


def _first(seen: list[tuple[float, Any]], type_: str, **data: Any) -> tuple[float, Any]:
    for at, ev in seen:
        if ev.type == type_ and all(ev.data.get(k) == v for k, v in data.items()):
            return at, ev
    raise RuntimeError(f"no {type_} {data or ''} event; saw {[ev.type for _, ev in seen]}")


def measure(sb: Sandbox, mode: str) -> dict[str, float]:
    t0, _, seen = sb.bad_push(mode)
    deployed, _ = _first(seen, "deploy.complete", kind="deploy")
    failed, _ = _first(seen, "health.fail")
    rdeployed, rev = _first(seen, "deploy.complete", kind="revert")
    done, _ = _first(seen, "rollback.complete")
    return {"detect": failed - deployed, "overhead": rdeployed - failed - float(rev.data.get("duration") or 0),
            "revert_cmd": float(rev.data.get("duration") or 0), "restore": done - t0}


def run(rounds: int = 5, full: bool = False) -> Result:
    res = Result()
    b = "2 detect+restore"
    xs: dict[str, dict[str, list[float]]] = {"crash": {}, f"die-after={DIE_AFTER:g}": {}}
    with tempfile.TemporaryDirectory(prefix="opskit-bench-recovery-") as t:
        sb = Sandbox(Path(t), TIGHT)
        try:
            for _ in range(rounds):
                for mode, acc in xs.items():
                    for k, v in measure(sb, mode).items():
                        acc.setdefault(k, []).append(v)
        finally:
            sb.close()
        seed_real: dict[str, float] | None = None
        if full:
            with tempfile.TemporaryDirectory(prefix="opskit-bench-recovery-seed-") as t2:
                sb2 = Sandbox(Path(t2), SEED)
                try:
                    seed_real = measure(sb2, "crash")
                finally:
                    sb2.close()

    tight = ", ".join(f"{k} {v:g}" for k, v in TIGHT.items())
    crash, dies = xs["crash"], xs[f"die-after={DIE_AFTER:g}"]
    expect = DIE_AFTER + TIGHT["failures"] * TIGHT["period"]
    res.add(b, f"(a) never starts: deploy end → health.fail (startup = {TIGHT['startup']:g} s)",
            Stats.of(crash["detect"]), "s", f"≈ startup {TIGHT['startup']:g} s (+ ≤ 1 period)",
            abs(Stats.of(crash["detect"]).median - TIGHT["startup"]) <= TIGHT["period"])
    res.add(b, f"(a) dies after {DIE_AFTER:g} s healthy: deploy end → health.fail",
            Stats.of(dies["detect"]), "s", f"≈ {DIE_AFTER:g} + failures × period = {expect:g} s (+ ≤ 1 period)",
            abs(Stats.of(dies["detect"]).median - expect) <= TIGHT["period"])
    ov = Stats.of(crash["overhead"] + dies["overhead"])
    res.add(b, "(b) health.fail → revert deployed, minus the deploy command's own time", ov, "s", "≤ 1 s",
            ov.median <= 1.0, note=f"revert's deploy command itself: median "
                                   f"{Stats.of(crash['revert_cmd'] + dies['revert_cmd']).median:.2f} s")
    c = Stats.of(crash["restore"])
    res.add(b, f"(c) push → reverted code deployed and gated, tight settings ({tight})", c, "s")
    adj = [x - TIGHT["startup"] - TIGHT["window"] + SEED["startup"] + SEED["window"] for x in crash["restore"]]
    seed = ", ".join(f"{k} {v:g}" for k, v in SEED.items())
    res.add(b, f"(c) the same, seed settings ({seed}), computed", Stats.of(adj), "s",
            note="startup + window dominate")
    if seed_real is not None:
        res.add(b, "(c) the same, seed settings, measured once (--full)", Stats.of([seed_real["restore"]]), "s")
    res.rows.append(Row(b, "(c) the seed incident: merge 03:53 → rollback complete 03:57:27 (by hand)",
                        Stats.of([SEED_FIGURE]), "s"))
    res.add(b, "(c) seed figure ÷ opskit with the seed's settings (computed)",
            Stats.of([SEED_FIGURE / x for x in adj]), "×")
    return res


if __name__ == "__main__":
    from report import render_table

    print(render_table(run(rounds=int(sys.argv[1]) if len(sys.argv) > 1 else 3).rows))
