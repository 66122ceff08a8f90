"""Root reads nothing another account can write (base/safety.py), checked in this process.

tests/test_trust_rules.py shows the whole refusal through the CLI (nothing runs); these pin
each branch of the rule itself: who owns the file or a folder on its way, the group and world
write bits, a sticky folder (/tmp) on the way, a file root can change alone, and the one line
the operator reads. Real files, real owners (chown to a system account and to a uid no account
has), no stand-in for the file system.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from opskit.base import config, safety
from opskit.base.errors import UsageError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the rule is about what root "
                                "reads, and the tests chown files to other accounts")

DAEMON = pwd.getpwuid(1).pw_name  # uid 1 and gid 1: an account and a group that are not root's
NOBODY_UID = 54321  # no account has it


def _only_root(p: Path) -> None:
    for q in (p, *p.parents):
        assert q.stat().st_uid == 0, q


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    d = tmp_path / "etc"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    _only_root(d)
    return d


def _file(folder: Path, name: str = "opskit.toml", mode: int = 0o644) -> Path:
    p = folder / name
    p.write_text("")
    os.chmod(p, mode)
    return p


def test_a_file_only_root_can_change_passes(etc: Path) -> None:
    assert safety.writable_by_others(_file(etc)) is None


def test_a_file_that_does_not_exist_passes(etc: Path) -> None:
    # the .env beside the config is optional; its absence is nothing another account controls
    assert safety.writable_by_others(etc / ".env") is None


@pytest.mark.parametrize("uid", [1, NOBODY_UID])
def test_a_file_owned_by_another_account_is_named_with_its_owner(etc: Path, uid: int) -> None:
    p = _file(etc)
    os.chown(p, uid, -1)
    name = DAEMON if uid == 1 else "no such user"
    assert safety.writable_by_others(p) == f"{p} is owned by uid {uid} ({name}), not root"


def test_a_file_in_a_folder_another_account_owns_names_the_folder(etc: Path) -> None:
    p = _file(etc)
    os.chown(etc, 1, -1)
    assert safety.writable_by_others(p) == f"{p} is in {etc}, which is owned by uid 1 ({DAEMON}), not root"


def test_a_folder_further_up_is_checked_too(etc: Path) -> None:
    inner = etc / "a" / "b"
    inner.mkdir(parents=True)
    p = _file(inner)
    os.chmod(etc, 0o757)
    assert safety.writable_by_others(p) == f"{p} is in {etc}, which is writable by every account"


def test_a_file_writable_by_every_account(etc: Path) -> None:
    p = _file(etc, mode=0o646)
    assert safety.writable_by_others(p) == f"{p} is writable by every account"


def test_a_sticky_bit_on_the_file_itself_does_not_make_world_write_safe(etc: Path) -> None:
    # sticky protects the entries of a folder from each other, not the bytes of a file
    p = _file(etc, mode=0o646 | stat.S_ISVTX)
    assert safety.writable_by_others(p) == f"{p} is writable by every account"


def test_a_sticky_world_writable_folder_on_the_way_is_safe(etc: Path) -> None:
    # like /tmp: everyone may create files there, nobody may replace root's
    tmp = etc / "tmp"
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    assert safety.writable_by_others(_file(tmp)) is None
    deeper = tmp / "d"
    deeper.mkdir(mode=0o755)
    assert safety.writable_by_others(_file(deeper)) is None


def test_a_world_writable_folder_without_the_sticky_bit_is_named(etc: Path) -> None:
    p = _file(etc)
    os.chmod(etc, 0o777)
    assert safety.writable_by_others(p) == f"{p} is in {etc}, which is writable by every account"


@pytest.mark.parametrize("gid", [1, NOBODY_UID])
def test_a_file_writable_by_a_group_other_than_roots(etc: Path, gid: int) -> None:
    p = _file(etc, mode=0o664)
    os.chown(p, 0, gid)
    group = DAEMON if gid == 1 else str(gid)
    assert safety.writable_by_others(p) == f"{p} is writable by group {group}"


def test_a_group_that_may_not_write_the_file_is_no_problem(etc: Path) -> None:
    p = _file(etc, mode=0o644)
    os.chown(p, 0, 1)
    assert safety.writable_by_others(p) is None


def test_a_missing_file_is_not_judged_by_its_folder(etc: Path) -> None:
    # the rule is about what root reads: a file that is not there is read by nobody (the
    # config beside it, which is there, is refused for the same folder)
    os.chmod(etc, 0o777)
    assert safety.writable_by_others(etc / ".env") is None
    assert safety.writable_by_others(_file(etc)) == f"{etc / 'opskit.toml'} is in {etc}, which is writable by every account"


def test_a_file_root_group_may_write_passes(etc: Path) -> None:
    p = _file(etc, mode=0o664)
    os.chown(p, 0, 0)
    assert safety.writable_by_others(p) is None


def test_group_write_on_a_sticky_folder_is_safe_but_not_on_the_file(etc: Path) -> None:
    shared = etc / "shared"
    shared.mkdir()
    os.chown(shared, 0, 1)
    os.chmod(shared, 0o1775)
    p = _file(shared)
    assert safety.writable_by_others(p) is None
    os.chown(p, 0, 1)
    os.chmod(p, 0o664 | stat.S_ISVTX)
    assert safety.writable_by_others(p) == f"{p} is writable by group {DAEMON}"


def test_a_relative_path_is_checked_where_it_really_is(etc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _file(etc, mode=0o646)
    monkeypatch.chdir(etc)
    assert safety.writable_by_others("opskit.toml") == f"{p} is writable by every account"


def test_a_folder_that_cannot_be_looked_at_is_passed_over_not_the_end(
        etc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a stat that fails on the way (the folder went away under us) is skipped: the folders
    # above it are still checked
    inner = etc / "inner"
    inner.mkdir()
    p = _file(inner)
    os.chmod(etc, 0o777)
    real = os.stat

    def stat_(path, *a, **k):  # type: ignore[no-untyped-def]
        if Path(path) == inner:
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(safety.os, "stat", stat_)
    assert safety.writable_by_others(p) == f"{p} is in {etc}, which is writable by every account"


def test_refuse_as_root_raises_one_line_with_the_fix(etc: Path) -> None:
    p = _file(etc, mode=0o646)
    with pytest.raises(UsageError) as e:
        safety.refuse_as_root(p, "hook template")
    assert str(e.value) == (f"refusing to run as root with hook template {p} is writable by every account; "
                            f"fix it: chown root {p} && chmod go-w {p}")
    assert e.value.exit_code == 2
    safety.refuse_as_root(_file(etc, "safe"), "hook template")  # nothing to refuse: returns


def test_refuse_as_root_lets_an_account_read_its_own_files(etc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # not root: nothing to escalate to, an account's own config is fine
    p = _file(etc, mode=0o646)
    monkeypatch.setattr(safety.os, "geteuid", lambda: 1000)
    assert safety.refuse_as_root(p, "config") is None


@pytest.mark.parametrize("which", ["config", ".env"])
def test_config_load_refuses_a_config_or_env_another_account_can_change(etc: Path, which: str) -> None:
    cfg = _file(etc)
    cfg.write_text('[service.app]\nrepo = "/srv/git/app.git"\nworktree = "/srv/app"\ndeploy = "true"\n')
    env = _file(etc, ".env")
    named = cfg if which == "config" else env
    config.load(cfg)  # the control: all root's, it loads
    os.chown(named, 1, -1)
    with pytest.raises(UsageError) as e:
        config.load(cfg)
    assert str(e.value) == (f"refusing to run as root with {which} {named} is owned by uid 1 ({DAEMON}), "
                            f"not root; fix it: chown root {named} && chmod go-w {named}")
