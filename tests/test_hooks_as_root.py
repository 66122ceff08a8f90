"""Root installing or removing a service's hooks never writes in the push account's folders itself.

The bare repo's hooks/ and the worktree's git dir belong to the account (docs/ARCHITECTURE.md,
"Who may do what"): that account can replace hooks/ with a link to a folder of root's
(/etc/cron.hourly) between any check of root's and its write. So `sudo opskit hooks install` does
every read, write, rename and unlink there as the account (base/accounts.py as_account); a link
leads it only where that account could write anyway.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from opskit.base import config
from opskit.base.errors import UsageError
from opskit.wiring import hooks
from tests.support.accounts import throwaway_account
from tests.support.gitsandbox import Sandbox, make_sandbox
from tests.support.hooks import write_service_config

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: root installs the hooks of "
                                "another account's repositories, and the test creates that account")

REPO_HOOKS = ("pre-receive", "post-receive")
WORKTREE_HOOKS = ("pre-commit", "pre-merge-commit")


@pytest.fixture
def account() -> Iterator[pwd.struct_passwd]:
    with throwaway_account("opskhk") as pw:
        yield pw


@pytest.fixture(autouse=True)
def any_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    # This venv's interpreter lives under /root, which the account cannot start; install refuses
    # that (tests/test_server.py runs the real system install). Here the files are what counts.
    monkeypatch.setattr(hooks, "_check_interpreter", lambda python, repos: None)


class Run:
    """`opskit hooks ACTION svc` as the CLI runs it (core function; a UsageError is exit 2)."""

    def __init__(self, cfg: Path) -> None:
        self.cfg = cfg

    def __call__(self, action: str) -> tuple[int, str]:
        s = config.load(self.cfg)
        fn = hooks.install if action == "install" else hooks.uninstall
        try:
            fn(s, s.service("svc"))
        except UsageError as e:
            return int(e.exit_code), str(e)
        return 0, ""


@pytest.fixture
def base() -> Iterator[Path]:
    # Not under pytest's 0700 tmp dir: the account must reach its repositories.
    root = Path(tempfile.mkdtemp(prefix="opskit-hooks-root-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _service(base: Path, state_dir: Path, pw: pwd.struct_passwd) -> tuple[Sandbox, Run]:
    sb = make_sandbox(base / "sb")
    subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(base / "sb")], check=True)
    cfg = write_service_config(base / "conf" / "opskit.toml", sb, state_dir,
                               extra=f"user = \"{pw.pw_name}\"\n")
    return sb, Run(cfg)


def _victim(base: Path) -> Path:
    """A folder of root's, 0755, like /etc/cron.hourly, holding one script of root's."""
    v = base / "victim"
    v.mkdir(mode=0o755)
    (v / "logrotate").write_text("#!/bin/sh\nexit 0\n")
    os.chmod(v / "logrotate", 0o755)
    return v


def listing(folder: Path) -> dict[str, tuple[bytes, int, int, int]]:
    st = folder.lstat()
    out: dict[str, tuple[bytes, int, int, int]] = {".": (b"", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)}
    for p in sorted(folder.iterdir()):
        s = p.lstat()
        out[p.name] = (p.read_bytes() if p.is_file() else b"", stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid)
    return out


def _plant(link_at: Path, target: Path) -> None:
    """What the account does: its hooks folder becomes a link (made as the account)."""
    shutil.rmtree(link_at)
    os.symlink(target, link_at)
    os.lchown(link_at, link_at.parent.stat().st_uid, link_at.parent.stat().st_gid)


def test_root_installs_hooks_owned_by_the_account(base: Path, state_dir: Path, account: pwd.struct_passwd,
                                                 ) -> None:
    sb, run = _service(base, state_dir, account)
    foreign = sb.bare / "hooks" / "post-receive"
    foreign.write_text("#!/bin/sh\necho theirs\n")
    os.chmod(foreign, 0o755)
    os.chown(foreign, account.pw_uid, account.pw_gid)
    rc, err = run("install")
    assert rc == 0, err
    folders = {sb.bare / "hooks": REPO_HOOKS, sb.worktree / ".git" / "hooks": WORKTREE_HOOKS}
    for folder, names in folders.items():
        for name in names:
            st = (folder / name).lstat()
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (account.pw_uid, account.pw_gid, 0o755), name
    chained = sb.bare / "hooks" / "post-receive.pre-opskit"
    assert chained.read_text() == "#!/bin/sh\necho theirs\n" and chained.stat().st_uid == account.pw_uid
    rc, err = run("uninstall")
    assert rc == 0, err
    assert foreign.read_text() == "#!/bin/sh\necho theirs\n" and not chained.exists()
    assert not (sb.bare / "hooks" / "pre-receive").exists()


@pytest.mark.parametrize("where", ["repo", "worktree"])
def test_a_hooks_folder_linked_to_roots_folder_gets_nothing_from_root(
        base: Path, state_dir: Path, account: pwd.struct_passwd, where: str) -> None:
    sb, run = _service(base, state_dir, account)
    victim = _victim(base)
    before = listing(victim)
    _plant(sb.bare / "hooks" if where == "repo" else sb.worktree / ".git" / "hooks", victim)
    rc, err = run("install")
    assert listing(victim) == before
    assert rc == 2, err
    assert account.pw_name in err and "hooks folder" in err, err
    assert len(err.strip().splitlines()) == 1, err
    if where == "worktree":  # checked before anything was written: the repo's hooks are untouched too
        assert not (sb.bare / "hooks" / "pre-receive").exists()


def test_a_foreign_hook_behind_a_link_is_not_chained_by_root(base: Path, state_dir: Path,
                                                            account: pwd.struct_passwd) -> None:
    """Chaining renames NAME to NAME.pre-opskit: through the link, root would rename its own file."""
    sb, run = _service(base, state_dir, account)
    victim = _victim(base)
    (victim / "pre-receive").write_text("#!/bin/sh\necho roots\n")
    before = listing(victim)
    _plant(sb.bare / "hooks", victim)
    rc, err = run("install")
    assert listing(victim) == before
    assert rc == 2, err


def test_uninstall_through_a_planted_link_changes_nothing_outside(base: Path, state_dir: Path,
                                                                  account: pwd.struct_passwd) -> None:
    sb, run = _service(base, state_dir, account)
    rc, err = run("install")
    assert rc == 0, err
    victim = _victim(base)
    # Root's folder holding what looks like opskit's hook and a displaced one: uninstall would
    # delete the first and rename the second over it.
    shutil.copy(sb.bare / "hooks" / "pre-receive", victim / "pre-receive")
    os.chown(victim / "pre-receive", 0, 0)
    (victim / "post-receive.pre-opskit").write_text("#!/bin/sh\necho roots\n")
    before = listing(victim)
    _plant(sb.bare / "hooks", victim)
    rc, err = run("uninstall")
    assert listing(victim) == before
    assert rc == 2, err
    assert account.pw_name in err, err
