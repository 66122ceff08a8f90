"""opskit doctor: says what is missing and how to fix it, and changes nothing."""

from __future__ import annotations

import json


def test_doctor_names_missing_hooks_then_passes(opskit, write_config, sandbox) -> None:
    cfg = write_config(
        f'[notify.ops]\ntype = "webhook"\nurl = "http://127.0.0.1:9/secret-path-xyz"\n'
        f'[opskit]\nnotify = ["ops"]\n'
        f'[service.web]\nrepo = "{sandbox.bare}"\nworktree = "{sandbox.worktree}"\ndeploy = "true"\n'
        f'[service.web.health]\nurl = "http://127.0.0.1:9/health"\n'
    )
    hooks_dir = sandbox.bare / "hooks"
    before = sorted(p.name for p in hooks_dir.iterdir())
    r = opskit("--config", str(cfg), "doctor", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert not checks["service web: hooks"]["ok"]
    assert "opskit hooks install web" in checks["service web: hooks"]["fix"]
    assert checks["service web: repo"]["ok"] and checks["service web: worktree"]["ok"]
    assert sorted(p.name for p in hooks_dir.iterdir()) == before  # doctor changes nothing
    assert "secret-path-xyz" not in r.stdout + r.stderr

    assert opskit("--config", str(cfg), "hooks", "install", "web").returncode == 0
    r = opskit("--config", str(cfg), "doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "✗" not in r.stdout


def test_doctor_flags_a_worktree_that_is_not_a_checkout(opskit, write_config, sandbox, tmp_path) -> None:
    cfg = write_config(f'[service.web]\nrepo = "{sandbox.bare}"\nworktree = "{tmp_path / "nowhere"}"\n')
    r = opskit("--config", str(cfg), "doctor")
    assert r.returncode == 1
    assert "is not a git checkout" in r.stdout
