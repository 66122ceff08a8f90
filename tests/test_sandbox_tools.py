"""The sandbox shows the operator's tools: real bwrap, real pushes through the installed hooks.

A `review` (or `test`) kept beside the config, in /tmp or under HOME — all hidden from pushed
code — still runs: that one file is shown read-only, never the `.env` beside it. A tool that
needs more (a virtualenv under HOME) fails with a message naming what hides it and the
`sandbox_bind` that shows it; `sandbox_bind` shows a folder read-only; doctor says the same
before any push. The stage lives under /var/tmp, as tests/test_bwrap.py's does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opskit.base import bwrap
from tests.support.chain import ChainStage, make_chain_stage

pytestmark = pytest.mark.skipif(bwrap.available() is not None, reason=f"bubblewrap cannot run here: "
                                f"{bwrap.available()}")

MARK = "review-script-ran-5e0b"


@pytest.fixture
def base(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="opskit-tools-", dir="/var/tmp"))
    home, state = root / "home", root / "state"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("OPSKIT_STATE_DIR", str(state))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def stage(root: Path, **cfg: Any) -> ChainStage:
    c = make_chain_stage(root / "t", **{"test": None, "review": None, **cfg})
    (c.st.config_path.parent / ".env").write_text("API_TOKEN=env-secret-51d2\n")
    return c


def script(path: Path, secret_file: Path) -> Path:
    """A review that tries to read the .env beside it (reversed: past any redaction) and approves."""
    path.write_text(f'#!/bin/sh\necho "== {secret_file}"\ncat "{secret_file}" 2>&1 | LC_ALL=C rev\n'
                    f'echo {MARK}\nexit 0\n')
    path.chmod(0o755)
    return path


def venv_tool(home: Path, body: str) -> Path:
    """A console script of a virtualenv under HOME: its shebang is the venv's python."""
    venv = home / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    tool = venv / "bin" / "revtool"
    tool.write_text(f"#!{venv}/bin/python\nimport sys\n{body}\nprint({MARK!r})\nsys.exit(0)\n")
    tool.chmod(0o755)
    (home / ".env").write_text("HOME_TOKEN=home-env-secret-c3a9\n")
    return tool


def run_review(c: ChainStage) -> tuple[str, Any]:
    c.feature("feature/x", {"x.txt": "x\n"})
    p = c.push("feature/x")
    return p.stderr, c.events("review.")[-1]


@pytest.mark.parametrize("where", ["config dir", "tmp", "home"])
def test_review_script_in_a_hidden_dir_runs_and_cannot_read_the_env_beside_it(base: Path, where: str) -> None:
    tmp_dir = Path(tempfile.mkdtemp(prefix="opskit-tools-", dir="/tmp")) if where == "tmp" else None
    try:
        c = stage(base / "s")
        folder = {"config dir": c.st.config_path.parent, "tmp": tmp_dir, "home": base / "home"}[where]
        assert folder is not None
        env = folder / ".env"
        if where != "config dir":
            env.write_text("API_TOKEN=beside-secret-77fd\n")
        review = script(folder / "review.sh", env)
        text = c.st.config_path.read_text().replace("[service.svc]\n", f'[service.svc]\nreview = "{review}"\n', 1)
        c.st.config_path.write_text(text)
        try:
            out, ev = run_review(c)
            assert ev.type == "review.pass" and ev.data["sandbox"] == "bwrap", ev.data
            tail = ev.data["tail"]
            assert MARK in tail and "No such file or directory"[::-1] in tail, tail
            for secret in ("env-secret-51d2", "beside-secret-77fd"):
                assert secret[::-1] not in tail and secret[::-1] not in out
        finally:
            c.st.close()
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)


def test_test_run_as_sh_script_beside_the_config_runs_sandboxed(base: Path) -> None:
    c = stage(base)
    try:
        t = script(c.st.config_path.parent / "check.sh", c.st.config_path.parent / ".env")
        t.chmod(0o600)  # `sh script` needs no x bit
        text = c.st.config_path.read_text().replace("[service.svc]\n", f'[service.svc]\ntest = "sh {t}"\n', 1)
        c.st.config_path.write_text(text)
        c.feature("feature/t", {"x.txt": "t\n"})
        c.push("feature/t")
        ev = c.events("test.")[-1]
        assert ev.type == "test.pass", ev.data
        assert MARK in ev.data["tail"] and "env-secret-51d2"[::-1] not in ev.data["tail"]
    finally:
        c.st.close()


def test_venv_tool_under_home_fails_naming_the_sandbox_and_the_bind(base: Path) -> None:
    home = base / "home"
    venv_tool(home, "")
    c = stage(base, review="~/venv/bin/revtool check .")
    try:
        out, ev = run_review(c)
        assert ev.type == "review.fail" and ev.data["verdict"] == "error", ev.data
        reason = ev.data["reason"]
        assert reason.startswith('review: "~/venv/bin/revtool check ." (exit 127) — '), reason
        assert f"{home}/venv/bin/revtool" in reason and "the account's home" in reason, reason
        assert f'[service.svc] sandbox_bind = ["{home}/venv"]' in reason, reason
        assert "bwrap" not in reason and "--ro-bind" not in out
        assert "sandbox_bind" in out
    finally:
        c.st.close()


def test_sandbox_bind_shows_a_folder_read_only(base: Path) -> None:
    home = base / "home"
    venv_tool(home, f"try:\n    open({str(home / 'venv' / 'written')!r}, 'w')\n    print('write: allowed')\n"
                    "except OSError as e:\n    print('write: refused', e.strerror)\n"
                    f"try:\n    open({str(home / '.env')!r}).read()\n    print('env: read')\n"
                    "except OSError:\n    print('env: hidden')")
    c = stage(base, review="~/venv/bin/revtool check .", sandbox_bind=[str(home / "venv")])
    try:
        _, ev = run_review(c)
        assert ev.type == "review.pass", ev.data
        tail = ev.data["tail"]
        assert MARK in tail and "write: refused Read-only file system" in tail and "env: hidden" in tail, tail
        assert not (home / "venv" / "written").exists()
        d = c.cli("doctor", "--json")
        check = {x["name"]: x for x in json.loads(d.stdout)["checks"]}["service svc: sandbox tools"]
        assert check["ok"] and str(home / "venv") in check["detail"], check
    finally:
        c.st.close()


@pytest.mark.parametrize("bind, problem", [
    ("relative/tools", "is not an absolute path"),
    ("{conf}", "contains the config"),
    ("{conf}/.env", "is the .env beside the config"),
    ("{state}", "is the state dir"),
    ("{state}/logs", "is in the state dir"),
    ("{worktree_parent}", "contains service svc's deployed worktree"),
])
def test_bad_sandbox_bind_is_exit_2_one_line(base: Path, bind: str, problem: str) -> None:
    c = stage(base)
    try:
        conf = c.st.config_path.parent
        value = bind.format(conf=conf, state=os.environ["OPSKIT_STATE_DIR"], worktree_parent=c.sb.worktree.parent)
        text = c.st.config_path.read_text().replace("[service.svc]\n",
                                                    f'[service.svc]\nsandbox_bind = ["{value}"]\n', 1)
        c.st.config_path.write_text(text)
        p = c.cli("doctor")
        assert p.returncode == 2, (p.stdout, p.stderr)
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "service.svc.sandbox_bind" in lines[0] and problem in lines[0], lines
    finally:
        c.st.close()


def test_doctor_names_a_step_program_the_sandbox_hides(base: Path) -> None:
    home = base / "home"
    venv_tool(home, "")
    c = stage(base, review="~/venv/bin/revtool check .")
    ok_script = script(c.st.config_path.parent / "t.sh", c.st.config_path.parent / ".env")
    text = c.st.config_path.read_text().replace("[service.svc]\n", f'[service.svc]\ntest = "{ok_script}"\n', 1)
    c.st.config_path.write_text(text)
    try:
        d = c.cli("doctor", "--json")
        check = {x["name"]: x for x in json.loads(d.stdout)["checks"]}["service svc: sandbox tools"]
        assert not check["ok"], check
        assert check["detail"].startswith(f"review program {home}/venv/bin/revtool "), check
        assert "hidden by the sandbox" in check["detail"] and "test program" not in check["detail"], check
        assert f'sandbox_bind = ["{home}/venv"]' in check["fix"], check
        plain = c.cli("doctor")
        assert "service svc: sandbox tools" in plain.stdout and "hidden by the sandbox" in plain.stdout
    finally:
        c.st.close()


def test_a_venv_python_inside_a_sandbox_bind_runs(base: Path) -> None:
    """A venv's bin/python is a symlink to the system's: bound again on top of the sandbox_bind
    that already shows its venv, it made bwrap fail ("Can't create file") and every step with it."""
    home = base / "home"
    venv_tool(home, "")
    c = stage(base, review=f"~/venv/bin/python -c \"print('{MARK}')\"", sandbox_bind=[str(home / "venv")])
    try:
        _, ev = run_review(c)
        assert ev.type == "review.pass" and MARK in ev.data["tail"], ev.data
    finally:
        c.st.close()


def test_a_health_probe_sees_the_operators_tools_and_sandbox_bind(base: Path) -> None:
    """The gate's cmd probe runs in the same sandbox as test and review: its program beside the
    config is shown (that file alone), and so is sandbox_bind — else a good deploy fails its
    gate on a hidden tool and is reverted."""
    from opskit.base import config, proc

    home = base / "home"
    tools = home / "tools"
    tools.mkdir()
    (tools / "ok").write_text("#!/bin/sh\nexit 0\n")
    (tools / "ok").chmod(0o755)
    c = stage(base, sandbox_bind=[str(tools)])
    try:
        conf = c.st.config_path.parent
        probe = script(conf / "health.sh", conf / ".env")
        text = c.st.config_path.read_text()
        for cmd, says in ((str(probe), MARK), (f"{tools / 'ok'} && echo bound-{MARK}", f"bound-{MARK}")):
            head, _, rest = text.partition("[service.svc.health]")
            c.st.config_path.write_text(f"{head}[service.svc.health]\ncmd = {json.dumps(cmd)}\n"
                                        + "\n".join(ln for ln in rest.splitlines() if not ln.startswith(("url", "cmd"))))
            settings = config.load(c.st.config_path)
            svc = settings.services["svc"]
            wrap = bwrap.probe_wrapper(settings, svc)
            assert wrap is not None
            r = proc.run(wrap(["/bin/sh", "-c", cmd]), cwd=svc.worktree, timeout=30)
            out = r.tail_text()
            assert r.ok and says in out and "env-secret-51d2"[::-1] not in out, (cmd, out)
    finally:
        c.st.close()


def test_a_hidden_path_reached_through_a_symlink_still_starts_the_sandbox(base: Path) -> None:
    """bwrap cannot mount on a symlink: a HOME (or /srv) that is a link elsewhere made every
    sandboxed step fail to start. Mounts go where the paths really are, and stay hidden."""
    from opskit.base import proc

    real = base / "realhome"
    real.mkdir()
    (real / "secret").write_text("home-secret-9d1e\n")
    link = base / "linkhome"
    link.symlink_to(real)
    policy = bwrap.Policy(work=None, chdir=Path("/"), hide=(link,))
    r = proc.run(bwrap.argv(policy, ["/bin/sh", "-c", f"cat {link}/secret {real}/secret 2>&1; echo end"]), timeout=20)
    out = r.tail_text()
    assert r.ok and "end" in out and "home-secret-9d1e" not in out, out
