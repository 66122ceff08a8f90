"""Every git operation opskit performs lives here.

We drive the git CLI through proc.run with argv lists: it is what git's own hooks and
plumbing speak, it needs no import on a hook's fast path, and it never interprets data
(branch names, messages, file names) through a shell. GIT_* variables set by a hook are
stripped unless the caller passes the hook's environment on purpose (a pre-receive hook
must keep GIT_QUARANTINE_PATH to see the objects being pushed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from opskit.base import accounts, proc
from opskit.base.errors import GitError, UsageError

ZERO = "0" * 40
GIT_TIMEOUT = 120.0
OPSKIT_IDENT = {
    "GIT_AUTHOR_NAME": "opskit", "GIT_AUTHOR_EMAIL": "opskit@localhost",
    "GIT_COMMITTER_NAME": "opskit", "GIT_COMMITTER_EMAIL": "opskit@localhost",
}


@dataclass(frozen=True)
class StatusEntry:
    code: str  # two-letter porcelain code, e.g. " M", "A ", "??", " D"
    path: str

    @property
    def kind(self) -> str:
        x, y = self.code[0], self.code[1]
        if self.code == "??":
            return "untracked"
        if "U" in self.code or self.code in ("AA", "DD"):
            return "conflict"
        if y == "D" or x == "D":
            return "deleted"
        if x != " " and y == " ":
            return "staged"
        return "modified"


class Git:
    """One repository (bare or with a worktree)."""

    def __init__(self, path: str | os.PathLike[str], env: Mapping[str, str] | None = None,
                 timeout: float = GIT_TIMEOUT) -> None:
        self.path = Path(path)
        self.env = dict(env) if env is not None else proc.clean_env()
        self.timeout = timeout

    def run(self, *args: str, check: bool = True, input: str | bytes | None = None,
            timeout: float | None = None, env: Mapping[str, str] | None = None) -> proc.Result:
        e = dict(self.env)
        if env:
            e.update(env)
        argv = ["git", "-C", str(self.path), *args]
        try:
            # As root, git runs as the repository's owner: never root in a repo another account
            # controls (accounts.py).
            result = proc.run(argv, env=e, timeout=timeout or self.timeout, input=input, capture=True,
                              user=accounts.drop_for(self.path))
        except GitError:
            raise
        except Exception as err:  # git missing, folder gone
            raise GitError(f"git {args[0] if args else ''} in {self.path}: {err}") from None
        if not result.ok:
            dubious = accounts.dubious_ownership(self.path, result.stderr)
            if dubious:
                raise UsageError(dubious)
        if check and not result.ok:
            msg = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or [""])[-1]
            how = f"timed out after {result.duration:.0f}s" if result.timed_out else f"exit {result.returncode}"
            raise GitError(f"git {' '.join(args[:3])} in {self.path} failed ({how}): {msg}")
        return result

    def out(self, *args: str, **kw: object) -> str:
        return self.run(*args, **kw).stdout.strip()  # type: ignore[arg-type]

    # --- inspection ---------------------------------------------------------------------------
    def is_repo(self) -> bool:
        if not self.path.is_dir():
            return False
        r = self.run("rev-parse", "--git-dir", check=False)
        return r.ok

    def require_repo(self, what: str = "repository") -> None:
        if not self.is_repo():
            raise UsageError(f"{self.path}: not a git {what}; check the path in the config")

    def is_bare(self) -> bool:
        return self.out("rev-parse", "--is-bare-repository") == "true"

    def git_dir(self) -> Path:
        d = Path(self.out("rev-parse", "--git-dir"))
        return d if d.is_absolute() else (self.path / d).resolve()

    def common_dir(self) -> Path:
        d = Path(self.out("rev-parse", "--git-common-dir"))
        return d if d.is_absolute() else (self.path / d).resolve()

    def rev_parse(self, rev: str) -> str | None:
        r = self.run("rev-parse", "--verify", "--quiet", "--end-of-options", rev + "^{commit}", check=False)
        return r.stdout.strip() or None if r.ok else None

    def head(self) -> str | None:
        return self.rev_parse("HEAD")

    def current_branch(self) -> str | None:
        r = self.run("symbolic-ref", "--quiet", "--short", "HEAD", check=False)
        return r.stdout.strip() or None if r.ok else None

    def branch_tip(self, branch: str) -> str | None:
        return self.rev_parse(f"refs/heads/{branch}")

    def tree(self, rev: str) -> str:
        return self.out("rev-parse", "--verify", "--end-of-options", rev + "^{tree}")

    def parents(self, rev: str) -> list[str]:
        line = self.out("rev-list", "--parents", "-n", "1", "--end-of-options", rev)
        return line.split()[1:]

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        r = self.run("merge-base", "--is-ancestor", ancestor, descendant, check=False)
        if r.returncode not in (0, 1):
            raise GitError(f"git merge-base in {self.path}: {r.stderr.strip()}")
        return r.returncode == 0

    def rev_list(self, *args: str) -> list[str]:
        return self.out("rev-list", *args).split()

    def message(self, rev: str) -> str:
        return self.run("log", "-1", "--format=%B", "--end-of-options", rev).stdout

    def subject(self, rev: str) -> str:
        return self.out("log", "-1", "--format=%s", "--end-of-options", rev)

    def config_get(self, key: str) -> str | None:
        r = self.run("config", "--get", key, check=False)
        return r.stdout.strip() if r.ok else None

    def hooks_dir(self) -> Path:
        """Where git looks for this repo's hooks (core.hooksPath respected)."""
        hp = self.config_get("core.hooksPath")
        if hp:
            p = Path(os.path.expanduser(hp))
            return p if p.is_absolute() else (self.path / p)
        return self.common_dir() / "hooks"

    def status(self, ignore_untracked: bool = False) -> list[StatusEntry]:
        args = ["status", "--porcelain=v1", "-z", "--no-renames"]
        args.append("--untracked-files=no" if ignore_untracked else "--untracked-files=all")
        raw = self.run(*args).stdout
        entries = []
        for item in raw.split("\0"):
            if len(item) > 3:
                entries.append(StatusEntry(code=item[:2], path=item[3:]))
        return entries

    def ls_remote(self, remote: str, branch: str, timeout: float = 30.0) -> str | None:
        """The remote's branch tip, asked of the remote itself (not a cached tracking ref)."""
        r = self.run("ls-remote", "--heads", "--end-of-options", remote, f"refs/heads/{branch}",
                     check=False, timeout=timeout, env={"GIT_TERMINAL_PROMPT": "0"})
        if r.timed_out:
            raise GitError(f"git ls-remote {remote}: no answer within {timeout:.0f}s")
        if not r.ok:
            msg = (r.stderr.strip().splitlines() or ["failed"])[-1]
            raise GitError(f"git ls-remote {remote}: {msg}")
        for line in r.stdout.split("\n"):  # not splitlines(): see read_hook_lines
            sha, _, ref = line.partition("\t")
            if ref == f"refs/heads/{branch}":
                return sha
        return None

    # --- changes ------------------------------------------------------------------------------
    def update_ref(self, ref: str, new: str, old: str | None = None, message: str = "opskit") -> None:
        args = ["update-ref", "-m", message, ref, new]
        if old is not None:
            args.append(old)
        self.run(*args)

    def commit_tree(self, tree: str, parents: Sequence[str], message: str,
                    ident: Mapping[str, str] | None = None) -> str:
        args = ["commit-tree", tree]
        for p in parents:
            args += ["-p", p]
        return self.out(*args, input=message, env=dict(ident or OPSKIT_IDENT))

    def fetch(self, remote: str, *refspecs: str, timeout: float = 120.0) -> None:
        self.run("fetch", "--quiet", "--no-tags", remote, *refspecs, timeout=timeout,
                 env={"GIT_TERMINAL_PROMPT": "0"})

    def push(self, remote: str, *refspecs: str, timeout: float = 120.0,
             env: Mapping[str, str] | None = None) -> proc.Result:
        e = {"GIT_TERMINAL_PROMPT": "0"}
        if env:
            e.update(env)
        return self.run("push", "--porcelain", remote, *refspecs, check=False, timeout=timeout, env=e)

    def save_state(self, ref: str, message: str, include_untracked: bool = True) -> str | None:
        """Commit the worktree's current state (tracked changes, staged or not, and untracked
        files) onto `ref` without touching the worktree or the real index. None if clean.

        Laid out like `git stash`: the saved commit's tree is the worktree's raw bytes (no
        clean/text/eol filter applied, modes kept, a symlink stored as its target); its
        first parent is HEAD, its second a commit of the real index's tree on top of HEAD, so
        a staged version that differs from the file is kept too. Unmerged index entries go,
        stage by stage (stage1/<path>, stage2/<path>, stage3/<path>), into a parentless
        third parent; the index commit holds stage 2 ("ours") for such a path.

        Nothing is lost before a heal or a deploy over dirty files.
        """
        entries = self.status(ignore_untracked=not include_untracked)
        if not entries:
            return None
        head = self.head()
        base = [head] if head else []
        first = next((ln for ln in message.splitlines() if ln.strip()), "opskit saved state")
        with scratch_dir(self, "opskit-idx-") as tmp:
            index_tree, stages = _index_trees(self, tmp)
            parents = [*base, self.commit_tree(index_tree, base, f"index: {first}\n")]
            if stages is not None:
                parents.append(self.commit_tree(stages, [], f"conflict stages: {first}\n"))
            tree = _worktree_tree(self, index_tree, [e.path for e in entries], tmp)
        sha = self.commit_tree(tree, parents, message)
        self.update_ref(ref, sha, message=first)
        return sha

    def add_worktree(self, path: Path, sha: str) -> None:
        self.run("worktree", "add", "--quiet", "--detach", str(path), sha)

    def remove_worktree(self, path: Path) -> None:
        self.run("worktree", "remove", "--force", str(path), check=False)
        self.run("worktree", "prune", check=False)

    def temp_worktree(self, sha: str, prefix: str = "opskit-wt-") -> _TempWorktree:
        return _TempWorktree(self, sha, prefix)


@contextlib.contextmanager
def scratch_dir(repo: Git, prefix: str) -> Iterator[Path]:
    """A private temp folder for git to write in (a throwaway worktree, index copies), removed after.

    As root, git runs as the repository's owner (accounts.drop_for), so the folder is that
    account's: a 0700 folder of root's made every merge of `opskit approve` fail with "could not
    create leading directories … Permission denied" (tests/test_root_paths.py). Root then never writes or
    deletes inside it itself — the account controls what is there — so removing it is the
    account's `rm -rf` too."""
    pw = accounts.drop_for(repo.path)
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        if pw is not None:
            os.chown(path, pw.pw_uid, pw.pw_gid)  # still empty, and 0700: only the account's
        yield path
    finally:
        if pw is None:
            shutil.rmtree(path, ignore_errors=True)
        else:
            proc.run(["rm", "-rf", "--", str(path)], user=pw, timeout=GIT_TIMEOUT)


def _copy_as_owner(repo: Git, src: Path, dst: Path) -> None:
    """Copy src to dst as the account git runs as: root never reads a file the account can point
    elsewhere (a link to a secret), nor writes in the account's scratch folder."""
    pw = accounts.drop_for(repo.path)
    if pw is None:
        shutil.copyfile(src, dst)
        return
    r = proc.run(["cp", "--", str(src), str(dst)], user=pw, capture=True, timeout=GIT_TIMEOUT)
    if not r.ok:
        raise GitError(f"cannot copy {src} as {pw.pw_name}: {r.stderr.strip() or r.describe()}")


class _TempWorktree:
    """A throwaway checkout of sha (used for tests, reviews, merges and reverts), always removed."""

    def __init__(self, repo: Git, sha: str, prefix: str) -> None:
        self.repo, self.sha, self.prefix = repo, sha, prefix
        self.path: Path | None = None
        self._scratch: contextlib.ExitStack | None = None

    def __enter__(self) -> Git:
        self._scratch = contextlib.ExitStack()
        try:
            self.path = self._scratch.enter_context(scratch_dir(self.repo, self.prefix)) / "wt"
            self.repo.add_worktree(self.path, self.sha)
        except BaseException:
            self._scratch.close()
            raise
        return Git(self.path, env=self.repo.env, timeout=self.repo.timeout)

    def __exit__(self, *exc: object) -> None:
        try:
            if self.path is not None:
                self.repo.remove_worktree(self.path)
        finally:
            if self._scratch is not None:
                self._scratch.close()


def read_hook_lines(text: str) -> Iterator[tuple[str, str, str]]:
    """pre-receive / post-receive stdin: `old new ref` per line."""
    # split("\n"), not splitlines(): git allows U+2028 and U+0085 in ref names, and
    # splitlines() would cut `refs/heads/master\u2028x` into a fake `refs/heads/master`.
    for line in text.split("\n"):
        parts = line.split(" ", 2)
        if len(parts) == 3:
            yield parts[0], parts[1], parts[2]


# === verify-push / drift-scan helpers ===============================================
# Module-level functions over a Git so the class above stays untouched by parallel helpers.

@dataclass(frozen=True)
class WorktreeStatus:
    """One `git status --porcelain=v2 --branch -z`: HEAD, branch and every dirty path."""

    head: str | None  # None on an unborn branch
    branch: str | None  # None when HEAD is detached
    entries: tuple[StatusEntry, ...]


def status_v2(repo: Git, untracked: bool = True) -> WorktreeStatus:
    """Branch, HEAD sha and file states in ONE git call (drift-scan runs it on every
    worktree every hour; bench/drift_scale.py measures it against a bare `git status` loop)."""
    raw = repo.run("status", "--porcelain=v2", "--branch", "-z", "--no-renames",
                   "--untracked-files=all" if untracked else "--untracked-files=no").stdout
    head: str | None = None
    branch: str | None = None
    entries: list[StatusEntry] = []
    items = iter(raw.split("\0"))
    for item in items:
        if not item:
            continue
        if item.startswith("# branch.oid "):
            oid = item[len("# branch.oid "):]
            head = None if oid == "(initial)" else oid
        elif item.startswith("# branch.head "):
            name = item[len("# branch.head "):]
            branch = None if name == "(detached)" else name
        elif item[0] == "1":  # 1 XY sub mH mI mW hH hI path
            parts = item.split(" ", 8)
            entries.append(StatusEntry(code=_v1_code(parts[1]), path=parts[8]))
        elif item[0] == "2":  # rename/copy: the original path follows as its own item
            parts = item.split(" ", 9)
            entries.append(StatusEntry(code=_v1_code(parts[1]), path=parts[9]))
            next(items, None)
        elif item[0] == "u":  # u XY sub m1 m2 m3 mW h1 h2 h3 path
            parts = item.split(" ", 10)
            entries.append(StatusEntry(code=parts[1], path=parts[10]))
        elif item[0] == "?":
            entries.append(StatusEntry(code="??", path=item[2:]))
    return WorktreeStatus(head=head, branch=branch, entries=tuple(entries))


def _v1_code(xy: str) -> str:
    return xy.replace(".", " ")


def ls_remote_heads(repo: Git, remote: str, timeout: float = 30.0) -> dict[str, str]:
    """Every branch of the remote → its tip, asked of the remote itself.

    verify-push reads all heads so that a push that went to the wrong branch can be named
    ("landed on X instead of Y"), not only reported as "unchanged"."""
    r = repo.run("ls-remote", "--heads", "--end-of-options", remote, check=False,
                 timeout=timeout, env={"GIT_TERMINAL_PROMPT": "0"})
    if r.timed_out:
        raise GitError(f"git ls-remote {remote}: no answer within {timeout:g}s")
    if not r.ok:
        msg = (r.stderr.strip().splitlines() or ["failed"])[-1]
        raise GitError(f"git ls-remote {remote}: {msg}")
    heads: dict[str, str] = {}
    for line in r.stdout.split("\n"):  # not splitlines(): see read_hook_lines
        sha, _, ref = line.partition("\t")
        if ref.startswith("refs/heads/"):
            heads[ref[len("refs/heads/"):]] = sha
    return heads


def has_commit(repo: Git, sha: str) -> bool:
    return repo.run("cat-file", "-e", f"{sha}^{{commit}}", check=False).ok


def ahead_behind(repo: Git, left: str, right: str) -> tuple[int, int] | None:
    """(commits only in left, commits only in right), None if either is missing here."""
    r = repo.run("rev-list", "--left-right", "--count", f"{left}...{right}", "--", check=False)
    if not r.ok:
        return None
    a, _, b = r.stdout.strip().partition("\t")
    return int(a), int(b)


def commits_not_in(repo: Git, tip: str, known: Sequence[str], limit: int = 50) -> list[tuple[str, str]]:
    """(sha, subject) of commits reachable from tip but from none of `known`, newest first."""
    args = ["rev-list", f"--max-count={limit}", "--format=%H %s", "--ignore-missing", tip]
    if known:
        args += ["--not", *known]
    out = repo.run(*args, "--").stdout
    found: list[tuple[str, str]] = []
    for line in out.splitlines():
        if line.startswith("commit "):
            continue
        sha, _, subject = line.partition(" ")
        found.append((sha, subject))
    return found


def tree_blobs(repo: Git, rev: str) -> dict[str, tuple[str, str]]:
    """path → (mode, object id) for every file in rev's tree."""
    raw = repo.run("ls-tree", "-r", "-z", "--full-tree", "--end-of-options", rev).stdout
    blobs: dict[str, tuple[str, str]] = {}
    for item in raw.split("\0"):
        if not item:
            continue
        meta, _, path = item.partition("\t")
        mode, _kind, oid = meta.split(" ")
        blobs[path] = (mode, oid)
    return blobs


def hash_files(repo: Git, paths: Sequence[str], write: bool = False) -> list[str]:
    """The blob ids of these worktree files' raw bytes: no clean/text/eol filter applied, so
    a CRLF file under `* text=auto` hashes as CRLF. write=True stores the blobs too."""
    if not paths:
        return []
    args = ["hash-object", "--no-filters", *(["-w"] if write else [])]
    # --stdin-paths reads one path a line and C-unquotes a line starting with `"`
    plain = [p for p in paths if "\n" not in p and not p.startswith('"')]
    hashed: dict[str, str] = {}
    if plain:
        out = repo.run(*args, "--stdin-paths", input="\n".join(plain) + "\n").stdout
        hashed.update(zip(plain, out.split(), strict=True))
    for p in paths:
        if p not in hashed:
            hashed[p] = repo.out(*args, "--", p)
    return [hashed[p] for p in paths]


def index_entries(repo: Git) -> list[tuple[str, str, int, str]]:
    """(mode, object id, stage, path) of every entry of the real index, unmerged ones too."""
    raw = repo.run("ls-files", "--stage", "-z", "--full-name").stdout
    found: list[tuple[str, str, int, str]] = []
    for item in raw.split("\0"):
        if not item:
            continue
        meta, _, path = item.partition("\t")
        mode, oid, stage = meta.split(" ")
        found.append((mode, oid, int(stage), path))
    return found


def worktree_mode(st: os.stat_result) -> str | None:
    """The tree mode git records for a worktree entry (None: a folder, fifo, socket...)."""
    if stat.S_ISLNK(st.st_mode):
        return "120000"
    if stat.S_ISREG(st.st_mode):
        return "100755" if st.st_mode & stat.S_IXUSR else "100644"
    return None


def _index_trees(repo: Git, tmp: Path) -> tuple[str, str | None]:
    """(tree of the real index, tree of its unmerged stages or None), from a copy of the
    index so the real one is never written. An unmerged path takes stage 2 in the first."""
    real = Path(repo.out("rev-parse", "--git-path", "index"))
    real = real if real.is_absolute() else repo.path / real
    copy = tmp / "index-copy"
    if real.exists():
        _copy_as_owner(repo, real, copy)
    env = {"GIT_INDEX_FILE": str(copy)}
    unmerged = [e for e in index_entries(repo) if e[2] != 0]
    if not unmerged:
        return repo.out("write-tree", env=env), None
    null = "0" * len(unmerged[0][1])
    ours = {path: (mode, oid) for mode, oid, stage, path in unmerged if stage == 2}
    resolve = []
    for path in dict.fromkeys(e[3] for e in unmerged):
        mode, oid = ours.get(path, ("0", null))  # mode 0 drops the path: deleted on our side
        resolve.append(f"{mode} {oid} 0\t{path}\0")
    repo.run("update-index", "-z", "--index-info", input="".join(resolve), env=env)
    stages_env = {"GIT_INDEX_FILE": str(tmp / "index-stages")}
    repo.run("update-index", "-z", "--index-info", env=stages_env,
             input="".join(f"{mode} {oid}\tstage{stage}/{path}\0" for mode, oid, stage, path in unmerged))
    return repo.out("write-tree", env=env), repo.out("write-tree", env=stages_env)


def _worktree_tree(repo: Git, index_tree: str, paths: Sequence[str], tmp: Path) -> str:
    """index_tree with every one of `paths` set to the worktree's raw bytes and mode (a
    symlink's target as its blob, a nested repository as a gitlink to its HEAD) or removed
    when the worktree has no file there. Blobs are written with --no-filters."""
    env = {"GIT_INDEX_FILE": str(tmp / "index-worktree")}
    repo.run("read-tree", index_tree, env=env)
    gone: list[str] = []
    entries: list[tuple[str, str, str]] = []  # (mode, oid or "", path)
    to_hash: list[str] = []  # the worktree files hash-object reads
    for path in dict.fromkeys(p.rstrip("/") for p in paths):
        full = repo.path / path
        try:
            st = full.lstat()
        except (FileNotFoundError, NotADirectoryError):
            gone.append(path)
            continue
        mode = worktree_mode(st)
        if mode == "120000":
            # The link's target is its blob; hashed from stdin, so nothing is written in tmp
            # (the account's, when root heals: scratch_dir).
            target = os.fsencode(os.readlink(full))
            entries.append((mode, repo.out("hash-object", "--no-filters", "-w", "--stdin", input=target), path))
            continue
        elif mode is not None:
            to_hash.append(path)
        elif stat.S_ISDIR(st.st_mode) and (full / ".git").exists():
            sub = Git(full, env=repo.env, timeout=repo.timeout).head()
            if sub is not None:
                entries.append(("160000", sub, path))
            continue
        else:  # a folder (its files are listed on their own), fifo or socket: no bytes to keep
            gone.append(path)
            continue
        entries.append((mode, "", path))
    oids = iter(hash_files(repo, to_hash, write=True))
    lines = [f"0 {'0' * len(index_tree)}\t{p}\0" for p in gone]
    lines += [f"{mode} {oid or next(oids)}\t{p}\0" for mode, oid, p in entries]
    if lines:
        repo.run("update-index", "-z", "--index-info", input="".join(lines), env=env)
    return repo.out("write-tree", env=env)


def force_checkout_branch(repo: Git, branch: str, sha: str) -> None:
    """Put the worktree ON `branch` at sha, discarding tracked changes (save them first)."""
    repo.run("checkout", "--quiet", "--force", "-B", branch, sha, "--")


# --- hooks: where a config value comes from (opskit.wiring.hooks) ---------------------------------

def config_with_origin(repo: Git, key: str) -> tuple[str, str, str] | None:
    """(value, scope, origin) of `key` as git resolves it for this repo, e.g.
    ("/dev/null", "global", "file:/root/.gitconfig"): `core.hooksPath` set globally needs a
    different fix than one set in the repo, so the report names where it is."""
    r = repo.run("config", "--show-scope", "--show-origin", "--get", key, check=False)
    if not r.ok:
        return None
    parts = r.stdout.rstrip("\n").split("\t", 2)
    if len(parts) != 3:
        return (r.stdout.strip(), "unknown", "unknown")
    scope, origin, value = parts
    return value, scope, origin


def version(timeout: float = 10.0) -> proc.Result:
    """`git --version`, for doctor."""
    return proc.run(["git", "--version"], capture=True, timeout=timeout)


def push_as_developer(clone: Path, remote: str, ref: str, *, env: Mapping[str, str], timeout: float,
                      stream: Callable[[str], None] | None = None) -> proc.Result:
    """`git push REMOTE REF` from a developer's clone, with the caller's environment as is (the
    demo pushes as a developer would, through the installed hooks, showing `remote:` lines)."""
    return proc.run(["git", "-C", str(clone), "push", remote, ref], env=env, timeout=timeout, stream=stream)
