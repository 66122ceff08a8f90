"""Benchmark 1: what a refusing pre-commit hook costs a `git commit` (issue 4: target ≤ 40 ms).

    .venv/bin/python bench/hook_commit.py [ROUNDS]      (or: bench/run.py --only hook)

Four throwaway repos, one per way of refusing a commit on master, timed round by round:
  bare       `git commit --allow-empty` with no hook: the floor (the commit is written)
  shell      a three-line sh hook that refuses commits on master
  opskit     opskit's installed pre-commit hook (hooks/pre-commit → opskit.hookmain)
  framework  the pre-commit framework running pre-commit-hooks' no-commit-to-branch as a
             `repo: local` hook (offline: no clone, no network)
plus `python -I -c pass` for scale. The refusal is journaled (lockdown.blocked) by a forked
child after the hook has answered; the figure includes the fork, not the child's work, so
every run is followed by a short pause that lets it finish off the clock.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PY, ROOT, Result, Stats, bench_env, diffs, interleave, ratios, wall_ms  # noqa: E402

# The interpreter written into opskit's hook: the venv's by default; OPSKIT_HOOK_PYTHON=
# /opt/opskit/bin/python measures a system install (install.sh --system), as the git account runs it.
HOOK_PY = os.environ.get("OPSKIT_HOOK_PYTHON") or PY

SHELL_HOOK = """#!/bin/sh
branch=$(git symbolic-ref --short -q HEAD)
[ "$branch" = master ] && { echo "no commits on master here: ship through the pipeline" >&2; exit 1; }
exit 0
"""

FRAMEWORK_CONFIG = """repos:
-   repo: local
    hooks:
    -   id: no-commit-to-branch
        name: no-commit-to-branch
        entry: {entry}
        language: system
        pass_filenames: false
        always_run: true
        args: [--branch, master]
"""


def _git(env: dict[str, str], *args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def _repo(tmp: Path, name: str, env: dict[str, str]) -> Path:
    wt = tmp / name
    _git(env, "init", "-q", "-b", "master", str(wt))
    _git(env, "commit", "-q", "--allow-empty", "-m", "root", cwd=wt)
    return wt


def _setup(tmp: Path, env: dict[str, str]) -> dict[str, Path]:
    sys.path.insert(0, str(ROOT / "src"))
    from opskit.wiring.hooks import render

    repos = {name: _repo(tmp, name, env) for name in ("bare", "shell", "opskit", "framework")}
    hook = repos["shell"] / ".git" / "hooks" / "pre-commit"
    hook.write_text(SHELL_HOOK)
    hook.chmod(0o755)

    conf = tmp / "opskit.toml"
    conf.write_text(f'[service.b]\nrepo = "{tmp}/none.git"\nworktree = "{repos["opskit"]}"\n')
    hook = repos["opskit"] / ".git" / "hooks" / "pre-commit"
    hook.write_text(render("pre-commit", HOOK_PY, str(conf), "b", str(tmp / "state")))
    hook.chmod(0o755)

    fw = repos["framework"]
    entry = shutil.which("no-commit-to-branch", path=str(Path(PY).parent))
    if entry is None:
        raise RuntimeError("no-commit-to-branch not installed: run ./install.sh --dev")
    (fw / ".pre-commit-config.yaml").write_text(FRAMEWORK_CONFIG.format(entry=entry))
    _git(env, "add", ".pre-commit-config.yaml", cwd=fw)
    _git(env, "commit", "-q", "-m", "pre-commit config", cwd=fw)
    subprocess.run([str(Path(PY).parent / "pre-commit"), "install"], cwd=fw, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return repos


def run(rounds: int = 15, warmup: int = 2) -> Result:
    res = Result()
    commit = ["git", "commit", "-q", "--allow-empty", "-m", "x"]
    with tempfile.TemporaryDirectory(prefix="opskit-bench-hook-") as t:
        tmp = Path(t)
        env = bench_env(tmp)
        env["PRE_COMMIT_HOME"] = str(tmp / "pre-commit-cache")
        repos = _setup(tmp, env)
        refused: dict[str, bool] = {}

        def commit_in(name: str) -> float:
            t0 = time.perf_counter()
            r = subprocess.run(commit, cwd=repos[name], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, check=False)
            ms = (time.perf_counter() - t0) * 1000
            refused[name] = r.returncode != 0
            return ms

        subjects = {name: (lambda n=name: commit_in(n)) for name in repos}
        subjects["python"] = lambda: wall_ms([PY, "-I", "-c", "pass"])
        xs = interleave(subjects, rounds, warmup, settle=lambda: time.sleep(0.1))

    b = "1 hook cost"
    for name in ("bare", "shell", "opskit", "framework", "python"):
        what = {"bare": "git commit, no hook (floor)", "shell": "refused by 3-line sh hook",
                "opskit": "refused by opskit pre-commit", "framework": "refused by pre-commit framework",
                "python": "python -I -c pass (scale)"}[name]
        note = ""
        if name in refused and name != "bare" and not refused[name]:
            note = "NOT refused: the hook let the commit through"
        res.add(b, what, Stats.of(xs[name]), "ms", note=note)
    added = diffs(xs["opskit"], xs["bare"])
    s = Stats.of(added)
    res.add(b, "opskit added over bare commit", s, "ms", "≤ 40 ms", s.median <= 40)
    res.add(b, "opskit added over sh hook", Stats.of(diffs(xs["opskit"], xs["shell"])), "ms")
    fw_added = diffs(xs["framework"], xs["bare"])
    res.add(b, "framework added over bare commit", Stats.of(fw_added), "ms", note="issue 4 quotes ~440 ms")
    r = Stats.of(ratios(fw_added, [max(a, 0.5) for a in added]))
    res.add(b, "framework added ÷ opskit added", r, "×", "≥ 10×", r.median >= 10)
    return res


if __name__ == "__main__":
    from common import load_avg
    from report import render_table

    out = run(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
    print(render_table(out.rows))
    print(f"load average: {load_avg()}")
