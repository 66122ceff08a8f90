"""The seed's scale: 30 services pushed within one second, on one host and on three hosts that
share a fleet journal on PostgreSQL (10 services each).

Each service is a real bare repo with opskit's hooks installed (direct_push), deployed by its
deploy command and gated by a `cmd` probe that reads the deployed `service.mode` (under
bubblewrap, as pushed code runs). A first round of good pushes makes every service's last
known-good; then the measured round: all 30 pushed at once, every third one bad. The push
returns after its verdict (post-receive streams the pipeline), so push → verdict is the push's
wall time. Figures: how many verdicts were right (good → deploy.complete, bad →
rollback.complete), how many failed by load (anything else), p50/p95/max push → verdict, and
the total peak RSS of every process of the run (sampled every 50 ms from /proc).

    .venv/bin/python bench/fleet_scale.py            # both set-ups
Figures only; nothing here is asserted.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OPSKIT, ROOT, Result, bench_env, load_avg  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

SERVICES = 30
HEALTH = 'cmd = "grep -q healthy service.mode"\nwindow = 1.0\nperiod = 0.25\ntimeout = 5\nfailures = 1\n'


class RssSampler(threading.Thread):
    """The largest sum of RSS, over every process whose environment carries the run's HOME."""

    def __init__(self, token: str) -> None:
        super().__init__(daemon=True)
        self.token = token.encode()
        self.peak_kb = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            total = 0
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        if self.token not in f.read():
                            continue
                    with open(f"/proc/{pid}/status") as f:
                        for line in f:
                            if line.startswith("VmRSS:"):
                                total += int(line.split()[1])
                except OSError:
                    continue
            self.peak_kb = max(self.peak_kb, total)
            self.halt.wait(0.05)


def setup(root: Path, hosts: list[str], url: str | None) -> list[tuple[str, Path, Path, dict[str, str]]]:
    """(service, config, dev clone, env) for each service, spread over the hosts."""
    from opskit.standins.repos import build

    root.mkdir(parents=True)
    env = bench_env(root)
    per = SERVICES // len(hosts)
    out = []
    for h, host in enumerate(hosts):
        conf = root / f"host-{host}"
        conf.mkdir()
        state = root / f"state-{host}"
        lines = [f"[opskit]\nstate_dir = {json.dumps(str(state))}\nnotify = []"]
        if url:
            lines.append(f'journal = "{url}"\nhost = "{host}"')
        names = [f"s{h * per + i:02d}" for i in range(per)]
        for name in names:
            r = build(root / name, name, {"app.txt": "v1\n", "service.mode": "healthy\n"}, env=env)
            lines.append(f"\n[service.{name}]\nrepo = {json.dumps(str(r.bare))}\n"
                         f"worktree = {json.dumps(str(r.worktree))}\nbranch = \"master\"\n"
                         f"deploy = \"true\"\ndirect_push = true\n\n[service.{name}.health]\n{HEALTH}")
            out.append((name, conf / "opskit.toml", r.dev, {**env, "OPSKIT_STATE_DIR": str(state)}))
        (conf / "opskit.toml").write_text("\n".join(lines) + "\n")
        if url and h == 0:
            subprocess.run([*OPSKIT, "--config", str(conf / "opskit.toml"), "journal", "migrate"], env=env,
                           check=True, capture_output=True)
        for name in names:
            subprocess.run([*OPSKIT, "--config", str(conf / "opskit.toml"), "hooks", "install", name], env=env,
                           check=True, capture_output=True)
    return out


def round_(services: list[tuple[str, Path, Path, dict[str, str]]], n: int, bad_every: int) -> list[dict[str, object]]:
    """Commit on every service, then push all of them within one second; each push's outcome."""
    for i, (_name, _, dev, env) in enumerate(services):
        mode = "crash" if bad_every and i % bad_every == 0 else "healthy"
        Path(dev, "service.mode").write_text(mode + "\n")
        Path(dev, "round.txt").write_text(f"{n}\n")
        subprocess.run(["git", "-C", str(dev), "add", "-A"], env=env, check=True)
        subprocess.run(["git", "-C", str(dev), "commit", "-qm", f"round {n}"], env=env, check=True)
    results: list[dict[str, object]] = [{} for _ in services]

    def push(i: int) -> None:
        name, cfg, dev, env = services[i]
        t0 = time.monotonic()
        r = subprocess.run(["git", "-C", str(dev), "push", "-q", "origin", "master"],
                           env={**env, "OPSKIT_CONFIG": str(cfg)}, capture_output=True, text=True, timeout=900, check=False)
        results[i] = {"name": name, "seconds": time.monotonic() - t0, "rc": r.returncode,
                      "bad": bool(bad_every and i % bad_every == 0)}

    threads = [threading.Thread(target=push, args=(i,)) for i in range(len(services))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _, _, dev, env in services:  # a revert landed upstream: the next round starts from it
        subprocess.run(["git", "-C", str(dev), "pull", "-q", "--ff-only", "origin", "master"], env=env,
                       capture_output=True, check=False)
    return results


def verdicts(services: list[tuple[str, Path, Path, dict[str, str]]], results: list[dict[str, object]],
             after: dict[Path, int]) -> tuple[int, int]:
    """(right, failed by load) from each host's journal: good → deploy.complete without a
    rollback, bad → rollback.complete."""
    from opskit.storage.journal import Journal

    right = wrong = 0
    for (name, _, _, env), res in zip(services, results, strict=True):
        state = Path(env["OPSKIT_STATE_DIR"])
        types = [e.type for e in Journal(state).query(service=name, after_id=after.get(state, 0))]
        ok = ("rollback.complete" in types) if res["bad"] else (
            "deploy.complete" in types and not any(t.startswith("rollback.") for t in types))
        right += ok
        wrong += not ok
    return right, wrong


def measure(root: Path, hosts: list[str], url: str | None) -> dict[str, float]:
    from opskit.storage.journal import Journal

    services = setup(root, hosts, url)
    round_(services, 1, 0)  # every service's last known-good
    states = {Path(env["OPSKIT_STATE_DIR"]) for *_, env in services}
    after = {s: Journal(s).last_event_id() for s in states}
    sampler = RssSampler(str(root))
    sampler.start()
    t0 = time.monotonic()
    results = round_(services, 2, 3)
    wall = time.monotonic() - t0
    sampler.halt.set()
    sampler.join()
    right, wrong = verdicts(services, results, after)
    secs = sorted(float(str(r["seconds"])) for r in results)
    p95 = secs[max(0, int(round(0.95 * len(secs))) - 1)]
    return {"right": right, "wrong": wrong, "p50": statistics.median(secs), "p95": p95, "max": secs[-1],
            "wall": wall, "rss_mb": sampler.peak_kb / 1024}


def run() -> Result:
    from common import Stats

    from tests.support.postgres import Postgres

    res = Result()
    with tempfile.TemporaryDirectory(prefix="opskit-bench-fleet-") as tmp:
        one = measure(Path(tmp) / "one", ["solo"], None)
    pg = Postgres()
    pg.init()
    try:
        with tempfile.TemporaryDirectory(prefix="opskit-bench-fleet-") as tmp:
            three = measure(Path(tmp) / "three", ["h1", "h2", "h3"], pg.url(pg.database()))
    finally:
        pg.destroy()
    for label, m in (("one host, SQLite", one), ("three hosts, one PostgreSQL", three)):
        note = (f"{m['right']:.0f}/30 verdicts right, {m['wrong']:.0f} failed by load; p50 {m['p50']:.1f} s, "
                f"max {m['max']:.1f} s; all done in {m['wall']:.1f} s; peak RSS of the run {m['rss_mb']:.0f} MB")
        res.add("fleet scale", f"30 services pushed at once, {label}: push → verdict p95", Stats(m["p95"], m["p95"],
                m["p95"], 1), "s", note=note)
    res.extra.append(f"load before: {load_avg()}")
    return res


if __name__ == "__main__":
    out = run()
    for row in out.rows:
        print(f"{row.what}: {row.figure()} — {row.note}")
    print(*out.extra, sep="\n")
