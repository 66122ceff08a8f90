"""How much opskit's pre-commit hook adds to a `git commit` (issue 4: target ≤ 40 ms).

    .venv/bin/python bench/hook_commit.py [ROUNDS]

Builds a throwaway repo in a temp dir, then times, best-of and median of ROUNDS:
  bare     `git commit --allow-empty` with no hook (the commit itself is written)
  sh-exit1 the same, refused by a one-line `exit 1` sh hook (git's own hook overhead)
  opskit   the same, refused by opskit's installed pre-commit hook (the refusal path)
  python   the interpreter alone (`python -I -c pass`), for scale
The figure that matters is opskit − sh-exit1: what opskit adds on top of any hook at all.
The refusal is journaled (lockdown.blocked) by a forked child after the hook has answered;
the figure includes the fork, not the child's ~60 ms of config + sqlite.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(argv: list[str], cwd: Path, rounds: int, env: dict[str, str]) -> list[float]:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        subprocess.run(argv, check=False, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out.append((time.perf_counter() - t) * 1000)
        # The refusal journals from a detached child; let it finish so rounds do not
        # compete with each other's children for the CPU.
        time.sleep(0.25)
    return out


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    sys.path.insert(0, str(ROOT / "src"))
    from opskit.hooks import render

    with tempfile.TemporaryDirectory() as tmp:
        wt = Path(tmp) / "wt"
        env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x",
               "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x",
               "OPSKIT_STATE_DIR": str(Path(tmp) / "state")}
        env.pop("OPSKIT_BREAK_GLASS", None)
        subprocess.run(["git", "init", "-q", str(wt)], check=True)
        conf = Path(tmp) / "opskit.toml"
        conf.write_text(f'[service.b]\nrepo = "{tmp}/none.git"\nworktree = "{wt}"\n')
        hook = wt / ".git" / "hooks" / "pre-commit"
        commit = ["git", "commit", "-q", "--allow-empty", "-m", "x"]
        results = {}
        results["bare"] = timed(commit, wt, rounds, env)
        hook.write_text("#!/bin/sh\nexit 1\n")
        hook.chmod(0o755)
        results["sh-exit1"] = timed(commit, wt, rounds, env)
        hook.write_text(render("pre-commit", sys.executable, str(conf), "b"))
        results["opskit"] = timed(commit, wt, rounds, env)
        results["python"] = timed([sys.executable, "-I", "-c", "pass"], wt, rounds, env)
        for name, xs in results.items():
            print(f"{name:<9} best {min(xs):6.1f} ms   median {statistics.median(xs):6.1f} ms")
        added = statistics.median(results["opskit"]) - statistics.median(results["sh-exit1"])
        best = min(results["opskit"]) - min(results["sh-exit1"])
        print(f"opskit adds: median {added:.1f} ms, best {best:.1f} ms (target ≤ 40 ms)")


if __name__ == "__main__":
    main()
