"""Benchmark 9: reactions. (a) event → reaction start: a process that loaded the config (as a
hook or a deploy does) journals an event a `[[reaction]]` names; the time until the reaction's
command is running (its first act is `date +%s.%N`). Each round starts from no dispatcher, so
each pays the detached `opskit react` start-up: the cold case, the one a lone event meets.
(b) a backlog of 1,000 matching events drained by one `opskit react` (the whole command), for a
command reaction (`true`: each run is a process, plus the keeper that holds the dispatcher's
lock for it) and for a URL reaction (a POST to a local receiver): events per second.
"""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OPSKIT, ROOT, Result, Stats, bench_env, interleave, wall_ms  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))


def _me() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _idle(state: Path) -> None:
    from opskit.base import bus, lock

    end = time.monotonic() + 60
    while lock.is_held(state, bus.LOCK):
        if time.monotonic() > end:
            raise RuntimeError("the dispatcher did not finish")
        time.sleep(0.01)


def latency(rounds: int, warmup: int) -> list[float]:
    from opskit.base import config
    from opskit.storage.journal import Journal

    with tempfile.TemporaryDirectory(prefix="opskit-bench-react-") as t:
        tmp = Path(t)
        os.environ.update(bench_env(tmp))
        state, out = tmp / "state", tmp / "started"
        conf = tmp / "opskit.toml"
        conf.write_text(f"[opskit]\nstate_dir = {json.dumps(str(state))}\n\n[[reaction]]\nname = \"smoke\"\n"
                        f'on = ["deploy.complete"]\nuser = {json.dumps(_me())}\n'
                        f'run = "echo $OPSKIT_EVENT_ID $(date +%s.%N) >> {out}"\n')
        time.sleep(0.01)
        settings = config.load(conf)  # the watch a hook's process has: its appends start `opskit react`
        j = Journal(settings.state_dir)
        xs: list[float] = []
        for i in range(warmup + rounds):
            _idle(state)
            t0 = time.time()
            eid = j.append("deploy.complete", None, {"round": i}).id
            end = time.monotonic() + 30
            started = None
            while started is None:
                for line in (out.read_text().splitlines() if out.exists() else []):
                    ev, stamp = line.split()
                    if int(ev) == eid:
                        started = float(stamp)
                if time.monotonic() > end:
                    raise RuntimeError(f"reaction for event {eid} never started")
                time.sleep(0.002)
            if i >= warmup:
                xs.append((started - t0) * 1000)
        _idle(state)
        return xs


def _backlog(conf: Path, db: Path, n: int, env: dict[str, str]) -> float:
    con = sqlite3.connect(db)
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    with con:
        con.executemany("INSERT INTO events (ts, type, service, data, ts_precise) VALUES (?, 'deploy.complete', "
                        "'svc', '{}', ?)", ((stamp + "Z", f"{stamp}.{i % 1000000:06d}Z") for i in range(n)))
    con.close()
    ms = wall_ms([*OPSKIT, "--config", str(conf), "react", "--quiet"], env=env)
    return n / (ms / 1000)


def backlog(rounds: int, warmup: int, n: int) -> dict[str, list[float]]:
    from opskit.standins.receiver import Receiver
    from opskit.storage.journal import Journal

    with tempfile.TemporaryDirectory(prefix="opskit-bench-backlog-") as t, Receiver.start() as rx:
        tmp = Path(t)
        env = bench_env(tmp)
        confs = {}
        for kind, how in (("command", 'run = "true"'), ("url", f"url = {json.dumps(rx.url('webhook', 'status'))}")):
            state = tmp / kind
            Journal(state).close()
            conf = tmp / f"{kind}.toml"
            conf.write_text(f"[opskit]\nstate_dir = {json.dumps(str(state))}\n\n[[reaction]]\nname = \"r\"\n"
                            f'on = ["deploy.complete"]\nuser = {json.dumps(_me())}\n{how}\n'
                            if kind == "command" else
                            f"[opskit]\nstate_dir = {json.dumps(str(state))}\n\n[[reaction]]\nname = \"r\"\n"
                            f'on = ["deploy.complete"]\n{how}\n')
            confs[kind] = (conf, state / "journal.db")
        time.sleep(0.01)
        for conf, _ in confs.values():  # the cursors start now, before every backlog
            wall_ms([*OPSKIT, "--config", str(conf), "react", "--quiet"], env=env)

        def drain(kind: str) -> float:
            conf, db = confs[kind]
            before = len(rx.messages)
            rate = _backlog(conf, db, n, env)
            if kind == "url" and len(rx.messages) - before != n:
                raise RuntimeError(f"{len(rx.messages) - before} POSTs for {n} events")
            return rate

        return interleave({"command": lambda: drain("command"), "url": lambda: drain("url")}, rounds, warmup)


def run(rounds: int = 5, warmup: int = 1, latency_rounds: int = 25, n: int = 1000) -> Result:
    res = Result()
    lat = latency(latency_rounds, 2)
    res.add("9 reactions", "event journaled → its reaction's command running (detached `opskit react` start)",
            Stats.of(lat), "ms", target="≤ 1 s", met=Stats.of(lat).median <= 1000)
    rates = backlog(rounds, warmup, n)
    res.add("9 reactions", f"backlog of {n:,} events drained by one `opskit react`, command reaction (`true`)",
            Stats.of(rates["command"]), "events/s", note="a process (and its lock keeper) per event")
    res.add("9 reactions", f"backlog of {n:,} events drained by one `opskit react`, URL reaction (local POST)",
            Stats.of(rates["url"]), "events/s", note="each POST counted by the receiver")
    return res


if __name__ == "__main__":
    from report import render_table

    quick = "--quick" in sys.argv
    print(render_table(run(rounds=3 if quick else 5, warmup=0 if quick else 1,
                           latency_rounds=20 if quick else 25, n=300 if quick else 1000).rows))
