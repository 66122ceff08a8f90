"""Pushed code runs in the bubblewrap sandbox: real bwrap, real pushes through the installed hooks.

Each feature branch carries an `attack.sh` that the service's `test` runs. The stage lives under
/var/tmp, not pytest's /tmp: the sandbox's fresh /tmp would hide anything there by accident, and
then these tests could not tell whether the state dir, config dir, worktree, bare repo and HOME
are really hidden. Where it matters, the same attack with sandbox = "none" is the control that
shows it does reach its target when nothing stops it (so the sandboxed case can fail).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opskit.base import bwrap
from opskit.git.repo import Git
from tests.support.chain import ChainStage, make_chain_stage

pytestmark = pytest.mark.skipif(bwrap.available() is not None, reason=f"bubblewrap cannot run here: "
                                f"{bwrap.available()}")

PY = sys.executable


@pytest.fixture
def base(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="opskit-bwrap-", dir="/var/tmp"))
    home, state = root / "home", root / "state"
    home.mkdir()
    (home / "id_secret").write_text("home-secret-7c1f\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(state))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def stage(root: Path, **cfg: Any) -> ChainStage:
    c = make_chain_stage(root / "t", **{"test": "sh attack.sh", "review": None, **cfg})
    (c.st.config_path.parent / ".env").write_text("API_TOKEN=env-secret-51d2\n")
    (c.sb.worktree / "prod.secret").write_text("prod-secret-a93e\n")  # only in the deployed worktree
    return c


def push(c: ChainStage, script: str, name: str = "feature/attack") -> tuple[str, Any]:
    c.feature(name, {"attack.sh": script})
    p = c.push(name)
    ev = c.events("test.")[-1]
    return p.stderr, ev


def snapshot(*roots: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in roots:
        for p in sorted(r.rglob("*")):
            rel = str(p.relative_to(r))
            if p.is_file() and not p.is_symlink() and not any(rel.startswith(s) for s in skip):
                out[f"{r}/{rel}"] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_pushed_test_cannot_read_secrets_journal_or_production(base: Path, mode: str) -> None:
    c = stage(base, sandbox=mode)
    try:
        targets = [c.st.config_path.parent / ".env", c.st.settings.state_dir / "journal.db",
                   c.sb.worktree / "prod.secret", base / "home" / "id_secret"]
        # `rev`: the secrets reach the tail reversed, past any redaction, if they are readable at all
        script = "".join(f'echo "== {t}"; cat "{t}" 2>&1 | head -c 300 | LC_ALL=C tr -cd "[:print:]\\n" | LC_ALL=C rev; echo\n' for t in targets) + "exit 1\n"
        out, ev = push(c, script)
        tail = ev.data["tail"]
        secrets = ["env-secret-51d2", "prod-secret-a93e", "home-secret-7c1f"]
        found = [s for s in secrets if s[::-1] in tail]
        assert ev.type == "test.fail" and ev.data["sandbox"] == mode
        if mode == "none":  # the control: unsandboxed, the same script reads every one of them
            assert found == secrets, tail
            assert "SQLite format 3"[::-1] in tail
            return
        assert found == [], tail
        assert "SQLite format 3"[::-1] not in tail and tail.count("No such file or directory"[::-1]) == 4, tail
        assert not any(s[::-1] in out for s in secrets)
    finally:
        c.st.close()


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_pushed_test_cannot_write_production_repo_or_state(base: Path, mode: str) -> None:
    c = stage(base, sandbox=mode)
    try:
        state = c.st.settings.state_dir
        bare, wt = c.sb.bare, c.sb.worktree
        watched = [bare / "hooks", bare / "config", bare / "HEAD", bare / "refs" / "heads" / c.sb.branch]
        before_wt = snapshot(wt, skip=(".git/",))
        before_bare = {str(p): p.read_bytes() for w in watched for p in ([w] if w.is_file() else w.rglob("*"))
                       if p.is_file()}
        script = "\n".join([
            f'echo PWNED-MARK >> "{wt}/app.txt"; echo PWNED-MARK > "{wt}/pwned"; rm -f "{wt}/prod.secret"',
            f'echo "echo PWNED-MARK" >> "{bare}/hooks/post-receive"; echo PWNED-MARK > "{bare}/pwned"',
            f'echo 0000000000000000000000000000000000000000 > "{bare}/refs/heads/{c.sb.branch}"',
            f'echo PWNED-MARK > "{state}/pwned"',
            f'{PY} -c "import sqlite3; sqlite3.connect(\'{state}/journal.db\').execute(\'CREATE TABLE pwned(x)\')"',
            "exit 1", ""])
        out, ev = push(c, script)
        assert ev.type == "test.fail" and ev.data["sandbox"] == mode
        planted = [p for p in (wt / "pwned", bare / "pwned", state / "pwned") if p.exists()]
        tables = [r[0] for r in sqlite3.connect(state / "journal.db").execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        if mode == "none":  # the control: unsandboxed, every write lands
            assert len(planted) == 3 and "pwned" in tables, ev.data["tail"]
            return
        assert "pwned" not in tables and "events" in tables
        assert planted == [], ev.data["tail"]
        assert snapshot(wt, skip=(".git/",)) == before_wt
        after_bare = {str(p): p.read_bytes() for w in watched for p in ([w] if w.is_file() else w.rglob("*"))
                      if p.is_file()}
        assert after_bare == before_bare
        assert "Read-only file system" in ev.data["tail"] or "No such file" in ev.data["tail"]
        assert Git(bare).branch_tip(c.sb.branch) == c.tip() and "PWNED" not in out
    finally:
        c.st.close()


@pytest.mark.parametrize("network", [False, True])
def test_pushed_test_reaches_loopback_only_with_sandbox_network(base: Path, network: bool) -> None:
    c = stage(base, sandbox_network=network)
    try:
        assert c.st.receiver is not None
        ports = {"receiver": c.st.receiver.port, "service": c.st.port}
        probe = ("import socket, sys\n"
                 "for name, port in ((a.split('=')[0], int(a.split('=')[1])) for a in sys.argv[1:]):\n"
                 "    try:\n"
                 "        socket.create_connection(('127.0.0.1', port), timeout=2).close()\n"
                 "        print('CONNECTED', name)\n"
                 "    except OSError as e:\n"
                 "        print('REFUSED', name, e)\n")
        script = (f"cat > probe.py <<'EOF'\n{probe}EOF\n"
                  f"{PY} probe.py " + " ".join(f"{k}={v}" for k, v in ports.items()) + "\nexit 1\n")
        _, ev = push(c, script)
        tail = ev.data["tail"]
        for name in ports:
            assert (f"CONNECTED {name}" in tail) is network and (f"REFUSED {name}" in tail) is not network, tail
    finally:
        c.st.close()


def _processes_with(token: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            stat = (d / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if token.encode() in cmd and stat and stat[0] != "Z":
            found.append(int(d.name))
    return found


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_background_process_of_the_test_is_gone_after_the_step(base: Path, mode: str) -> None:
    c = stage(base, sandbox=mode)
    token = f"opskit-orphan-{uuid.uuid4().hex[:12]}"
    try:
        # the orphan names itself (its argv) and says it started; exec keeps it one process
        script = (f'sh -c \'exec {PY} -c "import time; time.sleep(600)" {token}\' >/dev/null 2>&1 &\n'
                  f'sleep 0.3; echo "started $!"; cat /proc/$!/cmdline | tr "\\0" " "; echo\n')
        _, ev = push(c, script)
        assert token in ev.data["tail"], ev.data["tail"]  # it really ran, inside the step
        left = _processes_with(token)
        if mode == "none":  # the control: without the sandbox's pid namespace it outlives the step
            assert left, "the orphan did not survive unsandboxed: this test could not see one"
            return
        assert left == []
        assert ev.type == "test.pass" and ev.data["sandbox"] == "bwrap"
    finally:
        for pid in _processes_with(token):
            os.kill(pid, signal.SIGKILL)
        c.st.close()


def test_timed_out_test_takes_its_background_processes_with_it(base: Path) -> None:
    c = stage(base, test_timeout=2)
    token = f"opskit-orphan-{uuid.uuid4().hex[:12]}"
    try:
        script = (f'sh -c \'exec {PY} -c "import time; time.sleep(600)" {token}\' >/dev/null 2>&1 &\n'
                  f'sleep 0.3; cat /proc/$!/cmdline | tr "\\0" " "; echo; echo hanging; sleep 60\n')
        _, ev = push(c, script)
        assert ev.type == "test.fail" and ev.data["timed_out"] is True and token in ev.data["tail"]
        assert _processes_with(token) == [] and _processes_with("sleep 60") == []
    finally:
        for pid in _processes_with(token):
            os.kill(pid, signal.SIGKILL)
        c.st.close()


def test_webhook_url_reaches_no_output_and_no_event(base: Path) -> None:
    c = stage(base)
    try:
        assert c.st.receiver is not None
        url = c.st.receiver.url("discord")
        token = url.rstrip("/").rsplit("/", 1)[1]
        cfg = c.st.config_path
        # every way a test might find it, printed reversed and plain so no redaction hides a leak
        script = (f'env | rev; env; cat /proc/1/environ /proc/self/environ 2>&1 | tr "\\0" "\\n"\n'
                  f'cat "{cfg}" "{cfg.parent}/.env" 2>&1 | rev\n'
                  f'grep -rs "{c.st.receiver.port}" "{cfg.parent}" "{os.environ["OPSKIT_STATE_DIR"]}" | rev\n'
                  f'echo done\n')
        out, ev = push(c, script)
        assert ev.data["sandbox"] == "bwrap" and "done" in ev.data["tail"]
        everything = out + json.dumps([e.to_dict() for e in c.events()], ensure_ascii=False)
        assert token not in everything and token[::-1] not in everything
        assert url not in everything
    finally:
        c.st.close()


def test_honest_test_passes_in_its_private_copy_and_the_chain_deploys(base: Path) -> None:
    c = stage(base)
    try:
        before = c.tip()
        # other runs on this machine may have copies of their own in the temp dir right now
        copies = set(Path(tempfile.gettempdir()).glob("opskit-sandbox-*"))
        script = ('set -e\n'
                  'echo built > build.out; mkdir -p dist; echo x > /tmp/scratch; cat /tmp/scratch\n'
                  'test "$(git rev-parse HEAD)" = "$OPSKIT_HEAD"\n'
                  'git diff --stat "$OPSKIT_RANGE" --\n'
                  'echo "3 passed"\n')
        head = c.feature("feature/ok", {"attack.sh": script, "app.txt": "v2\n"})
        p = c.push("feature/ok")
        ev = c.last("test.pass")
        assert ev.sha == head and ev.data["sandbox"] == "bwrap", ev.data
        assert "3 passed" in ev.data["tail"] and "attack.sh" in ev.data["tail"]  # git history works inside
        assert "sandbox bwrap" in p.stderr and "merged feature/ok into master" in p.stderr, p.stderr
        assert Git(c.sb.bare).parents(c.tip()) == [before, head]
        assert c.st.worktree_head() == c.tip() and (c.sb.worktree / "app.txt").read_text() == "v2\n"
        assert not (c.sb.worktree / "build.out").exists()  # what the test built stayed in its copy
        assert c.worktrees_left() == [] and set(Path(tempfile.gettempdir()).glob("opskit-sandbox-*")) <= copies
    finally:
        c.st.close()


def test_failing_test_fails_the_chain_with_its_tail(base: Path) -> None:
    c = stage(base)
    try:
        before = c.tip()
        _, ev = push(c, 'echo "FAILED test_thing: assert 1 == 2"; exit 1\n')
        assert ev.type == "test.fail" and ev.data["sandbox"] == "bwrap" and ev.data["exit"] == 1
        assert "assert 1 == 2" in ev.data["tail"] and c.tip() == before
        assert c.st.receiver is not None and "assert 1 == 2" in c.st.receiver.wait_for(1)[0].body["content"]
    finally:
        c.st.close()


FAKE_BWRAP = "#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n"


def test_bwrap_that_cannot_start_fails_closed_with_one_line(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = base / "fakebin"
    fake.mkdir()
    (fake / "bwrap").write_text(FAKE_BWRAP)
    (fake / "bwrap").chmod(0o755)
    c = stage(base)
    try:
        before = c.tip()
        monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")  # what the hook finds on its PATH
        marker = c.probe / "ran-unsandboxed"
        out, ev = push(c, f'touch "{marker}"; echo "3 passed"\n')
        assert ev.type == "test.fail" and ev.data["sandbox"] == "unavailable", ev.data
        reason = ev.data["reason"]
        assert "\n" not in reason and "bwrap cannot start a sandbox" in reason and "Permission denied" in reason
        assert "apt-get install bubblewrap" in reason and 'sandbox = "none"' in reason
        assert reason in out and not marker.exists() and c.tip() == before and not c.events("merge")
        # doctor says the same before any push
        d = c.cli("doctor", "--json", env={"PATH": os.environ["PATH"]})
        check = {x["name"]: x for x in json.loads(d.stdout)["checks"]}["service svc: sandbox"]
        assert not check["ok"] and "Permission denied" in check["detail"] and "bubblewrap" in check["fix"]
    finally:
        c.st.close()


def test_missing_bwrap_is_named_with_its_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    why = bwrap.available("web")
    assert why is not None and "bwrap is not installed" in why and "apt-get install bubblewrap" in why
    assert '[service.web]' in why
    with pytest.raises(bwrap.Unavailable):
        bwrap.require("web")


def test_doctor_reports_the_sandbox_in_effect(base: Path) -> None:
    c = stage(base)
    try:
        d = c.cli("doctor", "--json")
        check = {x["name"]: x for x in json.loads(d.stdout)["checks"]}["service svc: sandbox"]
        assert check["ok"] and check["detail"].startswith("bwrap (") and "no network" in check["detail"]
    finally:
        c.st.close()
    c = stage(base / "n", sandbox="none")
    try:
        d = c.cli("doctor", "--json")
        check = {x["name"]: x for x in json.loads(d.stdout)["checks"]}["service svc: sandbox"]
        assert not check["ok"] and check["severity"] == "warning" and "unsandboxed" in check["detail"]
    finally:
        c.st.close()


def test_argv_keeps_the_work_dir_visible_under_a_hidden_path(tmp_path: Path) -> None:
    """The mount order: a checkout copy inside a hidden HOME (TMPDIR=~/tmp) is bound after it."""
    home = tmp_path / "home"
    work = home / "tmp" / "opskit-sandbox-x" / "wt"
    work.mkdir(parents=True)
    secret_file = tmp_path / "opskit.toml"  # a config straight in /etc: the file, not /etc, is hidden
    secret_file.write_text("url = 'x-secret-file'\n")
    policy = bwrap.Policy(work=work, hide=(home, Path("/")), hide_files=(secret_file,))
    args = bwrap.argv(policy, ["sh", "-c", f"pwd; touch made; cat {secret_file}; echo end"])
    assert args.index(str(home)) < args.index("--bind")
    assert "/" not in [args[i + 1] for i, a in enumerate(args) if a == "--tmpfs"]  # never hide the root
    from opskit.base import proc

    (home / "secret").write_text("x")
    r = proc.run(args, timeout=20)
    assert r.ok, r.tail_text()
    assert r.tail[0] == str(work) and r.tail[-1] == "end" and (work / "made").exists()
    assert "x-secret-file" not in r.tail_text()


def test_shallow_config_dir_hides_its_files_not_the_directory(tmp_path: Path) -> None:
    from opskit.base import config

    cfg = tmp_path / "opskit.toml"
    cfg.write_text("")
    svc = config.ServiceSettings(name="web", repo=str(tmp_path / "r.git"), worktree=tmp_path / "wt")
    settings = config.Settings(path=Path("/etc/opskit.toml"), state_dir=tmp_path / "state", services={"web": svc})
    policy = bwrap.policy_for(settings, svc, tmp_path / "work", tmp_path / "co")
    assert Path("/etc") not in policy.hide and Path("/etc/opskit.toml") in policy.hide_files
    assert Path("/etc/.env") in policy.hide_files and (tmp_path / "wt") in policy.hide
    settings = config.Settings(path=cfg, state_dir=tmp_path / "state", services={"web": svc})
    assert tmp_path in bwrap.policy_for(settings, svc, tmp_path / "work", tmp_path / "co").hide


def test_review_fails_closed_too(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = base / "fakebin"
    fake.mkdir()
    (fake / "bwrap").write_text(FAKE_BWRAP)
    (fake / "bwrap").chmod(0o755)
    c = make_chain_stage(base / "t", test=None, review="sh attack.sh")
    try:
        monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
        marker = c.probe / "ran-unsandboxed"
        c.feature("feature/r", {"attack.sh": f'touch "{marker}"; exit 0\n'})
        c.push("feature/r")
        ev = c.last("review.fail")
        assert ev.data["sandbox"] == "unavailable" and "bwrap cannot start a sandbox" in ev.data["reason"]
        assert not marker.exists() and not c.events("merge")
    finally:
        c.st.close()


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_health_cmd_probe_from_the_deployed_tree_is_sandboxed(base: Path, mode: str) -> None:
    """A `cmd` probe running a script of the deployed tree runs pushed code too: in the sandbox it
    keeps the network (to reach the service) and reads its tree, never the secrets or the state."""
    from tests.support.pipeline import hooked_stage

    st = hooked_stage(base / "t", extra={"sandbox": mode}, health={"url": None, "cmd": "sh check.sh", "window": 0.6})
    try:
        state = st.settings.state_dir
        env = st.config_path.parent / ".env"
        env.write_text("API_TOKEN=env-secret-51d2\n")
        check = "\n".join([
            f'if cat "{env}" >/dev/null 2>&1; then E=read; else E=hidden; fi',
            # a write into a hidden dir lands in its throwaway tmpfs: what counts is what it sees
            f'touch "{state}/pwned-probe" 2>/dev/null; if [ -e "{state}/journal.db" ]; then S=seen; else S=hidden; fi',
            'if touch pwned-in-tree 2>/dev/null; then W=written; else W=denied; fi',
            f'if {PY} -c "import urllib.request; urllib.request.urlopen(\'http://127.0.0.1:{st.port}/health\', '
            f'timeout=1)"; then N=ok; else N=refused; fi',
            'if [ -f app.txt ]; then T=tree; else T=elsewhere; fi',
            'echo "env=$E state=$S tree=$W net=$N cwd=$T"; exit 1', ""])
        st.sb.commit({"check.sh": check}, "a health check script in the tree")
        st.sb.push(st.sb.branch)
        ev = next(e for e in st.journal().query(service="svc", type_prefix="health.fail"))
        assert ev.data["sandbox"] == mode
        if mode == "none":  # the control: unsandboxed, the probe reads the .env and writes the state dir
            assert "env=read state=seen tree=written net=ok cwd=tree" in ev.data["reason"], ev.data
            assert (state / "pwned-probe").exists()
            return
        assert "env=hidden state=hidden tree=denied net=ok cwd=tree" in ev.data["reason"], ev.data
        assert not (state / "pwned-probe").exists() and not (st.sb.worktree / "pwned-in-tree").exists()
    finally:
        st.close()


def test_health_cmd_probe_fails_closed_without_bwrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from opskit.base import config
    from opskit.deploy import health

    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "bwrap").write_text(FAKE_BWRAP)
    (fake / "bwrap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    marker = tmp_path / "ran-unsandboxed"
    spec = config.HealthSettings(cmd=f"touch {marker}", startup=0.2, period=0.1, window=1.0, timeout=2.0)
    svc = config.ServiceSettings(name="web", repo=str(tmp_path / "r.git"), worktree=tmp_path, health=spec)
    settings = config.Settings(path=None, state_dir=tmp_path / "state", services={"web": svc})
    wrap = bwrap.probe_wrapper(settings, svc)
    assert wrap is not None
    verdict = health.run_gate(spec, wrap=wrap, cwd=tmp_path)
    assert not verdict.healthy and "bwrap cannot start a sandbox" in verdict.reason and not marker.exists()
    assert bwrap.probe_wrapper(settings, dataclasses.replace(svc, sandbox="none")) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a Unix account for the unprivileged case")
def test_sandbox_starts_and_hides_for_an_unprivileged_account(base: Path) -> None:
    """A service account (not root) gets the same sandbox through unprivileged user namespaces,
    and hidden paths it cannot even reach (another account's 0700 dir) do not stop bwrap."""
    import pwd
    import subprocess

    from opskit.base import proc

    name = f"opskbw{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        uid = pwd.getpwnam(name).pw_uid
        os.chmod(base, 0o755)
        state, other, work = base / "acct-state", base / "other" / "priv", base / "acct-work"
        for d in (state, work):
            d.mkdir()
            os.chown(d, uid, -1)
        (state / "journal.db").write_text("journal-secret-0b7e\n")
        os.chown(state / "journal.db", uid, -1)
        other.mkdir(parents=True)
        os.chmod(other, 0o700)  # root's, unreachable for the account
        policy = bwrap.Policy(work=work, hide=(state, other, other / "repo.git"))
        script = f'cat "{state}/journal.db" 2>&1; id -u; touch made; ls "{other}"; echo end'
        r = proc.run(["runuser", "-u", name, "--", *bwrap.argv(policy, ["sh", "-c", script])], timeout=20)
        assert r.ok, r.tail_text()
        assert "journal-secret-0b7e" not in r.tail_text() and str(uid) in r.tail and r.tail[-1] == "end"
        assert (work / "made").exists() and (work / "made").stat().st_uid == uid
        unsandboxed = proc.run(["runuser", "-u", name, "--", "cat", str(state / "journal.db")], timeout=20)
        assert "journal-secret-0b7e" in unsandboxed.tail_text()  # the control: the account can read it
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def test_a_path_shown_again_does_not_bring_back_a_hidden_one_below_it(base: Path) -> None:
    """The probe's deployed worktree under a hidden HOME is shown again read-only; a state dir
    inside that worktree stays hidden."""
    from opskit.base import proc

    home = base / "acct-home"
    tree = home / "srv" / "app"
    state = tree / "state"
    state.mkdir(parents=True)
    (tree / "app.txt").write_text("tree-visible\n")
    (state / "journal.db").write_text("journal-secret-0b7e\n")
    (home / "id_secret").write_text("home-secret-7c1f\n")
    policy = bwrap.Policy(work=None, chdir=tree, hide=(home, state), read_only=(tree,), network=True)
    r = proc.run(bwrap.argv(policy, ["sh", "-c", f'cat app.txt; cat "{state}/journal.db" "{home}/id_secret" '
                                                 '2>&1; touch x 2>&1; echo end']), timeout=20)
    out = r.tail_text()
    assert r.ok and "tree-visible" in out and "end" in out, out
    assert "journal-secret" not in out and "home-secret" not in out and not (tree / "x").exists()


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_health_gate_by_hand_runs_the_services_cmd_probe_sandboxed(tmp_path: Path, opskit, mode: str) -> None:
    """`opskit health-gate SERVICE` runs the service's own cmd probe (code from the deployed
    tree) as the deploy gate does: in the sandbox, where the state dir is hidden. A --cmd the
    operator types is theirs and runs as given."""
    state, wt = tmp_path / "state", tmp_path / "wt"
    state.mkdir()
    wt.mkdir()
    (state / "journal-probe").write_text("secret")
    cfg = tmp_path / "opskit.toml"
    cfg.write_text(f'[opskit]\nstate_dir = "{state}"\n\n[service.web]\nrepo = "{tmp_path / "r.git"}"\n'
                   f'worktree = "{wt}"\nsandbox = "{mode}"\n\n[service.web.health]\n'
                   f'cmd = "test ! -e {state / "journal-probe"}"\nwindow = 0.3\nperiod = 0.1\nstartup = 1\n')
    r = opskit("--config", str(cfg), "health-gate", "web", "--json")
    verdict = json.loads(r.stdout)
    assert verdict["healthy"] is (mode == "bwrap"), r.stdout + r.stderr
    own = opskit("--config", str(cfg), "health-gate", "web", "--cmd", f"test -e {state / 'journal-probe'}",
                 "--window", "0.3", "--period", "0.1", "--json")
    assert json.loads(own.stdout)["healthy"] is True, own.stdout + own.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a Unix account for the unprivileged case")
def test_roots_copy_of_an_accounts_checkout_is_made_and_removed_by_the_account(base: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Root working for an account never walks the account's checkout: a folder swapped for a link
    mid-copy, or mid-chown of the copy, would steer root onto files it should not read or chown
    (/etc). The account copies (links stay links) and removes it, read-only folders included."""
    import shutil

    from opskit.base import accounts
    from tests.support.accounts import throwaway_account

    with throwaway_account("opskbw") as pw:
        os.chmod(base, 0o755)
        checkout = base / "scratch" / "wt"
        (checkout / "sub").mkdir(parents=True)
        (checkout / "sub" / "f.txt").write_text("pushed\n")
        os.symlink("/etc/shadow", checkout / "shadow")
        for p in (checkout.parent, checkout, checkout / "sub", checkout / "sub" / "f.txt"):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        os.lchown(checkout / "shadow", pw.pw_uid, pw.pw_gid)

        def walked(*_a: object, **_k: object) -> None:
            raise AssertionError("root walked the account's tree")

        monkeypatch.setattr(shutil, "copytree", walked)
        monkeypatch.setattr(os, "lchown", walked)
        assert not hasattr(accounts, "give")
        with bwrap.private_copy(checkout, pw) as work:
            assert work.stat().st_uid == pw.pw_uid and work.parent.stat().st_uid == pw.pw_uid
            assert (work / "sub" / "f.txt").stat().st_uid == pw.pw_uid
            assert os.readlink(work / "shadow") == "/etc/shadow"  # a link, never what it names
            os.chmod(work / "sub", 0o500)  # what a step may leave behind
            parent = work.parent
        assert not parent.exists()


def test_argv_is_the_exact_mount_order_the_design_needs(tmp_path: Path) -> None:
    """Later mounts cover earlier ones: hidden folders and files after the read-only root, the
    paths shown again shallowest first, what is hidden below a shown path hidden once more,
    then the work dir. A file to hide that is missing or a folder gets no /dev/null mount."""
    home, work = tmp_path / "home", tmp_path / "work"
    app, state, env = home / "app", home / "app" / "state", home / "app" / ".env"
    for d in (state, work, tmp_path / "adir"):
        d.mkdir(parents=True)
    env.write_text("TOKEN=x\n")
    deep, shallow = tmp_path / "a" / "b" / "c", tmp_path / "z"  # deeper sorts first by name
    policy = bwrap.Policy(work=work, hide=(home, state), hide_files=(env, tmp_path / "nothere", tmp_path / "adir"),
                          read_only=(deep, app, shallow))
    assert bwrap.argv(policy, ["make", "test"], bwrap="/usr/bin/bwrap") == [
        "/usr/bin/bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
        "--tmpfs", "/run",
        "--tmpfs", str(home), "--tmpfs", str(state),
        "--ro-bind", "/dev/null", str(env),
        "--ro-bind", str(shallow), str(shallow), "--ro-bind", str(app), str(app), "--ro-bind", str(deep), str(deep),
        "--tmpfs", str(state),
        "--ro-bind", "/dev/null", str(env),
        "--bind", str(work), str(work), "--chdir", str(work),
        "--unshare-all", "--die-with-parent", "--new-session", "--setenv", "TMPDIR", "/tmp", "--", "make", "test"]
