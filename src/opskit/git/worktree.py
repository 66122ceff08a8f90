"""The deployed worktree: put it on a commit, and save what is in it first, checked byte for byte.

Both a deploy over a dirty worktree and `drift-scan --heal` discard local state with
`checkout --force`; before that, `save_dirty` stores all of it on a ref (laid out like
`git stash`: the files' raw bytes, what the index holds, unmerged stages) and reads the
ref back against the files and the index. Any doubt raises before the worktree is touched.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from opskit.base.config import ServiceSettings
from opskit.base.errors import OpsError, UsageError
from opskit.base.text import short
from opskit.git import repo
from opskit.git.repo import Git, StatusEntry

FETCH_TIMEOUT = 120.0


def deployed_head(svc: ServiceSettings) -> str | None:
    """The commit the worktree runs (None when it is not a checkout yet)."""
    wt = Git(svc.worktree)
    return wt.head() if wt.is_repo() else None


def fetch_worktree(svc: ServiceSettings) -> Git:
    """The worktree, with every branch of the canonical repo fetched into refs/remotes/origin."""
    wt = Git(svc.worktree)
    if not wt.is_repo():
        raise UsageError(f"{svc.name}: worktree {svc.worktree} is not a git checkout; "
                         f"clone it: git clone -b {svc.branch} {svc.repo} {svc.worktree}")
    # The canonical repo by path/URL from the config, not whatever origin says today.
    wt.fetch(svc.repo, "+refs/heads/*:refs/remotes/origin/*", timeout=FETCH_TIMEOUT)
    return wt


def save_dirty(wt: Git, ref_prefix: str, stamp: str, message: str) -> tuple[str, str] | None:
    """Save the worktree's state (tracked changes staged or not, untracked files) to a free
    ref `ref_prefix + stamp[-N]` and check the ref holds every byte of it; returns
    (ref, saved commit), or None when the worktree was clean."""
    st = repo.status_v2(wt)
    if not st.entries:
        return None
    ref = free_ref(wt, ref_prefix + stamp)
    saved = wt.save_state(ref, message)
    if saved is None:  # cleaned between the two reads
        return None
    verify_saved(wt, saved, st.head, st.entries)
    return ref, saved


def free_ref(wt: Git, ref: str) -> str:
    candidate, n = ref, 1
    while wt.run("rev-parse", "--verify", "--quiet", candidate, check=False).ok:
        n += 1
        candidate = f"{ref}-{n}"
    return candidate


def verify_saved(wt: Git, saved: str, head: str | None, entries: Sequence[StatusEntry]) -> None:
    """Both versions of every dirty path are in the saved commit, checked against the files
    and the real index themselves: its tree holds each worktree file's raw bytes and mode
    (no filter applied), its index parent every staged entry, HEAD is its first parent."""
    if saved != head:
        parents = wt.parents(saved)
        base = [head] if head is not None else []
        if parents[:len(base)] != base:
            raise OpsError(f"heal aborted: saved state {short(saved)} is not on top of HEAD {short(head)}")
        rest = parents[len(base):]
        if not rest or wt.parents(rest[0]) != base:
            raise OpsError(f"heal aborted: saved state {short(saved)} has no commit of the index")
        verify_index(wt, rest[0], rest[1] if len(rest) > 1 else None)
    verify_worktree(wt, saved, entries)


def verify_index(wt: Git, index_commit: str, stages: str | None) -> None:
    tree = repo.tree_blobs(wt, index_commit)
    staged = repo.tree_blobs(wt, stages) if stages is not None else {}
    for mode, oid, stage, path in repo.index_entries(wt):
        if stage:
            ok = staged.get(f"stage{stage}/{path}") == (mode, oid)
        else:  # an intent-to-add entry (`git add -N`) has the empty blob and no bytes
            ok = tree.get(path) == (mode, oid) or (path not in tree and oid == _blob_id(b"", oid))
        if not ok:
            raise OpsError(f"heal aborted: the staged version of {path} is not in the saved state; run again")


def _blob_id(data: bytes, like: str) -> str:
    algo = hashlib.sha256 if len(like) == 64 else hashlib.sha1
    return algo(b"blob %d\0" % len(data) + data).hexdigest()


def verify_worktree(wt: Git, saved: str, entries: Sequence[StatusEntry]) -> None:
    blobs = repo.tree_blobs(wt, saved)
    root = Path(wt.path)
    regular: list[str] = []
    for rel in dict.fromkeys(e.path.rstrip("/") for e in entries):
        p = root / rel
        try:
            st = p.lstat()
        except (FileNotFoundError, NotADirectoryError):
            if rel in blobs:
                raise OpsError(f"heal aborted: {rel} is gone but the saved state still has it") from None
            continue
        mode = repo.worktree_mode(st)
        if mode is None:  # a nested repository (kept as a gitlink), an empty folder, a fifo
            if rel in blobs and blobs[rel][0] != "160000":
                raise OpsError(f"heal aborted: {rel} changed while it was being saved; run again")
            continue
        if rel not in blobs:
            raise OpsError(f"heal aborted: {rel} is not in the saved state {short(saved)}")
        if blobs[rel][0] != mode:
            raise OpsError(f"heal aborted: {rel} is saved with mode {blobs[rel][0]}, the file has {mode}")
        if mode == "120000":
            if _blob_id(os.fsencode(os.readlink(p)), blobs[rel][1]) != blobs[rel][1]:
                raise OpsError(f"heal aborted: symlink {rel} differs from the saved state")
        else:
            regular.append(rel)
    for path, got in zip(regular, repo.hash_files(wt, regular), strict=True):
        if blobs[path][1] != got:
            raise OpsError(f"heal aborted: {path} changed while it was being saved; run again")
