"""Pull mode over a real git:// remote (a git daemon): the every-minute `deploy` fetches,
survives the remote being down, and a revert push the remote refuses is not forced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from opskit.git.repo import Git
from tests.support.gitdaemon import git_daemon
from tests.support.gitsandbox import git
from tests.support.pipeline import Stage, env_for, make_stage


def point_at(st: Stage, url: str) -> None:
    text = st.config_path.read_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith("repo = ")]
    i = lines.index("[service.svc]") + 1
    lines.insert(i, f"repo = {json.dumps(url)}")
    st.config_path.write_text("\n".join(lines) + "\n")


def cron_deploy(st: Stage) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opskit", "deploy", "svc"], env={**os.environ, **env_for(st)},
                          capture_output=True, text=True, timeout=120, check=False)


def test_pull_mode_over_git_daemon(tmp_path: Path) -> None:
    other = tmp_path / "other"
    move = tmp_path / "move.sh"
    st = make_stage(tmp_path, deploy=f"if [ -e move ]; then sh {move}; fi; {{restart}}")
    try:
        git(tmp_path, "clone", "-q", str(st.sb.bare), str(other))
        move.write_text(f"cd {other} && git pull -q origin master && echo x >> other.txt && git add other.txt "
                        f"&& git commit -qm 'someone else' && git push -q origin master\n")
        with git_daemon(st.sb.bare.parent) as d:
            point_at(st, d.url(st.sb.bare.name))
            assert st.settings.service("svc").pull_mode
            r = st.deploy()
            assert r.ok and r.status == "healthy", r
        before, n = st.worktree_head(), len(st.types())
        new = st.good(files={"app.txt": "v2\n"})
        down = cron_deploy(st)  # cron's every-minute run while the remote is down
        assert down.returncode == 1, down.stdout + down.stderr
        [line] = down.stderr.strip().splitlines()
        assert line.startswith("opskit: git ls-remote git://127.0.0.1:") and "Connection refused" in line
        assert st.worktree_head() == before and "deploy.start" not in st.types()[n:]  # nothing half done
        with git_daemon(st.sb.bare.parent) as d:  # back (on another port)
            point_at(st, d.url(st.sb.bare.name))
            r = st.deploy()
            assert r.ok and r.sha == new and st.worktree_head() == new, r
            # The bad commit's deploy moves the remote (someone else pushed meanwhile): the
            # revert is made on top of what the remote has now, and pushed without force.
            bad = st.good(mode="crash", files={"move": "1\n"})
            r = st.deploy()
            assert r.status == "reverted" and r.revert is not None and r.revert.ok, r
            assert r.revert.plan is not None and r.revert.plan.strategy == "revert-on-top"
            tip = st.sb.tip()
            g = Git(st.sb.bare)
            assert tip == r.revert.revert_sha and g.is_ancestor(bad, tip)
            theirs = git(other, "rev-parse", "HEAD").stdout.strip()
            assert g.parents(tip) == [theirs] and g.is_ancestor(bad, theirs)  # their commit kept
            assert st.worktree_head() == tip and st.journal().last_good("svc") == tip
            assert st.deploy().status == "nothing"  # no loop
    finally:
        st.close()
