"""Config that would deploy the wrong code is refused: exit 2, one line naming both services
(or both keys), and nothing changed — no hook installed, no deploy run, no journal written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.gitsandbox import Sandbox, make_sandbox


@pytest.fixture
def two(tmp_path: Path) -> tuple[Sandbox, Sandbox]:
    return make_sandbox(tmp_path / "a", "a"), make_sandbox(tmp_path / "b", "b")


def _config(tmp_path: Path, a: dict[str, str], b: dict[str, str]) -> Path:
    lines = []
    for name, svc in (("a", a), ("b", b)):
        lines.append(f"[service.{name}]")
        lines += [f'{k} = "{v}"' for k, v in svc.items()]
        lines.append('deploy = "true"\ndirect_push = true\n')
    p = tmp_path / "conf" / "opskit.toml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(lines))
    return p


def _run(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opskit", "--config", str(cfg), *args], capture_output=True,
                          text=True, timeout=60, check=False, env=dict(os.environ))


def _case(name: str, sa: Sandbox, sb: Sandbox) -> tuple[dict[str, str], dict[str, str], list[str]]:
    a = {"repo": str(sa.bare), "worktree": str(sa.worktree)}
    b = {"repo": str(sb.bare), "worktree": str(sb.worktree)}
    if name == "same worktree":
        b["worktree"] = a["worktree"]
        return a, b, ["service.b.worktree", "service.a.worktree", "same directory"]
    if name == "same bare repo":
        b["repo"] = a["repo"]
        return a, b, ["service.b.repo", "service.a.repo", "same bare repo"]
    if name == "worktree is repo":
        b["worktree"] = b["repo"]
        return a, b, ["service.b.worktree", "bare repo itself", str(sb.bare)]
    if name == "worktree is a bare repo":
        b["worktree"] = a["repo"]
        return a, b, ["service.b.worktree", "bare repository"]
    assert name == "worktree inside another"
    inner = sa.worktree / "sub"
    inner.mkdir()
    b["worktree"] = str(inner)
    return a, b, ["service.b.worktree", "service.a.worktree", "inside"]


CASES = ["same worktree", "same bare repo", "worktree is repo", "worktree is a bare repo", "worktree inside another"]


@pytest.mark.parametrize("case", CASES)
def test_placement_that_cannot_be_right_is_refused(tmp_path: Path, two: tuple[Sandbox, Sandbox], case: str) -> None:
    sa, sb = two
    a, b, words = _case(case, sa, sb)
    cfg = _config(tmp_path, a, b)
    state = Path(os.environ["OPSKIT_STATE_DIR"])
    hooks_before = sorted(p.name for p in (sa.bare / "hooks").iterdir())
    head_a = (sa.worktree / "app.txt").read_text() if (sa.worktree / "app.txt").exists() else None
    for args in (["doctor"], ["hooks", "install", "b"], ["deploy", "b"]):
        r = _run(cfg, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    assert sorted(p.name for p in (sa.bare / "hooks").iterdir()) == hooks_before
    assert not (state / "journal.db").exists()
    assert ((sa.worktree / "app.txt").read_text() if (sa.worktree / "app.txt").exists() else None) == head_a


def test_two_services_in_their_own_places_load(tmp_path: Path, two: tuple[Sandbox, Sandbox]) -> None:
    from opskit.base import config

    sa, sb = two
    cfg = _config(tmp_path, {"repo": str(sa.bare), "worktree": str(sa.worktree)},
                  {"repo": str(sb.bare), "worktree": str(sb.worktree)})
    assert sorted(config.load(cfg).services) == ["a", "b"]


def test_placement_reads_each_path_once_however_many_services(tmp_path: Path, monkeypatch) -> None:
    # Every command and hook loads the whole config: a check of every pair made 90,000 realpath
    # calls for 300 services (seconds per `opskit events`). Count them: linear in the services.
    from opskit.base import placement
    from opskit.base.errors import ConfigError

    class Svc:
        def __init__(self, i: int) -> None:
            self.name, self.pull_mode = f"s{i}", False
            self.repo, self.worktree = str(tmp_path / "git" / f"s{i}.git"), tmp_path / "srv" / f"s{i}"

    calls = []
    real = os.path.realpath
    monkeypatch.setattr(placement.os.path, "realpath", lambda p: calls.append(p) or real(p))
    placement.check([Svc(i) for i in range(200)], lambda k, p, f: ConfigError(f"{k}: {p}"))
    assert len(calls) == 400  # one worktree and one repo a service

    nested = [Svc(i) for i in range(200)]
    nested[150].worktree = nested[3].worktree / "inner"
    with pytest.raises(ConfigError, match=r"service\.s150\.worktree: .* inside service\.s3\.worktree"):
        placement.check(nested, lambda k, p, f: ConfigError(f"{k}: {p}"))


# In-process, each refusal exactly: the key, the problem and the fix as placement.check hands
# them to the config's fail(). The subprocess tests above see the one line; these see each part,
# and mutation testing (which switches a mutant on in this process only) sees them too.

class _Svc:
    def __init__(self, name: str, repo: Path | str, worktree: Path | str, pull_mode: bool = False) -> None:
        self.name, self.repo, self.worktree, self.pull_mode = name, str(repo), Path(worktree), pull_mode


def _refusal(services: list[_Svc]) -> tuple[str, str, str] | None:
    from opskit.base import placement
    from opskit.base.errors import ConfigError

    got: list[tuple[str, str, str]] = []

    def fail(key: str, problem: str, fix: str) -> ConfigError:
        got.append((key, problem, fix))
        return ConfigError(f"{key}: {problem}; {fix}")

    try:
        placement.check(services, fail)
    except ConfigError:
        assert len(got) == 1
        return got[0]
    assert got == []
    return None


def test_each_refusal_names_the_key_the_problem_and_the_fix(two: tuple[Sandbox, Sandbox]) -> None:
    sa, sb = two
    a = _Svc("a", sa.bare, sa.worktree)
    assert _refusal([a, _Svc("b", sb.bare, sb.worktree)]) is None
    assert _refusal([a, _Svc("b", sb.bare, sb.bare)]) == (
        "service.b.worktree", f"is the bare repo itself ({sb.bare})",
        "point worktree at the deployed checkout (e.g. /srv/b), not at repo")
    assert _refusal([a, _Svc("b", sb.bare, sa.bare)]) == (
        "service.b.worktree", f"{sa.bare} is a bare repository, not a checkout",
        "point worktree at the deployed checkout (a clone with a work tree)")
    assert _refusal([a, _Svc("b", sb.bare, sa.worktree)]) == (
        "service.b.worktree", f"is the same directory as service.a.worktree ({sa.worktree})",
        "give each service its own worktree: one service's deploy would put its code into the other's")
    assert _refusal([a, _Svc("b", sa.bare, sb.worktree)]) == (
        "service.b.repo", f"is the same bare repo as service.a.repo ({sa.bare})",
        "give each service its own bare repo: its hooks serve one service")
    inner = sa.worktree / "sub"
    inner.mkdir()
    assert _refusal([a, _Svc("b", sb.bare, inner)]) == (
        "service.b.worktree", f"{inner} is inside service.a.worktree ({sa.worktree})",
        "move it out: a deploy of one would overwrite or wipe the other's files")


def test_the_refusal_reaches_the_operator_as_one_line_through_config_load(
        tmp_path: Path, two: tuple[Sandbox, Sandbox]) -> None:
    from opskit.base import config
    from opskit.base.errors import ConfigError

    sa, sb = two
    cfg = _config(tmp_path, {"repo": str(sa.bare), "worktree": str(sa.worktree)},
                  {"repo": str(sa.bare), "worktree": str(sb.worktree)})
    with pytest.raises(ConfigError) as e:
        config.load(cfg)
    assert str(e.value) == (f"{cfg}: service.b.repo: is the same bare repo as service.a.repo ({sa.bare}); "
                            "give each service its own bare repo: its hooks serve one service")


def test_services_pulling_from_one_remote_url_are_not_sharing_a_bare_repo(tmp_path: Path) -> None:
    # A URL is no local bare repo: two services may deploy branches of one remote, and a pull
    # service's worktree is never "the repo itself".
    url = "https://git.example.com/team/app.git"
    assert _refusal([_Svc("a", url, tmp_path / "a", pull_mode=True),
                     _Svc("b", url, tmp_path / "b", pull_mode=True)]) is None


@pytest.mark.parametrize("layout, bare", [
    (("HEAD", "objects/", "refs/"), True),
    (("HEAD", "objects/", "refs/", ".git/"), False),   # a checkout whose top holds git's files
    (("HEAD", "objects/", "refs/", ".git"), False),    # a linked worktree: .git is a file
    (("objects/", "refs/"), False),
    (("HEAD", "refs/"), False),
    (("HEAD", "objects/"), False),
    (("HEAD",), False),
    (("refs/",), False),
    (("HEAD/", "objects/", "refs/"), False),           # HEAD must be a file
    (("HEAD", "objects", "refs/"), False),             # objects must be a folder
    (("HEAD", "objects/", "refs"), False),             # refs must be a folder
])
def test_a_bare_repository_is_told_by_HEAD_objects_refs_and_no_dot_git(
        tmp_path: Path, layout: tuple[str, ...], bare: bool) -> None:
    from opskit.base.placement import _is_bare

    for entry in layout:
        if entry.endswith("/"):
            (tmp_path / entry).mkdir()
        else:
            (tmp_path / entry).write_text("ref: refs/heads/master\n")
    assert _is_bare(tmp_path) is bare


def test_a_real_bare_repo_is_bare_and_its_checkout_is_not(two: tuple[Sandbox, Sandbox]) -> None:
    from opskit.base.placement import _is_bare

    sa, _ = two
    assert _is_bare(sa.bare) is True
    assert _is_bare(sa.worktree) is False
