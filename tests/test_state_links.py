"""Root never writes through a path someone else controls (docs/ARCHITECTURE.md, who may do what).

The system install's state dir is root:GROUP 2770: every member of the group (the git push
account) can plant a symlink, a hard link or a renamed file at any name in it. A member plants
links at each name root's commands open — locks/NAME.lock, cron.lock, logs/cron.log, inbox.lock,
journal.db-wal/-shm — pointing at a root-owned 0600 victim and at a dangling target; root's
commands (deploy, cron-check, cron install --system, inbox, status, cron.d's lines as cron runs
them) leave the victim byte for byte and mode unchanged, create nothing at the dangling target,
and exit 2 with one line naming the path and the fix. A forged 'running' deploy row makes root
do no more than its writer could. The first half is statefs' rule itself, in-process (root
makes the hard links: fs.protected_hardlinks keeps an account from linking a file it cannot
write); the second half real accounts on the real install. Needs root; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from opskit.base import statefs
from tests.support.server import Server, need_root, run_as, server_fixture
from tests.test_server import add_app, as_cron, cron_lines, tune_gate

ROOT = pytest.mark.skipif(need_root() is not None, reason=need_root() or "")
SECRET = b"root's secret: never truncated, never chmodded\n"


def _victim(base: Path) -> Path:
    d = base / "rootonly"
    d.mkdir(mode=0o755, exist_ok=True)
    v = d / "victim"
    v.write_bytes(SECRET)
    os.chmod(v, 0o600)
    os.chown(v, 0, 0)
    return v


def _unchanged(victim: Path) -> None:
    st = os.stat(victim)
    assert victim.read_bytes() == SECRET, "the victim's bytes changed"
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0), oct(st.st_mode)


# --- statefs' rule, in-process ---------------------------------------------------------------

@pytest.fixture
def shared(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    os.chmod(d, 0o2770)
    return d


def _why(e: pytest.ExceptionInfo[statefs.Unsafe], path: Path, why: str) -> bool:
    return e.value.path == str(path) and str(e.value).startswith(f"{path}: {why}; opskit does not follow links")


def test_check_sqlite_holds_the_journal_and_its_wal_and_shm_to_the_rule(shared: Path, tmp_path: Path) -> None:
    """In-process (the server test plants the same through the installed CLI): the three names
    SQLite opens by name, each a regular single-link file; -wal and -shm also the group's, or
    exactly what SQLite makes them (the journal's owner and mode)."""
    db = shared / "journal.db"
    assert statefs.check_sqlite(db, shared) is None
    db.write_bytes(b"")
    os.chmod(db, 0o600)  # only opened, never written or shared by this check: any mode
    assert statefs.check_sqlite(db, shared).st_ino == os.lstat(db).st_ino  # type: ignore[union-attr]
    os.link(db, tmp_path / "second-name")
    with pytest.raises(statefs.Unsafe) as e:
        statefs.check_sqlite(db, shared)
    assert _why(e, db, "has 2 hard links (another name points at the same file)")
    (tmp_path / "second-name").unlink()
    os.chmod(db, 0o644)
    for suffix in ("-wal", "-shm"):
        side = Path(f"{db}{suffix}")
        side.symlink_to(tmp_path / "nowhere")
        with pytest.raises(statefs.Unsafe) as e:
            statefs.check_sqlite(db, shared)
        assert e.value.path == str(side) and not (tmp_path / "nowhere").exists()
        side.unlink()
        side.write_bytes(b"")
        os.link(side, tmp_path / "second-name")
        with pytest.raises(statefs.Unsafe) as e:
            statefs.check_sqlite(db, shared)
        assert _why(e, side, "has 2 hard links (another name points at the same file)")
        (tmp_path / "second-name").unlink()
        os.chmod(side, 0o644)  # the journal's owner and mode: what SQLite itself makes it
        assert statefs.check_sqlite(db, shared) is not None
        os.chmod(side, 0o600)  # neither that nor the group's: a file planted for root to write
        with pytest.raises(statefs.Unsafe) as e:
            statefs.check_sqlite(db, shared)
        assert _why(e, side, "is not writable by group root (mode 0600), so it is not a file opskit shares there")
        os.chmod(side, 0o660)
        assert statefs.check_sqlite(db, shared) is not None
        side.unlink()
    # a -wal that is what SQLite makes it does not stop the look at the -shm beside it
    Path(f"{db}-wal").write_bytes(b"")
    os.chmod(f"{db}-wal", 0o644)
    Path(f"{db}-shm").symlink_to(tmp_path / "nowhere")
    with pytest.raises(statefs.Unsafe) as e:
        statefs.check_sqlite(db, shared)
    assert e.value.path == f"{db}-shm" and not (tmp_path / "nowhere").exists()


def test_check_existing_is_the_groups_rule_in_a_shared_dir_and_the_owners_in_a_personal_one(
        shared: Path, tmp_path: Path) -> None:
    f = shared / "file"
    f.write_bytes(b"x")
    sst = os.stat(shared)

    def check(mode: int, write: bool, state_st: os.stat_result = sst, **kw: bool) -> str | None:
        os.chmod(f, mode)
        try:
            statefs.check_existing(os.lstat(f), f, write=write, state_st=state_st, **kw)
        except statefs.Unsafe as e:
            assert e.path == str(f)
            return str(e).split("; opskit does not follow")[0].removeprefix(f"{f}: ")
        return None

    assert check(0o640, write=False) is None
    assert check(0o600, write=False) == "is not readable by group root (mode 0600), so it is not a file opskit shares there"
    assert check(0o640, write=True) == "is not writable by group root (mode 0640), so it is not a file opskit shares there"
    assert check(0o660, write=True) is None
    assert check(0o600, write=False, flock_only=True) is None  # only flocked: no group bits needed
    assert check(0o640, write=True, flock_only=True) == (
        "is not writable by group root (mode 0640), so it is not a file opskit shares there")
    os.chown(shared, -1, 54321)  # a gid with no group: said as the number
    assert check(0o660, write=False, state_st=os.stat(shared)) == (
        "is not readable by group 54321 (mode 0660), so it is not a file opskit shares there")
    personal = tmp_path / "personal"
    personal.mkdir()
    pst = os.stat(personal)
    assert check(0o600, write=True, state_st=pst) is None  # ours: no group rule in a personal dir
    os.chown(f, 65534, -1)
    assert check(0o666, write=False, state_st=pst) == (
        "belongs to uid 65534, not to this account or the state dir's owner")
    f.unlink()
    os.mkfifo(f)
    with pytest.raises(statefs.Unsafe) as e:
        statefs.check_existing(os.lstat(f), f, write=False, state_st=sst)
    assert _why(e, f, "is not a regular file")


def test_open_file_refuses_links_hard_links_fifos_and_linked_folders(shared: Path, tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    nowhere = tmp_path / "rootonly" / "made-through-a-link"
    (shared / "locks").mkdir()
    os.symlink(victim, shared / "locks" / "sym.lock")
    os.symlink(nowhere, shared / "locks" / "dangling.lock")
    os.link(victim, shared / "locks" / "hard.lock")
    os.mkfifo(shared / "locks" / "fifo.lock")
    os.symlink(tmp_path / "rootonly", shared / "logs")
    cases = {"sym.lock": "symbolic link", "dangling.lock": "symbolic link", "hard.lock": "2 hard links",
             "fifo.lock": "not a regular file"}
    for name, why in cases.items():
        for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY, os.O_WRONLY | os.O_APPEND | os.O_TRUNC):
            with pytest.raises(statefs.Unsafe) as e:
                statefs.open_file(shared / "locks" / name, shared, flags)
            assert why in str(e.value) and f"rm {shared}/locks/{name}" in str(e.value)
            assert "\n" not in str(e.value)
    with pytest.raises(statefs.Unsafe, match="logs: is a link or not a folder"):
        statefs.open_file(shared / "logs" / "victim", shared, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with pytest.raises(statefs.Unsafe):
        statefs.mkdir(shared / "logs" / "sub", shared)
    with pytest.raises(FileExistsError):  # a dangling link is "something there", never followed
        statefs.create_exclusive(shared / "locks" / "dangling.lock", shared)
    statefs.share(shared / "locks" / "sym.lock", shared)
    statefs.share(shared / "locks" / "hard.lock", shared)
    _unchanged(victim)
    assert not nowhere.exists() and not (tmp_path / "rootonly" / "sub").exists()


def test_a_renamed_secret_of_ours_is_never_written_or_shared(shared: Path) -> None:
    """A group member can rename any file in the (non-sticky) state dir: root's 0600 file
    moved to a lock's or a log's name is regular, single-link and root's own."""
    secret = shared / "decision.key"
    secret.write_bytes(SECRET)
    os.chmod(secret, 0o600)
    (shared / "logs").mkdir()
    os.rename(secret, shared / "logs" / "cron.log")
    with pytest.raises(statefs.Unsafe, match="not writable by group"):
        statefs.open_file(shared / "logs" / "cron.log", shared, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with pytest.raises(statefs.Unsafe, match="not readable by group"):
        statefs.open_file(shared / "logs" / "cron.log", shared, os.O_RDONLY)
    statefs.share(shared / "logs" / "cron.log", shared)
    _unchanged(shared / "logs" / "cron.log")


def test_created_files_are_shared_and_existing_group_files_open(shared: Path) -> None:
    fd = statefs.open_file(shared / "locks" / "app.lock", shared, os.O_RDWR | os.O_CREAT, 0o640)
    os.close(fd)
    assert stat.S_IMODE(os.stat(shared / "locks" / "app.lock").st_mode) == 0o660
    assert os.stat(shared / "locks").st_mode & 0o2070 == 0o2070
    os.close(statefs.open_file(shared / "locks" / "app.lock", shared, os.O_RDWR))  # the group's: fine
    fd = statefs.create_exclusive(shared / "crash-x.log", shared, 0o640)
    os.close(fd)
    assert stat.S_IMODE(os.stat(shared / "crash-x.log").st_mode) == 0o640


def test_fallback_never_appends_to_or_truncates_a_hard_link(shared: Path, tmp_path: Path) -> None:
    from opskit.storage import fallback

    victim = _victim(tmp_path)
    os.link(victim, shared / fallback.NAME)
    where = fallback.keep(shared, {"kind": "event", "type": "x"}, OSError(28, "No space left on device"),
                          shared / "journal.db")
    assert where != str(shared / fallback.NAME)
    _unchanged(victim)
    for p in fallback.locations(shared)[1:]:
        Path(p).unlink(missing_ok=True)


def test_crash_log_is_never_written_through_a_planted_link(shared: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime as dt

    from opskit import cli
    from opskit.commands import _common

    victim = _victim(tmp_path)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for s in (stamp, (dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)).strftime("%Y%m%dT%H%M%SZ")):
        os.symlink(victim, shared / f"crash-{s}-{os.getpid()}.log")
    monkeypatch.setattr(_common.STATE, "state_dir", lambda: shared)
    assert cli._crash_log(RuntimeError("boom")) is None
    _unchanged(victim)


def test_a_planted_cron_log_never_stops_the_job_it_logs(shared: Path, tmp_path: Path) -> None:
    """One link at logs/cron.log must not stop every cron job (cron-check, inbox, notify --flush)
    before it runs: the job runs, its output goes to cron's mail, job.start records why."""
    import sys

    victim = _victim(tmp_path)
    (shared / "logs").mkdir()
    os.symlink(victim, shared / "logs" / "cron.log")
    cfg = tmp_path / "opskit.toml"
    cfg.write_text(f'[opskit]\nstate_dir = "{shared}"\n')
    r = subprocess.run([sys.executable, "-m", "opskit", "--config", str(cfg), "run-job", "--log",
                        str(shared / "logs" / "cron.log"), "nightly", "--", "sh", "-c", "echo ran-it"],
                       check=False, capture_output=True, text=True, timeout=60)
    _unchanged(victim)
    assert r.returncode == 0 and "ran-it" in r.stdout, r.stdout + r.stderr
    assert "--log refused, output goes to cron's mail" in r.stderr and "symbolic link" in r.stderr, r.stderr
    ev = subprocess.run([sys.executable, "-m", "opskit", "--config", str(cfg), "events", "--json", "--type", "job."],
                        check=False, capture_output=True, text=True, timeout=60)
    start = next(json.loads(ln) for ln in ev.stdout.splitlines() if '"job.start"' in ln)
    assert "symbolic link" in start["data"]["log_refused"], start


def test_the_service_lock_refuses_a_link_before_touching_it(shared: Path, tmp_path: Path) -> None:
    from opskit.base.lock import ServiceLock, is_held, read_holder

    victim = _victim(tmp_path)
    (shared / "locks").mkdir()
    os.symlink(victim, shared / "locks" / "app.lock")
    errors: list[Exception] = []
    for call in (lambda: ServiceLock(shared, "app", wait=0).acquire(), lambda: is_held(shared, "app")):
        try:
            call()
        except Exception as e:  # noqa: BLE001 - the victim is checked before the error's kind
            errors.append(e)
    assert read_holder(shared, "app") is None
    _unchanged(victim)
    assert len(errors) == 2 and all(isinstance(e, statefs.Unsafe) for e in errors), errors
    assert "app.lock: is a symbolic link" in str(errors[0])


def test_crontab_install_lock_is_never_created_through_a_link(shared: Path, tmp_path: Path) -> None:
    from opskit.wiring import cron

    victim = _victim(tmp_path)
    nowhere = tmp_path / "rootonly" / "made-through-a-link"
    errors: list[Exception] = []
    for target in (victim, nowhere):
        os.symlink(target, shared / "cron.lock")
        try:
            with cron._locked(shared):
                pass
        except Exception as e:  # noqa: BLE001 - what was touched is checked first
            errors.append(e)
        (shared / "cron.lock").unlink()
    _unchanged(victim)
    assert not nowhere.exists()
    assert len(errors) == 2 and all("cron.lock: is a symbolic link" in str(e) for e in errors), errors


# --- real accounts on the real system install -------------------------------------------------

@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    if need_root() is not None:
        pytest.skip(need_root() or "")
    for srv in server_fixture():
        r = add_app(srv)
        assert r.returncode == 0, r.stdout + r.stderr
        tune_gate(srv)
        yield srv


def _plant(srv: Server, name: str, target: Path) -> Path:
    """The git account (a member of the group) puts a symlink at state/name."""
    at = srv.state / name
    r = run_as(srv.git, ["/bin/sh", "-c", 'mkdir -p "$(dirname "$1")" && rm -f "$1" && ln -s "$2" "$1"',
                         "sh", str(at), str(target)])
    assert r.returncode == 0, r.stderr
    return at


def _unplant(srv: Server, at: Path) -> None:
    r = run_as(srv.git, ["rm", "-f", str(at)])
    assert r.returncode == 0, r.stderr


def _targets(srv: Server) -> tuple[Path, Path]:
    victim = _victim(srv.base)
    nowhere = srv.base / "rootonly" / "made-through-a-link"
    nowhere.unlink(missing_ok=True)
    return victim, nowhere


def _refused(srv: Server, r: subprocess.CompletedProcess[str], at: Path) -> None:
    """What was touched first (the victim, the dangling target), then the one-line exit 2."""
    _unchanged(srv.base / "rootonly" / "victim")
    assert not (srv.base / "rootonly" / "made-through-a-link").exists(), "created through a dangling link"
    _one_line_fix(r, at)


def _one_line_fix(r: subprocess.CompletedProcess[str], at: Path) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(at) in lines[0] and f"rm {at}" in lines[0], r.stderr


@ROOT
def test_root_deploy_and_cron_check_never_follow_a_planted_lock(server: Server) -> None:
    srv = server
    victim, nowhere = _targets(srv)
    head = run_as(srv.git, ["git", "-C", str(srv.worktree), "rev-parse", "HEAD"]).stdout.strip()
    for target in (victim, nowhere):
        at = _plant(srv, "locks/app.lock", target)
        try:
            _refused(srv, srv.ops("root", "deploy", "app", "--sha", head), at)
            srv.ops("root", "cron-check")
            srv.ops("root", "status")
        finally:
            _unplant(srv, at)
        _unchanged(victim)
        assert not nowhere.exists()


@ROOT
def test_a_forged_running_row_makes_root_do_no_more_than_its_writer(server: Server) -> None:
    """The git account writes a 'running' deploy row (the journal is the group's) and plants the
    lock: root's 5-minute cron-check touches nothing. With the lock clean, what it does is what
    `opskit deploy app` as the account does: the deploy runs as the account."""
    srv = server
    victim, nowhere = _targets(srv)
    forge = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute(\"INSERT INTO deploys "
             "(service, sha, kind, status, step, pid, started) VALUES ('app', ?, 'deploy', 'running', "
             "'deploy', ?, '2026-01-01T00:00:00Z')\", ('f' * 40, int(sys.argv[2]))); c.commit()")

    def forged(pid: int) -> None:
        r = run_as(srv.git, [str(srv.prefix / "bin" / "python"), "-c", forge, str(srv.state / "journal.db"), str(pid)])
        assert r.returncode == 0, r.stderr

    assert srv.ops("root", "status").returncode in (0, 1)  # the journal exists
    forged(2**22 + 1)  # above pid_max: a pid that is dead, as in the chain
    for target in (victim, nowhere):
        at = _plant(srv, "locks/app.lock", target)
        try:
            check = srv.ops("root", "cron-check", "--json")
            _unchanged(victim)
            assert not nowhere.exists()
            assert check.returncode in (0, 1), check.stdout + check.stderr
            assert "app.lock" in check.stdout, check.stdout
        finally:
            _unplant(srv, at)
        _unchanged(victim)
        assert not nowhere.exists()
    # The lock clean: root finishes the row as `opskit deploy app` would, as the account.
    home = Path(os.path.expanduser(f"~{srv.git}"))
    before = (home / "deploys.log").read_text() if (home / "deploys.log").exists() else ""
    check = srv.ops("root", "cron-check", "--json")
    assert check.returncode in (0, 1), check.stdout + check.stderr
    log = (home / "deploys.log").read_text()
    assert len(log) > len(before) and f"as {srv.git}" in log and "as root" not in log, log
    # pid 1 is alive but holds no lock: the row is a claim, the flock is the truth.
    forged(1)
    check = srv.ops("root", "cron-check", "--json")
    assert check.returncode in (0, 1) and '"unfinished": []' not in check.stdout, check.stdout + check.stderr
    st = os.stat(srv.state / "locks" / "app.lock")
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1


@ROOT
def test_planted_journal_wal_and_shm_links_are_exit_2_never_followed(server: Server) -> None:
    srv = server
    victim, nowhere = _targets(srv)
    for name in ("journal.db-wal", "journal.db-shm"):
        for target in (victim, nowhere):
            at = _plant(srv, name, target)
            try:
                for user in ("root", srv.operator):
                    _refused(srv, srv.ops(user, "status"), at)
                _refused(srv, srv.ops("root", "cron-check"), at)
                _refused(srv, srv.ops("root", "journal", "recover", "--force"), at)
            finally:
                _unplant(srv, at)
            _unchanged(victim)
            assert not nowhere.exists()
    assert srv.ops("root", "status").returncode in (0, 1)


@ROOT
def test_cron_install_system_never_follows_the_log(server: Server) -> None:
    srv = server
    env = {"OPSKIT_CRON_D": str(srv.crond)}
    srv.crond.parent.mkdir(exist_ok=True)
    srv.crond.unlink(missing_ok=True)
    victim, nowhere = _targets(srv)
    for name in ("logs/cron.log",):
        for target in (victim, nowhere):
            at = _plant(srv, name, target)
            try:
                _refused(srv, srv.ops("root", "cron", "install", "--system", env=env), at)
            finally:
                _unplant(srv, at)
            _unchanged(victim)
            assert not nowhere.exists()
            srv.crond.unlink(missing_ok=True)


@ROOT
def test_cron_d_lines_write_their_own_log_and_every_account_runs_after_root(server: Server) -> None:
    srv = server
    env = {"OPSKIT_CRON_D": str(srv.crond)}
    srv.crond.parent.mkdir(exist_ok=True)
    r = srv.ops("root", "cron", "install", "--system", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = cron_lines(srv.crond)
    root_line = next(cmd for _, user, cmd in lines if user == "root" and "notify-flush" in cmd)
    git_line = next(cmd for _, user, cmd in lines if user == srv.git)
    log = srv.state / "logs" / "cron.log"
    # Rotated away: root's line runs first and creates it; the account's line still runs.
    log.unlink()
    first = as_cron("root", root_line)
    assert first.returncode == 0, first.stdout + first.stderr
    st = os.stat(log)
    assert stat.S_IMODE(st.st_mode) & 0o060 == 0o060 and st.st_gid == os.stat(srv.state).st_gid, oct(st.st_mode)
    second = as_cron(srv.git, git_line)
    assert second.returncode == 0, second.stdout + second.stderr
    events = [json.loads(ln) for ln in srv.ops("root", "events", "--json", "--limit", "50").stdout.splitlines()]
    assert any(e["type"] == "job.ok" and e["data"].get("job") == "drift-scan-app" for e in events), events
    assert all(">" not in cmd for _, _, cmd in lines), lines  # no shell redirection: run-job --log
    # A link at the log: root's line refuses the log (one line, to cron's mail) but still runs
    # its job, and the victim is intact.
    victim, nowhere = _targets(srv)
    for target in (victim, nowhere):
        at = _plant(srv, "logs/cron.log", target)
        try:
            ran = as_cron("root", root_line)
            _unchanged(victim)
            assert not nowhere.exists()
            assert ran.returncode == 0 and str(at) in ran.stderr, ran.stdout + ran.stderr
            assert "--log refused, output goes to cron's mail" in ran.stderr, ran.stderr
        finally:
            _unplant(srv, at)
        _unchanged(victim)
        assert not nowhere.exists()


@ROOT
def test_inbox_lock_is_never_created_through_a_link(server: Server) -> None:
    srv = server
    before = srv.config.read_text()
    srv.config.write_text(before + '\n[notify.phone]\ntype = "telegram"\ntoken = "123456:abcdefgh"\n'
                          'chat_id = "1"\nallowed_users = [1]\napi_url = "http://127.0.0.1:9"\n')
    victim, nowhere = _targets(srv)
    try:
        for target in (victim, nowhere):
            at = _plant(srv, "inbox.lock", target)
            try:
                _refused(srv, srv.ops("root", "inbox"), at)
            finally:
                _unplant(srv, at)
            _unchanged(victim)
            assert not nowhere.exists()
    finally:
        srv.config.write_text(before)
