"""Benchmark 5: start-up of the CLI against the interpreter alone (targets: `opskit --help`
≤ 0.25 s; `opskit events --limit 50` on a journal of 2,000 events ≤ 120 ms, the whole command).

Hooks never pay this (they exec opskit.hookmain, stdlib only); cron entries and operators do.
`python -X importtime` shows where the time goes: the ten largest cumulative imports.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, ROOT, Result, Stats, bench_env, diffs, interleave, wall_ms  # noqa: E402


def opskit_argv() -> list[str]:
    script = Path(PY).parent / "opskit"  # what an operator runs (install.sh links it)
    return [str(script)] if script.exists() else [PY, "-m", "opskit"]


def importtime(args: list[str], top: int = 10, env: dict[str, str] | None = None) -> list[str]:
    """The `top` largest cumulative imports (µs) of `python -X importtime -m opskit ARGS`."""
    r = subprocess.run([PY, "-X", "importtime", "-m", "opskit", *args], capture_output=True, text=True,
                       check=False, env=env)
    rows = []
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cum_us, name = line[len("import time:"):].split("|")
        rows.append((int(cum_us), int(self_us), name.rstrip()))
    rows.sort(reverse=True)
    return [f"{cum / 1000:7.1f} ms  {name}" for cum, _, name in rows[:top]]


def _journal(env: dict[str, str], n: int = 2000) -> None:
    """A state dir with n events of the usual shapes, written through the journal itself."""
    sys.path.insert(0, str(ROOT / "src"))
    from opskit.storage.journal import Journal

    j = Journal(Path(env["OPSKIT_STATE_DIR"]))
    for i in range(n):
        j.append(("deploy.start", "health.pass", "deploy.complete", "notify.sent")[i % 4], f"svc{i % 7}",
                 {"sha": f"{i:040x}", "step": "deploy", "reason": "healthy for 3.0s (7 probes)"}, chain=f"p-{i // 4:08x}")
    j.close()


def run(rounds: int = 10, warmup: int = 2) -> Result:
    res = Result()
    cli = opskit_argv()
    tmp = Path(tempfile.mkdtemp(prefix="opskit-bench-startup-"))
    env = bench_env(tmp)
    _journal(env)
    subjects = {
        "python": lambda: wall_ms([PY, "-c", "pass"]),
        "help": lambda: wall_ms([*cli, "--help"], check=True),
        "gate-help": lambda: wall_ms([*cli, "health-gate", "--help"], check=True),
        "events": lambda: wall_ms([*cli, "events", "--limit", "50"], env=env, check=True),
    }
    xs = interleave(subjects, rounds, warmup)
    b = "5 start-up"
    res.add(b, "python -c pass", Stats.of(xs["python"]), "ms")
    s = Stats.of(xs["help"])
    res.add(b, "opskit --help", s, "ms", "≤ 250 ms", s.median <= 250)
    res.add(b, "opskit health-gate --help", Stats.of(xs["gate-help"]), "ms")
    res.add(b, "opskit --help minus python -c pass", Stats.of(diffs(xs["help"], xs["python"])), "ms")
    s = Stats.of(xs["events"])
    res.add(b, "opskit events --limit 50 (2,000 events)", s, "ms", "≤ 120 ms", s.median <= 120)
    res.add(b, "opskit events --limit 50 minus python -c pass", Stats.of(diffs(xs["events"], xs["python"])), "ms")
    for args in (["--help"], ["health-gate", "--help"], ["events", "--limit", "50"]):
        res.extra.append(f"`python -X importtime -m opskit {' '.join(args)}`, top 10 cumulative:\n\n```\n"
                         + "\n".join(importtime(args, env=env)) + "\n```")
    return res


if __name__ == "__main__":
    from report import render_table

    out = run()
    print(render_table(out.rows))
    print("\n\n".join(out.extra))
