"""The Ansible role (deploy/ansible/roles/opskit) applied to this machine with `ansible-playbook -c
local`, through the example playbook, under a throwaway prefix: it installs opskit from this
checkout into a new virtualenv, writes the config and its .env, puts a real service checkout under
opskit (its account, bare repo, hooks, adoption) and writes the cron.d file; a second run changes
nothing. Needs root (a real group and account) and ansible-core in this venv; skipped otherwise,
with the reason.

Only the Debian packages step is off (opskit_install_packages: false): the test has no network
and the packages are already here (install.sh --dev).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.server import add_account, remove_account, run_as

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE = ROOT / "deploy" / "ansible"
# The ansible-core of this venv (the dev extra), never one found on PATH.
PLAYBOOK_BIN = Path(sys.executable).parent / "ansible-playbook"
HOOK_URL = "http://127.0.0.1:9/hooks/tok-R7mQ2xVb9Lw4"  # a secret: must never appear in ansible's output
ODD = "it's a \\ $tok \"en\" # x"  # quotes, a backslash, a $ and a # survive the .env's quoting


def _why_skip() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the role creates a group and changes an account (CI runs as root)"
    if not PLAYBOOK_BIN.is_file():
        return f"needs ansible-core in this venv ({PLAYBOOK_BIN} missing): pip install -e '.[dev]'"
    for tool in ("useradd", "userdel", "groupdel", "setpriv", "git"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or ""),
              pytest.mark.timeout(900)]


@dataclass
class Host:
    base: Path
    group: str
    account: str
    worktree: Path
    tmp: Path

    @property
    def prefix(self) -> Path:
        return self.base / "opt"

    @property
    def bindir(self) -> Path:
        return self.base / "bin"

    @property
    def etc(self) -> Path:
        return self.base / "etc"

    @property
    def config(self) -> Path:
        return self.etc / "opskit.toml"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def crond(self) -> Path:
        return self.base / "cron.d" / "opskit"

    @property
    def repo(self) -> Path:
        return self.base / "git" / "app.git"

    def variables(self, **over: object) -> dict[str, object]:
        v: dict[str, object] = {
            "ansible_python_interpreter": sys.executable,
            "ansible_become": False,  # we are root already; sudo would drop pip's mirror settings
            "opskit_source": str(ROOT),
            "opskit_python": "/usr/bin/python3",
            "opskit_install_packages": False,
            "opskit_install_root": str(self.prefix), "opskit_bin_dir": str(self.bindir),
            "opskit_config_dir": str(self.etc), "opskit_state_dir": str(self.state),
            "opskit_cron_d": str(self.crond), "opskit_group": self.group,
            "opskit_git_root": str(self.base / "git"),
            "opskit_notify": ["ops"],
            "opskit_channels": [{"name": "ops", "type": "webhook", "url": "${OPS_HOOK_URL}"}],
            "opskit_secrets": {"OPS_HOOK_URL": HOOK_URL, "ODD_TOKEN": ODD},
            "opskit_cron": {"drift_scan": "17 * * * *"},
            "opskit_services": [{"name": "app", "worktree": str(self.worktree),
                                 "deploy": "echo restarted >> \"$HOME/deploys.log\"",
                                 "health_url": "http://127.0.0.1:8000/health",
                                 "health": {"window": 5.0, "period": 0.5},
                                 "settings": {"deploy_timeout": 120}}],
        }
        v.update(over)
        return v


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    # Under /tmp and world-traversable, not in tmp_path (root's 0700): the service's account must
    # reach the installed interpreter and the config, as it would /opt/opskit and /etc/opskit.
    suffix = secrets.token_hex(3)
    base = Path(tempfile.mkdtemp(prefix=f"opskit-ansible-{suffix}-", dir="/tmp"))
    os.chmod(base, 0o755)
    h = Host(base=base, group=f"opsa{suffix}", account=f"oans{suffix}", worktree=base / "srv" / "app", tmp=tmp_path)
    (base / "home").mkdir(mode=0o755)
    add_account(h.account, base / "home" / h.account, [])  # the role adds it to the group
    try:
        (base / "srv").mkdir(mode=0o755)
        pw = pwd.getpwnam(h.account)
        h.worktree.mkdir()
        os.chown(h.worktree, pw.pw_uid, pw.pw_gid)
        ident = {"GIT_AUTHOR_NAME": "Ops", "GIT_AUTHOR_EMAIL": "ops@example.invalid",
                 "GIT_COMMITTER_NAME": "Ops", "GIT_COMMITTER_EMAIL": "ops@example.invalid"}
        r = run_as(h.account, ["/bin/sh", "-c", "git init -q -b master . && echo v1 > app.txt && "
                               "git add . && git commit -q -m 'the service as it runs today'"],
                   env=ident, cwd=h.worktree)
        assert r.returncode == 0, r.stderr
        yield h
    finally:
        remove_account(h.account)
        subprocess.run(["groupdel", h.group], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Run:
    rc: int
    out: str
    seconds: float
    recap: dict[str, int]


def play(h: Host, name: str, **over: object) -> Run:
    """ansible-playbook of the example playbook on localhost (-c local), in an environment of its
    own: nothing written to ~, no colour, no ansible.cfg from the working folder."""
    work = h.tmp / "ansible"
    for d in ("home", "local", "remote"):
        (work / d).mkdir(parents=True, exist_ok=True)
    cfg = work / "ansible.cfg"
    cfg.write_text("")
    inventory = work / "inventory.ini"
    inventory.write_text("[opskit]\nlocalhost\n")
    variables = work / f"{name}.json"
    variables.write_text(json.dumps(h.variables(**over)))
    env = {"PATH": f"{PLAYBOOK_BIN.parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": str(work / "home"), "LANG": "C.UTF-8",
           "ANSIBLE_CONFIG": str(cfg), "ANSIBLE_HOME": str(work / "home"),
           "ANSIBLE_LOCAL_TEMP": str(work / "local"), "ANSIBLE_REMOTE_TEMP": str(work / "remote"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_GATHERING": "explicit",
           "PYTHONWARNINGS": "ignore"}
    # Only pip's own settings from the test environment (a local index on CI mirrors).
    env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_")})
    start = time.monotonic()
    r = subprocess.run([str(PLAYBOOK_BIN), "-c", "local", "-i", str(inventory), "-e", f"@{variables}",
                        str(ANSIBLE / "playbook.yml")],
                       env=env, cwd=work, capture_output=True, text=True, timeout=800, check=False)
    seconds = time.monotonic() - start
    out = r.stdout + r.stderr
    (work / f"{name}.log").write_text(out)
    m = re.search(r"^localhost\s+:\s+(.*)$", r.stdout, re.M)
    recap = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))} if m else {}
    print(f"ansible-playbook {name}: exit {r.returncode} in {seconds:.1f} s, {recap}")
    return Run(r.returncode, out, seconds, recap)


def mode_owner(p: Path) -> tuple[str, str, str]:
    st = os.lstat(p)
    return f"{stat.S_IMODE(st.st_mode):04o}", pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name


def test_role_converges_on_this_machine_and_a_second_run_changes_nothing(host: Host) -> None:
    h = host
    first = play(h, "first")
    assert first.rc == 0, first.out[-6000:]
    assert first.recap["failed"] == 0 and first.recap["unreachable"] == 0 and first.recap["changed"] > 0, first.recap
    assert HOOK_URL not in first.out and "tok-R7mQ2xVb9Lw4" not in first.out

    # The system install: a virtualenv with opskit as a package (not a link to this checkout),
    # linked from the bin dir, startable by the service's account.
    site = next((h.prefix / "lib").glob("python3*/site-packages"))
    assert (site / "opskit" / "wiring" / "templates" / "hooks" / "pre-receive").is_file()
    assert not [p for p in site.glob("*.pth") if str(ROOT) in p.read_text()]
    assert os.readlink(h.bindir / "opskit") == str(h.prefix / "bin" / "opskit")
    assert not (ROOT / "build").exists()
    assert h.account in grp.getgrnam(h.group).gr_mem

    # Root reads nothing others can write; the group reads the config and the .env.
    assert mode_owner(h.etc) == ("0750", "root", h.group)
    assert mode_owner(h.config) == ("0640", "root", h.group)
    assert mode_owner(h.etc / ".env") == ("0640", "root", h.group)
    assert mode_owner(h.state) == ("2770", "root", h.group)
    assert mode_owner(h.state / "decision.key") == ("0600", "root", "root")
    env_lines = [ln for ln in (h.etc / ".env").read_text().splitlines() if not ln.startswith("#")]
    assert env_lines[1] == f"OPS_HOOK_URL='{HOOK_URL}'" and len(env_lines) == 2
    from dotenv import dotenv_values  # what opskit reads it with (base/config.py)

    assert dotenv_values(h.etc / ".env") == {"ODD_TOKEN": ODD, "OPS_HOOK_URL": HOOK_URL}
    assert tomllib.loads(h.config.read_text()) == {
        "opskit": {"state_dir": str(h.state), "notify": ["ops"]},
        "cron": {"drift_scan": "17 * * * *"},
        "notify": {"ops": {"type": "webhook", "url": "${OPS_HOOK_URL}"}},
        "service": {"app": {"repo": str(h.repo), "worktree": str(h.worktree), "branch": "master",
                            "deploy": "echo restarted >> \"$HOME/deploys.log\"", "deploy_timeout": 120,
                            "health": {"url": "http://127.0.0.1:8000/health", "window": 5.0, "period": 0.5}}},
    }

    # opskit add did the rest: the bare repo (the account's), origin, hooks, the adoption.
    pw = pwd.getpwnam(h.account)
    assert os.stat(h.repo).st_uid == pw.pw_uid
    assert os.access(h.repo / "hooks" / "pre-receive", os.X_OK)
    assert os.stat(h.repo / "hooks" / "pre-receive").st_uid == pw.pw_uid
    head = run_as(h.account, ["git", "-C", str(h.worktree), "rev-parse", "HEAD"]).stdout.strip()
    origin = run_as(h.account, ["git", "-C", str(h.worktree), "remote", "get-url", "origin"]).stdout.strip()
    assert origin == str(h.repo)

    # The cron.d file: opskit's, root:root 0644, the service's drift-scan as its account.
    assert mode_owner(h.crond) == ("0644", "root", "root")
    lines = [ln.split(None, 6) for ln in h.crond.read_text().splitlines() if ln and not ln.startswith("#")]
    assert [(ln[:5], ln[5]) for ln in lines if "drift-scan" in ln[6]] == [(["17", "*", "*", "*", "*"], h.account)]
    assert all(ln[6].startswith(f"PATH={h.prefix / 'bin'}:") for ln in lines), lines

    # `opskit status` with that config, as root and as the service's account (a group member that
    # must read the .env for ${OPS_HOOK_URL}).
    for who in ("root", h.account):
        r = run_as(who, [str(h.bindir / "opskit"), "--config", str(h.config), "status", "--json"])
        assert r.returncode == 0, f"{who}: {r.stdout}{r.stderr}"
        [svc] = [s for s in json.loads(r.stdout)["services"] if s["name"] == "app"]
        assert svc["deployed"]["sha"] == head and svc["last_verdict"]["status"] == "healthy", svc
    r = run_as("root", [str(h.bindir / "opskit"), "--config", str(h.config), "events", "--json"])
    assert [json.loads(x)["type"] for x in r.stdout.splitlines()].count("deploy.adopted") == 1

    config_bytes, crond_bytes = h.config.read_bytes(), h.crond.read_bytes()
    second = play(h, "second")
    assert second.rc == 0, second.out[-6000:]
    assert second.recap["changed"] == 0 and second.recap["failed"] == 0, second.out[-6000:]
    assert h.config.read_bytes() == config_bytes and h.crond.read_bytes() == crond_bytes
    r = run_as("root", [str(h.bindir / "opskit"), "--config", str(h.config), "events", "--json"])
    assert [json.loads(x)["type"] for x in r.stdout.splitlines()].count("deploy.adopted") == 1

    # A changed variable reaches the config and the cron.d file, and nothing else moves.
    third = play(h, "third", opskit_cron={"drift_scan": "43 */2 * * *"})
    assert third.rc == 0 and third.recap["changed"] == 2, third.out[-6000:]
    assert tomllib.loads(h.config.read_text())["cron"] == {"drift_scan": "43 */2 * * *"}
    lines = [ln.split(None, 6) for ln in h.crond.read_text().splitlines() if ln and not ln.startswith("#")]
    assert [(ln[:5], ln[5]) for ln in lines if "drift-scan" in ln[6]] == [(["43", "*/2", "*", "*", "*"], h.account)]


@pytest.mark.parametrize("over", [
    {"opskit_pip_spec": "opskit==0.1.0"},  # and opskit_source: which one?
    {"opskit_secrets": {"OPS_HOOK_URL": "https://x.invalid/${HOME}"}},  # python-dotenv would expand it
    {"opskit_secrets": {"OPS-HOOK": "x"}},
    {"opskit_services": [{"name": "a b", "worktree": "/w", "deploy": "true", "health_url": "http://127.0.0.1:1/"}]},
], ids=["both-sources", "dollar-brace-in-a-secret", "bad-secret-name", "bad-service-name"])
def test_role_refuses_bad_variables_and_changes_nothing(host: Host, over: dict[str, object]) -> None:
    run = play(host, "bad", **over)
    assert run.rc == 2 and run.recap["failed"] == 1 and run.recap["changed"] == 0, run.out[-3000:]
    assert "opskit role: set exactly one of opskit_source" in run.out
    assert not any((host.base / d).exists() for d in ("opt", "bin", "etc", "state", "cron.d", "git"))


def test_role_installs_a_wheel_given_as_pip_spec_and_converges(host: Host) -> None:
    # A wheel built from a copy of this checkout (pip's in-tree build must not touch the real one).
    src = host.tmp / "src-copy"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(host.tmp / "dist"),
                        str(src)], capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (host.tmp / "dist").glob("opskit-*.whl")
    shutil.rmtree(src)
    first = play(host, "wheel-first", opskit_source="", opskit_pip_spec=str(wheel))
    assert first.rc == 0 and first.recap["changed"] > 0, first.out[-6000:]
    assert (host.prefix / ".opskit-installed-from").read_text().startswith(f"python /usr/bin/python3\nspec {wheel}\n")
    r = run_as(host.account, [str(host.bindir / "opskit"), "--config", str(host.config), "status", "--json"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert [s["name"] for s in json.loads(r.stdout)["services"]] == ["app"]
    second = play(host, "wheel-second", opskit_source="", opskit_pip_spec=str(wheel))
    assert second.rc == 0 and second.recap["changed"] == 0, second.out[-6000:]
