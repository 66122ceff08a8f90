"""What a person needs to decide on a phone: the text of an actionable notification.

A parked change is sent with its service, branch, who pushed it, the commit subjects, a
diffstat, the test and review tails and the commands to run; the buttons (Telegram,
ntfy) carry the same decisions. Discord, Slack and webhooks get this text without them.
"""

from __future__ import annotations

from opskit.base.errors import GitError
from opskit.git.repo import Git
from opskit.storage.journal import Journal

SUBJECTS_MAX = 8
TAIL_LINES = 6


def parked(journal: Journal, bare: Git, *, service: str, branch: str, head: str, base: str | None, cause: str,
           approval_id: int, chain: str, tail: str) -> list[str]:
    span = f"{base}..{head}" if base else head
    lines = [f"{service}: {branch} ({head[:10]}) waits for a human: {cause}."]
    try:
        author = bare.out("log", "-1", "--format=%an <%ae>", head)
        lines.append(f"Pushed by {author}. Change #{approval_id}, chain {chain}.")
        subjects = bare.out("log", "--no-merges", f"--max-count={SUBJECTS_MAX + 1}", "--format=• %s", span).splitlines()
        if subjects:
            more = len(subjects) > SUBJECTS_MAX
            lines.append("Commits:\n" + "\n".join(subjects[:SUBJECTS_MAX]) + ("\n• …" if more else ""))
        if base:
            stat = bare.run("diff", "--stat=60", "--stat-count=10", base, head).stdout.rstrip()
            if stat:
                lines.append("Diffstat:\n" + stat)
    except GitError:  # a deleted branch or a pruned repo must not stop the ask itself
        lines.append(f"Change #{approval_id}, chain {chain}.")
    for kind in ("test", "review"):
        ev = next((e for e in reversed(journal.query(chain=chain, type_prefix=f"{kind}."))
                   if isinstance(e.data.get("tail"), str)), None)
        text = ev.data["tail"] if ev is not None else (tail if kind == "review" else "")
        last = [ln for ln in text.splitlines() if ln.strip()][-TAIL_LINES:]
        if last:
            lines.append(f"{kind.capitalize()} ({ev.type if ev else kind}), last lines:\n" + "\n".join(last))
    return lines
