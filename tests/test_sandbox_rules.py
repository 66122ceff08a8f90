"""The sandbox's decisions, one function at a time, in the test process: what is hidden and why,
which of the operator's programs are shown again, what git needs, the exact bwrap command line,
and the removal of the private copy. Real files, real git worktrees, a real Unix account for the
removal; the stage lives under /var/tmp (pytest's /tmp is a path the sandbox hides itself).

tests/test_bwrap.py and tests/test_sandbox_tools.py show the same rules through real pushes;
these pin each answer exactly, so a mount dropped or a reason reworded is seen.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from opskit.base import accounts, bwrap, config
from tests.support.accounts import throwaway_account

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a Unix account")
needs_bwrap = pytest.mark.skipif(bwrap.available() is not None, reason=f"bubblewrap cannot run here: "
                                 f"{bwrap.available()}")
ROOT_HOME = Path("/root") if os.geteuid() == 0 else None


@pytest.fixture
def root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder outside every path the sandbox hides (not /tmp, not HOME), with HOME inside it."""
    r = Path(tempfile.mkdtemp(prefix="opskit-rules-", dir="/var/tmp"))
    (r / "home").mkdir()
    monkeypatch.setenv("HOME", str(r / "home"))
    try:
        yield r
    finally:
        for d, _, _ in os.walk(r):
            with_mode = Path(d)
            if not with_mode.is_symlink():
                os.chmod(with_mode, 0o755)
        shutil.rmtree(r, ignore_errors=True)


def homes_hidden(home: Path) -> list[tuple[Path, str]]:
    pw_home = Path(os.path.expanduser(f"~{accounts.me()}"))
    return [(home, "the account's home")] + ([] if pw_home == home else [(pw_home, "the account's home")])


def settings_for(r: Path, **svc: object) -> tuple[config.Settings, config.ServiceSettings]:
    conf = r / "etc" / "opskit.toml"
    conf.parent.mkdir(exist_ok=True)
    conf.write_text("")
    (r / "wt").mkdir(exist_ok=True)
    (r / "r.git").mkdir(exist_ok=True)
    s = config.ServiceSettings(name="web", repo=str(r / "r.git"), worktree=r / "wt", user="daemon",
                               **svc)  # type: ignore[arg-type]
    return config.Settings(path=conf, state_dir=r / "state", services={"web": s}), s


def tool(path: Path, body: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o755)
    return path


# --- what git needs: git_slice on real worktrees -----------------------------------------------


def git(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def repo_and_worktree(where: Path) -> tuple[Path, Path]:
    main, co = where / "main", where / "co"
    git("init", "-q", str(main))
    (main / "a.txt").write_text("a\n")
    git("add", "a.txt", cwd=main)
    git("commit", "-q", "-m", "a", cwd=main)
    git("worktree", "add", "-q", str(co), cwd=main)
    git("pack-refs", "--all", cwd=main)
    return main.resolve() / ".git", co


READ = ["HEAD", "objects", "refs", "packed-refs", "info"]  # the _GIT_READ that exist (no shallow)


def test_git_slice_is_the_admin_dir_and_the_common_dirs_history_only(root: Path) -> None:
    common, co = repo_and_worktree(root)
    admin = common / "worktrees" / "co"
    assert (co / ".git").read_text() == f"gitdir: {admin}\n"  # absolute, as git writes it
    assert (admin / "commondir").read_text() == "../..\n"
    assert bwrap.git_slice(co) == [admin, *(common / n for n in READ)]
    # a relative gitdir (as a submodule's is written) is taken from the checkout
    (co / ".git").write_text(f"gitdir: {os.path.relpath(admin, co)}\n")
    assert bwrap.git_slice(co) == [admin, *(common / n for n in READ)]
    # an absolute gitdir is used as written (bwrap binds the real place itself)
    via = root / "via"
    via.symlink_to(root / "main")
    (co / ".git").write_text(f"gitdir: {via}/.git/worktrees/co\n")
    assert bwrap.git_slice(co) == [via / ".git" / "worktrees" / "co", *(common / n for n in READ)]
    # an absolute commondir too
    (co / ".git").write_text(f"gitdir: {admin}\n")
    (admin / "commondir").write_text(f"{via}/.git\n")
    assert bwrap.git_slice(co) == [admin, *(via / ".git" / n for n in READ)]
    (admin / "commondir").unlink()
    assert bwrap.git_slice(co) == [admin]


def test_git_slice_of_what_is_not_a_worktree_is_empty(root: Path) -> None:
    common, co = repo_and_worktree(root)
    assert bwrap.git_slice(root / "main") == []  # .git is the repository itself
    assert bwrap.git_slice(root) == []  # no .git at all
    (co / ".git").write_text("nonsense: /x\n")
    assert bwrap.git_slice(co) == []


def test_git_slice_keeps_a_path_that_is_not_utf8(root: Path) -> None:
    where = root / os.fsdecode(b"caf\xe9")
    where.mkdir()
    common, co = repo_and_worktree(where)
    admin = common / "worktrees" / "co"
    assert os.fsencode(admin).count(b"\xe9") == 1 and admin.is_dir()
    assert bwrap.git_slice(co) == [admin, *(common / n for n in READ)]
    (admin / "commondir").write_bytes(os.fsencode(common) + b"\n")
    assert bwrap.git_slice(co) == [admin, *(common / n for n in READ)]


# --- the removal of the private copy ------------------------------------------------------------


def _tree_a_step_leaves(copy: Path, outside: Path) -> None:
    for d in ("ro", "ro-out", "ro-outf"):
        (copy / d).mkdir(parents=True)
    (copy / "ro" / "f").write_text("f")
    # alone in a read-only folder, each link is the first entry whose removal fails there
    (copy / "ro-out" / "out").symlink_to(outside)  # a link to a folder outside the copy
    (copy / "ro-outf" / "outf").symlink_to(outside / "keep")
    (copy / "ro" / "dangling").symlink_to(copy / "gone")
    (copy / "locked" / "deep").mkdir(parents=True)
    (copy / "locked" / "deep" / "h").write_text("h")
    (copy / "locked" / "open").mkdir()
    (copy / "locked" / "open" / "i").write_text("i")


def _root_removes_the_same_tree(root: Path, outside: Path) -> None:
    """Root in the test process (where mutmut sees the call; the account's run is a forked child)."""
    mine = root / "as-root" / "copy"
    _tree_a_step_leaves(mine, outside)
    for d, mode in ((mine / "locked", 0o000), (mine / "ro-out", 0o500), (mine, 0o500), (mine.parent, 0o555)):
        os.chmod(d, mode)
    bwrap._remove(mine)
    assert not os.path.lexists(mine) and stat.S_IMODE(os.stat(mine.parent).st_mode) == 0o555
    os.chmod(mine.parent, 0o755)


def _chown_all(top: Path, pw: object) -> None:
    uid, gid = pw.pw_uid, pw.pw_gid  # type: ignore[attr-defined]
    for d, dirs, files in os.walk(top):
        os.lchown(d, uid, gid)
        for n in dirs + files:
            os.lchown(os.path.join(d, n), uid, gid)


@needs_root
def test_remove_empties_locked_folders_at_any_depth_and_never_follows_a_link(root: Path) -> None:
    """As the account (root ignores permissions): folders a step made 0o500 or 0o000, one inside
    another, are opened up and removed; links are removed, what they name is left as it was."""
    with throwaway_account("opskrm") as pw:
        os.chmod(root, 0o755)
        parent, outside = root / "parent", root / "outside"
        copy = parent / "copy"
        outside.mkdir()
        (outside / "keep").write_text("keep\n")
        _tree_a_step_leaves(copy, outside)
        _chown_all(root, pw)
        os.chmod(copy / "ro" / "f", 0o400)
        for d, mode in ((copy / "locked" / "deep", 0o500), (copy / "locked", 0o000), (copy / "ro", 0o500),
                        (copy / "ro-out", 0o500), (copy / "ro-outf", 0o500),
                        (copy, 0o500), (outside, 0o750), (parent, 0o755)):
            os.chmod(d, mode)
        os.chmod(outside / "keep", 0o640)
        _root_removes_the_same_tree(root, outside)
        assert accounts.as_account(pw, bwrap._remove, copy) is None
        assert not copy.exists() and not os.path.lexists(copy)
        assert stat.S_IMODE(os.stat(outside).st_mode) == 0o750 and stat.S_IMODE(os.stat(parent).st_mode) == 0o755
        assert stat.S_IMODE(os.stat(outside / "keep").st_mode) == 0o640
        assert (outside / "keep").read_text() == "keep\n" and os.listdir(outside) == ["keep"]


@needs_root
def test_remove_never_changes_the_folder_that_holds_the_copy(root: Path) -> None:
    """As root, the folder holding the copy is the temp dir itself: a copy that cannot be
    removed from it must not make it 0o700. What is inside the copy is removed all the same."""
    with throwaway_account("opskrm") as pw:
        os.chmod(root, 0o755)
        parent, outside = root / "parent", root / "outside"
        copy = parent / "copy"
        outside.mkdir()
        (outside / "keep").write_text("keep\n")
        _tree_a_step_leaves(copy, outside)
        _chown_all(root, pw)
        os.chmod(copy / "locked", 0o000)
        os.chmod(parent, 0o555)  # the account cannot remove `copy` from it
        _root_removes_the_same_tree(root, outside)
        assert accounts.as_account(pw, bwrap._remove, copy) is None
        assert stat.S_IMODE(os.stat(parent).st_mode) == 0o555
        assert os.listdir(copy) == [] and os.listdir(outside) == ["keep"]


@needs_root
def test_a_path_the_account_cannot_reach_exists_for_nothing(root: Path) -> None:
    """Another account's 0700 folder above a hidden path: the account cannot reach it, so neither
    can its sandbox, and bwrap must not be asked to mount there."""
    with throwaway_account("opskrm") as pw:
        os.chmod(root, 0o755)
        closed = root / "closed"
        (closed / "d").mkdir(parents=True)
        tool(closed / "f")
        os.chmod(closed, 0o700)
        seen = accounts.as_account(pw, lambda: [bwrap._exists(closed / "d", dir=True),
                                                bwrap._exists(closed / "f", dir=False)])
        assert seen == [False, False]
        assert [bwrap._exists(closed / "d", dir=True), bwrap._exists(closed / "f", dir=False)] == [True, True]
        assert [bwrap._exists(closed / "d", dir=False), bwrap._exists(closed / "f", dir=True)] == [False, False]


@needs_root
def test_remove_goes_on_past_what_the_account_may_not_change_and_leaves_only_that(root: Path) -> None:
    """A folder in the copy that is not the account's: chmod is refused there. An empty one is
    removed all the same; a file in one that stays read-only is left, with the folders holding
    it, and nothing else. _remove itself never fails."""
    def tree(copy: Path) -> None:
        (copy / "ro" / "rootdir").mkdir(parents=True)
        (copy / "ro" / "rootro").mkdir()
        (copy / "ro" / "rootro" / "f").write_text("f")
        (copy / "ro" / "mine").write_text("m")

    mine = root / "as-root" / "copy"
    tree(mine)
    os.chmod(mine / "ro" / "rootro", 0o555)
    bwrap._remove(mine)  # root: everything goes (and mutmut sees this call, in the test process)
    assert not os.path.lexists(mine)
    with throwaway_account("opskrm") as pw:
        os.chmod(root, 0o755)
        parent = root / "parent"
        copy = parent / "copy"
        tree(copy)
        _chown_all(parent, pw)
        for d in (copy / "ro" / "rootdir", copy / "ro" / "rootro", copy / "ro" / "rootro" / "f"):
            os.chown(d, 0, 0)  # root's, inside the account's copy
        os.chmod(copy / "ro" / "rootro", 0o555)
        os.chmod(copy / "ro", 0o500)
        assert accounts.as_account(pw, bwrap._remove, copy) is None
        left = sorted(str(p.relative_to(parent)) for p in parent.rglob("*"))
        assert left == ["copy", "copy/ro", "copy/ro/rootro", "copy/ro/rootro/f"]


def test_private_copy_without_an_account_is_removed_read_only_folders_included(root: Path) -> None:
    co = root / "co"
    (co / "sub").mkdir(parents=True)
    (co / "sub" / "x").write_text("x")
    with bwrap.private_copy(co) as work:
        assert (work / "sub" / "x").read_text() == "x" and work.name == "co"
        os.chmod(work / "sub", 0o500)
        parent = work.parent
    assert not parent.exists() and (co / "sub" / "x").read_text() == "x"


# --- a program's needs, and why it is hidden ------------------------------------------------------


def test_needs_a_console_scripts_venv_and_a_scripts_interpreter(root: Path) -> None:
    venv = root / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    py = tool(venv / "bin" / "python")
    script = tool(venv / "bin" / "revtool", f"#!{py}\nimport sys\n")
    assert bwrap._needs(script) == [(script, "program"), (venv, "venv")]  # its python is in the venv
    other = tool(root / "opt" / "bin" / "t", f"#!{py} -E -s\nimport sys\n")  # bin/ but no pyvenv.cfg
    assert bwrap._needs(other) == [(other, "program"), (py, "interpreter")]
    notbin = tool(root / "venv" / "lib" / "t", "#! /usr/bin/perl\t-w\nprint 1;\n")  # the venv's, not in bin/
    assert bwrap._needs(notbin) == [(notbin, "program"), (Path("/usr/bin/perl"), "interpreter")]
    for body in ("#!python3\n", "#!\n", "#!\n/usr/bin/perl\n", "# /usr/bin/perl\n", "no shebang\n#!/bin/sh\n", "#!/usr/bin/env\tpython3\n"):
        t = tool(root / "s" / "x", body)
        want = [(t, "program")] + ([(Path("/usr/bin/env"), "interpreter")] if "env" in body else [])
        assert bwrap._needs(t) == want, body
    long = tool(root / "s" / "long", "#!/" + "a" * 300 + "\n")  # the kernel reads 256 bytes of it
    assert bwrap._needs(long) == [(long, "program"), (Path("/" + "a" * 253), "interpreter")]
    odd = tool(root / "s" / "odd", "")
    odd.write_bytes(b"#!/opt/caf\xe9/python\n")
    assert bwrap._needs(odd) == [(odd, "program"), (Path(os.fsdecode(b"/opt/caf\xe9/python")), "interpreter")]
    assert bwrap._needs(root / "missing") == [(root / "missing", "program")]  # gone between the checks


def test_why_hidden_names_the_innermost_folder_and_sees_through_links(root: Path) -> None:
    home, wt = root / "home", root / "home" / "srv" / "wt"
    wt.mkdir(parents=True)
    conf = tool(root / "opskit.toml", "")
    dirs = [(Path("/"), "the root"), (home, "the account's home"), (wt, "the worktree")]
    files = [(conf, "the config")]
    assert bwrap._why_hidden(wt / "x", dirs, files) == "the worktree"
    assert bwrap._why_hidden(home / "x", dirs, files) == "the account's home"
    assert bwrap._why_hidden(Path("/usr/bin/sh"), dirs, files) is None  # "/" is never a reason
    assert bwrap._why_hidden(conf, dirs, files) == "the config"
    link = root / "link"
    link.symlink_to(conf)
    assert bwrap._why_hidden(link, dirs, files) == "the config"  # a link to the config is the config
    into = root / "into"
    into.symlink_to(wt)
    assert bwrap._why_hidden(into / "x", dirs, files) is None  # missing behind the link: as written
    tool(wt / "t")
    assert bwrap._why_hidden(into / "t", dirs, files) == "the worktree"
    assert bwrap._why_hidden(root / "elsewhere", dirs, files) is None


def test_never_shown_is_the_env_the_config_the_state_dir_and_local_repos(root: Path) -> None:
    settings, svc = settings_for(root)
    pulled = dataclasses.replace(svc, name="api", repo="git@example.invalid:api.git", user=None)
    settings = dataclasses.replace(settings, services={"web": svc, "api": pulled})
    assert pulled.pull_mode
    env = tool(root / "etc" / ".env", "T=1\n")
    state = root / "state"
    state.mkdir()
    for p, never in [(env, True), (settings.path, True), (root / "etc" / "ok.sh", False), (state / "t", True),
                     (root / "r.git" / "hooks" / "t", True),
                     (root / "wt" / "t", False)]:
        assert bwrap._never_shown(settings, Path(str(p))) is never, p
    for name, target in (("tool", env), ("cfg", settings.path), ("st", state / "t")):
        link = root / name
        link.symlink_to(target)  # a link named otherwise to what is never shown
        assert bwrap._never_shown(settings, link) is True, name
    named = root / "x" / ".env"
    named.parent.mkdir()
    named.symlink_to(tool(root / "x" / "real.sh"))  # a ".env" that is a link to something else
    assert bwrap._never_shown(settings, named) is True
    assert bwrap._never_shown(dataclasses.replace(settings, path=None), root / "etc" / "opskit.toml") is False


# --- the programs a command runs, and which are shown again --------------------------------------


def test_programs_finds_what_the_shell_would_run(root: Path) -> None:
    home = root / "home"
    pathdir = root / "pathbin"
    for n in ("sh", "python3.11", "env", "perl", "helper"):
        tool(pathdir / n)
    p = str(pathdir)
    cases = [
        ("~/bin/tool --x", [home / "bin" / "tool"]),
        ("env A=1 B=2 /opt/t a", [Path("/opt/t")]),
        ("env /opt/t", [Path("/opt/t")]), ("A=1 /opt/t", [Path("/opt/t")]), ("-x /opt/t", [Path("/opt/t")]),
        ("/usr/bin/env -i A=1 /opt/t", [Path("/opt/t")]),
        ("sh -e ./x.sh", [pathdir / "sh"]),
        ("sh helper", [pathdir / "sh"]),  # the script is not looked up on PATH
        ("python3.11 -u /etc/opskit/review.py arg", [pathdir / "python3.11", Path("/etc/opskit/review.py")]),
        ("perl ~/s.pl", [pathdir / "perl", home / "s.pl"]),
        ("/bin/sh /bin/sh", [Path("/bin/sh"), Path("/bin/sh")]),
        ("/a/../b/./c", [Path("/b/c")]),
        ("/x # a comment", [Path("/x")]),
        ("helper", [pathdir / "helper"]),
        ("rel/tool", []),
        ("~x/y", []),
        ("nosuchtool", []),
        ("sh 'unterminated", []),
        ("# only a comment", []),
        ("A=1 -x", []),
        ("", []),
    ]
    for command, want in cases:
        assert bwrap.programs(command, home=home, path=p) == want, command
    assert bwrap.programs("helper", home=home, path="") == []  # no lookup at all
    assert bwrap.programs("~/t", home=Path("/")) == [Path("/t")]
    assert bwrap.programs("~/t", home=Path("/srv/boX")) == [Path("/srv/boX/t")]
    assert bwrap.programs("~/t", path="") == [home / "t"]  # HOME when no home is given


def test_programs_never_answers_a_relative_path(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step runs in the private copy, so a path relative to opskit's cwd names nothing it runs."""
    tool(root / "rel" / "tool")
    monkeypatch.chdir(root)
    assert bwrap.programs("rel/tool --x", path=str(root)) == [] and bwrap.programs("sh rel/tool", path="") == []


def test_programs_looks_a_bare_name_up_on_the_environments_path(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool(root / "pathbin" / "helper")
    monkeypatch.setenv("PATH", str(root / "pathbin"))
    assert bwrap.programs("helper --x") == [root / "pathbin" / "helper"]
    monkeypatch.delenv("PATH")
    assert bwrap.programs("helper --x") == [] and bwrap.programs("sh -c true") == []  # no PATH: no lookup


def test_tool_files_are_existing_files_never_a_secret_each_once(root: Path) -> None:
    settings, _ = settings_for(root)
    review = tool(root / "etc" / "review.sh")
    tool(root / "etc" / ".env", "T=1\n")
    (root / "adir").mkdir()
    assert bwrap.tool_files(settings, f"sh {review}") == [review]  # sh is not looked up: path=""
    assert bwrap.tool_files(settings, f"{review} {review}") == [review]
    assert bwrap.tool_files(settings, f"/bin/sh {review}") == [Path("/bin/sh"), review]
    assert bwrap.tool_files(settings, "/bin/sh /bin/sh") == [Path("/bin/sh")]
    assert bwrap.tool_files(settings, f"sh {root}/etc/.env") == []
    assert bwrap.tool_files(settings, f"sh {settings.path}") == []
    assert bwrap.tool_files(settings, f"{root}/adir") == [] and bwrap.tool_files(settings, f"{root}/none") == []
    assert bwrap.tool_files(settings, None) == [] and bwrap.tool_files(settings, "") == []
    mine = tool(root / "other" / "t.sh")
    assert bwrap.tool_files(settings, "~/t.sh", home=root / "other") == [mine]


def test_binds_are_the_sandbox_bind_paths_that_exist(root: Path) -> None:
    (root / "tools").mkdir()
    (root / "link").symlink_to(root / "gone")
    svc = config.ServiceSettings(name="web", repo="r", worktree=root,
                                 sandbox_bind=(str(root / "tools"), str(root / "nothere"), str(root / "link")))
    assert bwrap.binds(svc) == [root / "tools", root / "link"]


def test_hidden_tools_names_each_program_the_sandbox_hides_with_its_fix(root: Path) -> None:
    home = root / "home"
    settings, svc = settings_for(root)
    venv = home / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    py = tool(venv / "bin" / "python")
    revtool = tool(venv / "bin" / "revtool", f"#!{py}\n")
    (root / "state").mkdir()
    in_state = tool(root / "state" / "t.sh")
    shebang = tool(root / "opt" / "t", f"#!{py} -u\n")  # shown itself, but its interpreter is hidden
    tmp = Path(tempfile.mkdtemp(prefix="opskit-rules-"))
    run = Path(tempfile.mkdtemp(prefix="opskit-rules-", dir="/run"))
    try:
        in_tmp = tool(tmp / "py", "")
        in_run = tool(run / "py", "")
        by_tmp = tool(root / "opt" / "u", f"#!{in_tmp}\n")
        by_run = tool(root / "opt" / "v", f"#!{in_run}\n")
        why_venv = (f"is in the virtualenv {venv}, under the account's home, hidden by the sandbox "
                    "(it shows a program named by its path, not the virtualenv it needs)")
        cases = [
            ("~/venv/bin/revtool check .", None, [bwrap.HiddenTool(revtool, why_venv, venv)]),
            # found on PATH, so not shown by its path: the program itself, then nothing more
            ("revtool check", str(venv / "bin"),
             [bwrap.HiddenTool(revtool, "is under the account's home, hidden by the sandbox", revtool)]),
            (f"sh {in_state}", "",
             [bwrap.HiddenTool(in_state, "is in the state dir, hidden by the sandbox (and never shown)", None)]),
            (str(shebang), None, [bwrap.HiddenTool(
                shebang, f"needs its interpreter {py}, under the account's home, hidden by the sandbox", py)]),
            (str(by_tmp), None, [bwrap.HiddenTool(
                by_tmp, f"needs its interpreter {in_tmp}, under /tmp (the sandbox has its own, empty), hidden by "
                "the sandbox", in_tmp)]),
            (str(by_run), None, [bwrap.HiddenTool(
                by_run, f"needs its interpreter {in_run}, under /run (hidden without sandbox_network), hidden by "
                "the sandbox", in_run)]),
            ("/bin/sh -c true", None, []),
            (f"{root}/opt/nothere", None, []),
            (None, None, []),
        ]
        for command, path, want in cases:
            assert bwrap.hidden_tools(settings, svc, command, path=path) == want, command
        assert bwrap.hidden_tools(settings, dataclasses.replace(svc, sandbox_network=True), str(by_run)) == []
        assert bwrap.hidden_tools(settings, dataclasses.replace(svc, sandbox="none"), "~/venv/bin/revtool") == []
        assert bwrap.hidden_tools(settings, dataclasses.replace(svc, sandbox_bind=(str(venv),)),
                                  "~/venv/bin/revtool") == []
        other = root / "other"
        tool(other / "venv" / "bin" / "revtool", f"#!{other}/venv/bin/python\n")
        (other / "venv" / "pyvenv.cfg").write_text("")
        assert bwrap.hidden_tools(settings, svc, "~/venv/bin/revtool", home=other) == []  # not hidden there
        # a program that is missing does not end the search, nor one that is not hidden
        s_py = tool(home / "s.py", f"#!{py}\n")
        u2 = tool(root / "opt2" / "u2", f"#!{py}\n")
        needs_py = f"needs its interpreter {py}, under the account's home, hidden by the sandbox"
        assert bwrap.hidden_tools(settings, svc, f"/nonexistent/python3 {s_py}") == [
            bwrap.HiddenTool(s_py, needs_py, py)]
        assert bwrap.hidden_tools(settings, svc, "u2 --check", path=str(u2.parent)) == [
            bwrap.HiddenTool(u2, needs_py, py)]
        in_wt = tool(root / "wt" / "t.sh")  # named from another home, one the sandbox hides: shown by its path
        assert bwrap.hidden_tools(settings, svc, "~/t.sh", home=root / "wt") == []
        assert bwrap.hidden_tools(settings, svc, f"{in_wt}") == []
        h = bwrap.hidden_tools(settings, svc, "~/venv/bin/revtool")[0]
        assert h.fix("web") == f'install it system-wide, or add it to [service.web] sandbox_bind = ["{venv}"]'
        assert h.advice("api") == (f'{revtool} {why_venv}; install it system-wide, or add it to [service.api] '
                                   f'sandbox_bind = ["{venv}"]')
        with pytest.MonkeyPatch.context() as mp:  # opskit's own venv under HOME is shown, with its tools
            mp.setattr(sys, "prefix", str(venv))
            assert bwrap.hidden_tools(settings, svc, "~/venv/bin/revtool check .") == []
        never = bwrap.HiddenTool(in_state, "is in the state dir", None)
        assert never.fix("web") == "keep the tool somewhere else (system-wide, or in the repository)"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)


# --- what is hidden, and the policies built from it ----------------------------------------------


def test_hidden_labelled_lists_every_secret_place_with_what_it_is(root: Path) -> None:
    home = root / "home"
    settings, svc = settings_for(root)
    api = config.ServiceSettings(name="api", repo="https://git.example.invalid/api.git", worktree=root / "api",
                                 user="systemd-network")  # pulled: no local repo; an account whose home is /
    db = config.ServiceSettings(name="db", repo=str(root / "db.git"), worktree=root / "db", user="nosuch-acct-x")
    settings = dataclasses.replace(settings, services={"web": svc, "api": api, "db": db})
    dirs, files = bwrap._hidden_labelled(settings)
    assert dirs == [(root / "state", "the state dir"), *homes_hidden(home),
                    (root / "etc", "the config dir (it holds the .env)"),
                    (root / "wt", "service web's deployed worktree"), (root / "r.git", "service web's bare repo"),
                    (Path("/usr/sbin"), "the home of daemon"),
                    (root / "api", "service api's deployed worktree"),
                    (root / "db", "service db's deployed worktree"), (root / "db.git", "service db's bare repo")]
    assert files == []
    link = root / "wt-link"
    link.symlink_to(root / "wt")
    dirs, _ = bwrap._hidden_labelled(settings, shown=link)
    assert (root / "wt", "service web's deployed worktree") not in dirs and len(dirs) == 7 + len(homes_hidden(home))
    shallow = dataclasses.replace(settings, path=Path("/etc/opskit.toml"))
    dirs, files = bwrap._hidden_labelled(shallow)
    assert files == [(Path("/etc/opskit.toml"), "the config"), (Path("/etc/.env"), "the .env")]
    assert all(d != Path("/etc") for d, _ in dirs)
    three = dataclasses.replace(settings, path=Path("/etc/opskit/opskit.toml"))  # a parent of three parts
    assert (Path("/etc/opskit"), "the config dir (it holds the .env)") in bwrap._hidden_labelled(three)[0]
    assert bwrap._hidden_labelled(three)[1] == []
    nopath = dataclasses.replace(settings, path=None)
    assert len(bwrap._hidden_labelled(nopath)[0]) == len(dirs)


def test_hidden_is_each_folder_where_it_is_written_and_where_it_really_is(root: Path) -> None:
    real = root / "realstate"
    real.mkdir()
    (root / "state").symlink_to(real)
    settings = config.Settings(path=Path("/etc/opskit.toml"), state_dir=root / "state" / ".." / "state")
    dirs, files = bwrap._hidden(settings)
    assert dirs == [root / "state", real, *[h for h, _ in homes_hidden(root / "home")]]
    assert files == [Path("/etc/opskit.toml"), Path("/etc/.env")]


def test_policy_for_shows_the_named_tool_alone_and_what_git_and_binds_need(root: Path) -> None:
    home = root / "home"
    tools_dir = home / "tools"
    settings, svc = settings_for(root, sandbox_bind=(str(tools_dir), str(root / "nothere")))
    venv_py = tool(tools_dir / "venv" / "bin" / "python")
    common, co = repo_and_worktree(root / "g")
    review = tool(root / "etc" / "review.sh")
    tool(root / "other" / "h.sh")
    at_home = tool(home / "h.sh")
    tmp = Path(tempfile.mkdtemp(prefix="opskit-rules-"))
    run = Path(tempfile.mkdtemp(prefix="opskit-rules-", dir="/run"))
    try:
        in_tmp, in_run = tool(tmp / "t.sh"), tool(run / "t.sh")
        git_part = [common / "worktrees" / "co", *(common / n for n in READ)]
        hidden, files = bwrap._hidden(settings)
        interp = bwrap._interpreter(hidden)
        for command, home_arg, shown in [
            (f"/bin/sh {review}", None, [review]),  # /bin/sh is on the read-only root already
            (f"{in_tmp}", None, [in_tmp]), (f"sh {in_run}", None, [in_run]),
            (f"{venv_py} -c 1", None, []),  # inside a sandbox_bind: shown with it
            ("~/h.sh", root / "other", []),  # /var/tmp/…/other is not hidden
            ("~/h.sh", None, [at_home]),
            (None, None, []),
        ]:
            p = bwrap.policy_for(settings, svc, root / "work", co, command, home=home_arg)
            assert p == bwrap.Policy(work=root / "work", hide=tuple(hidden), hide_files=tuple(files),
                                     read_only=(*git_part, *interp, *shown, tools_dir), network=False), command
        net = bwrap.policy_for(settings, dataclasses.replace(svc, sandbox_network=True), root / "work", co)
        assert net.network is True
        linked = root / "other" / "linked.sh"
        linked.symlink_to(at_home)  # a path outside anything hidden that leads into HOME
        p = bwrap.policy_for(settings, svc, root / "work", co, str(linked))
        assert p.read_only == (*git_part, *interp, linked, tools_dir)
        inbind = tools_dir / "bin" / "python3"
        inbind.parent.mkdir()
        inbind.symlink_to(at_home)  # under a sandbox_bind by its path: shown with it, not again
        p = bwrap.policy_for(settings, svc, root / "work", co, f"{inbind} {at_home}")
        assert p.read_only == (*git_part, *interp, at_home, tools_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)


def test_interpreter_is_shown_when_it_lives_under_a_hidden_path(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = root / "home"
    venv, base, clone = home / "venv", root / "pybase", Path(tempfile.mkdtemp(prefix="opskit-rules-"))
    run = Path(tempfile.mkdtemp(prefix="opskit-rules-", dir="/run"))
    try:
        for d in (venv, base, clone / "src" / "opskit" / "base"):
            d.mkdir(parents=True, exist_ok=True)
        monkeypatch.setattr(sys, "prefix", str(venv))
        monkeypatch.setattr(sys, "base_prefix", str(base))
        monkeypatch.setattr(bwrap, "__file__", str(clone / "src" / "opskit" / "base" / "bwrap.py"))
        assert bwrap._interpreter([home]) == sorted([venv, clone / "src"])  # clone: under the sandbox's /tmp
        assert bwrap._interpreter([home, venv / "state"]) == [clone / "src"]  # never one holding a hidden path
        assert bwrap._interpreter([root]) == sorted([base, venv, clone / "src"])
        monkeypatch.setattr(sys, "base_prefix", str(venv))
        assert bwrap._interpreter([]) == [clone / "src"]
        monkeypatch.setattr(sys, "base_prefix", str(run))  # /run is the sandbox's own (empty) too
        assert bwrap._interpreter([]) == sorted([run, clone / "src"])
    finally:
        shutil.rmtree(clone, ignore_errors=True)
        shutil.rmtree(run, ignore_errors=True)


def test_homes_are_home_and_the_accounts_passwd_entry(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    import pwd

    pw_home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    assert bwrap.account_home() == root / "home" and bwrap.homes() == [root / "home", pw_home]
    monkeypatch.setenv("HOME", str(pw_home))
    assert bwrap.homes() == [pw_home]
    monkeypatch.setenv("HOME", "")
    assert bwrap.account_home() == pw_home and bwrap.homes() == [pw_home]
    monkeypatch.delenv("HOME")
    assert bwrap.account_home() == pw_home and bwrap.homes() == [pw_home]


@needs_root
def test_a_uid_without_a_passwd_entry_has_no_home_but_home(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """A step root runs for a uid that has no name (a deleted account's files): HOME alone."""
    import pwd

    uid = next(u for u in range(4_100_000, 4_200_000) if not _has_passwd(u))
    nobody = pwd.struct_passwd(("opsk-no-entry", "x", uid, uid, "", "/nonexistent", "/bin/false"))
    monkeypatch.delenv("HOME")
    assert bwrap.account_home() is not None  # root has its entry (and this call is in the test process)
    assert accounts.as_account(nobody, lambda: [str(bwrap.account_home()), bwrap.homes()]) == ["None", []]
    monkeypatch.setenv("HOME", str(root / "home"))
    assert accounts.as_account(nobody, lambda: [str(bwrap.account_home()), [str(h) for h in bwrap.homes()]]) == [
        str(root / "home"), [str(root / "home")]]
    assert bwrap.homes()[0] == root / "home"


def _has_passwd(uid: int) -> bool:
    import pwd

    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


@needs_bwrap
def test_probe_wrapper_is_the_exact_sandbox_of_the_deployed_tree(root: Path) -> None:
    """The probe keeps the network, starts in the deployed tree (shown read-only) and hides the
    rest: every hidden folder shallowest first, the config straight in /run as its file alone."""
    home, state, repo, wt = root / "home", root / "s1" / "state", root / "g" / "x" / "r.git", root / "wt"
    for d in (state, repo, wt):
        d.mkdir(parents=True)
    flat = Path("/run") / f"{root.name}.toml"
    flat.write_text("")
    try:
        svc = config.ServiceSettings(name="web", repo=str(repo), worktree=wt, user="daemon",
                                     health=config.HealthSettings(cmd="sh check.sh"))
        settings = config.Settings(path=flat, state_dir=state, services={"web": svc})
        wrap = bwrap.probe_wrapper(settings, svc)
        assert wrap is not None
        hidden = [Path("/root"), Path("/usr/sbin"), home, state, repo]  # by depth: 2, 3, 5, 6, 7 parts
        shown = sorted({wt, *bwrap._interpreter(hidden)}, key=lambda q: len(q.parts))
        assert wrap(["/bin/sh", "-c", "sh check.sh"]) == [
            bwrap.find(), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            *[a for p in hidden for a in ("--tmpfs", str(p))],
            "--ro-bind", "/dev/null", str(flat),  # /run/.env does not exist: nothing over it
            *[a for p in shown for a in ("--ro-bind", str(p), str(p))],
            "--chdir", str(wt), "--unshare-all", "--share-net", "--die-with-parent", "--new-session",
            "--setenv", "TMPDIR", "/tmp", "--", "/bin/sh", "-c", "sh check.sh"]
        assert bwrap.probe_wrapper(settings, dataclasses.replace(svc, health=config.HealthSettings())) is None
        assert bwrap.probe_wrapper(settings, dataclasses.replace(svc, sandbox="none")) is None
    finally:
        flat.unlink()


FAKE_BWRAP = "#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n"


def test_available_and_require_say_the_cause_and_the_fix_for_the_service(root: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    fix = ('install bubblewrap (apt-get install bubblewrap) or set sandbox = "none" under [service.web], '
           "knowing that pushed code then runs with this account's files, secrets and network")
    monkeypatch.setenv("PATH", str(root / "empty"))
    assert bwrap.find() is None
    assert bwrap.available("web") == f"bwrap is not installed (not on PATH); {fix}"
    assert bwrap.available() == f"bwrap is not installed (not on PATH); {fix}".replace("[service.web]",
                                                                                    "[service.NAME]")
    with pytest.raises(bwrap.Unavailable) as e:
        bwrap.require("web")
    assert str(e.value) == f"bwrap is not installed (not on PATH); {fix}"
    tool(root / "fake" / "bwrap", FAKE_BWRAP)
    monkeypatch.setenv("PATH", str(root / "fake"))
    assert bwrap.find() == str(root / "fake" / "bwrap")
    why = ("bwrap cannot start a sandbox (exit 1: bwrap: setting up uid map: Permission denied); "
           f"allow user namespaces on this host or {fix}")
    assert bwrap.available("web") == why
    with pytest.raises(bwrap.Unavailable) as e:
        bwrap.require("web")
    assert str(e.value) == why
    spec = config.HealthSettings(cmd="true")
    settings, svc = settings_for(root, health=spec)
    wrap = bwrap.probe_wrapper(settings, svc)
    assert wrap is not None
    with pytest.raises(bwrap.Unavailable) as e:
        wrap(["true"])
    assert str(e.value) == why
