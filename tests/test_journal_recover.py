"""A real journal with garbage written into some of its pages: doctor names the file and the
fix, the other commands say "database corrupt" instead of a bare traceback, and
`opskit journal recover` keeps the damaged file aside, rebuilds from what is readable (the
quarantine list and parked approvals included), says what was lost, and refuses while a
deploy holds a lock.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from opskit.base.lock import ServiceLock
from opskit.chain import approvals
from opskit.storage.journal import Journal
from opskit.storage.recover import quick_check
from tests.support.pipeline import Stage, env_for, seeded_stage


def _opskit(st: Stage, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opskit", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env_for(st)}, check=False)


def _garbage(db: Path, table: str, pages: int) -> list[int]:
    """Overwrite `pages` leaf pages of `table` in the middle of the file with garbage."""
    c = sqlite3.connect(db)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = c.execute("PRAGMA page_size").fetchone()[0]
    leaves = [r[0] for r in c.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' "
                                      "ORDER BY pageno", (table,))]
    c.close()
    mid = len(leaves) // 2
    hit = leaves[mid:mid + pages]
    with open(db, "r+b") as f:
        for n in hit:
            f.seek((n - 1) * size)
            f.write(bytes((i * 37 + n) % 251 for i in range(size)))
    return hit


def test_garbage_pages_are_flagged_and_recovered(tmp_path: Path) -> None:
    st = seeded_stage(tmp_path)
    try:
        j = st.journal()
        for i in range(3000):
            j.append("drift.detected", "svc", {"n": i, "pad": "x" * 60})
        j.quarantine_add("svc", "a" * 40, "b" * 40, 7, "reverted: health gate failed")
        j.quarantine_add("svc", "c" * 40, "d" * 40, 8, "reverted: deploy failed")
        parked = approvals.park(j, service="svc", chain="p-1", branch="feature/x", sha="e" * 40, base=None,
                                cause="review needs a human")
        j.kv_set("drift", "svc", {"dirty": 1})
        j.close()
        db = st.settings.state_dir / "journal.db"
        hit = _garbage(db, "events", 3)
        assert hit and quick_check(db)

        doctor = _opskit(st, "doctor", "--json")
        checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert doctor.returncode == 1 and not checks["journal"]["ok"]
        assert str(db) in checks["journal"]["detail"] and "database corrupt" in checks["journal"]["detail"]
        assert checks["journal"]["fix"].startswith("opskit journal recover")

        events = _opskit(st, "events", "--json")
        assert events.returncode == 3 and "database corrupt" in events.stderr and "opskit journal recover" \
            in events.stderr, events.stderr

        with ServiceLock(st.settings.state_dir, "svc", wait=0, what="deploy"):
            refused = _opskit(st, "journal", "recover")
        assert refused.returncode == 1 and "refused" in refused.stderr and "svc" in refused.stderr
        assert not list(st.settings.state_dir.glob("journal.db.damaged-*"))  # nothing changed

        r = _opskit(st, "journal", "recover", "--json")
        report = json.loads(r.stdout)
        assert r.returncode == 1 and report["rebuilt"] and report["damaged"], r.stdout + r.stderr
        tables = {t["name"]: t for t in report["tables"]}
        assert 0 < tables["events"]["lost"] < 3000 and tables["events"]["recovered"] + tables["events"]["lost"] \
            >= 3000
        assert tables["quarantine"]["recovered"] == 2 and tables["approvals"]["recovered"] == 1
        aside = [Path(p) for p in report["kept_aside"]]
        assert aside and aside[0].exists() and quick_check(aside[0])  # kept as it was, for a post-mortem

        assert quick_check(db) == []
        ok = _opskit(st, "events", "--json")
        assert ok.returncode == 0 and len(ok.stdout.splitlines()) == tables["events"]["recovered"]
        assert _opskit(st, "status").returncode == 0
        q = _opskit(st, "quarantine", "list", "svc", "--json")
        assert q.returncode == 0 and len(q.stdout.splitlines()) == 2
        j2 = Journal(st.settings.state_dir)
        assert [p.id for p in approvals.pending(j2)] == [parked.id]
        assert j2.kv_get("drift", "svc") == {"dirty": 1}
        assert j2.last_good("svc") == st.sb.tip()
        doctor = _opskit(st, "doctor", "--json")
        assert {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}["journal"]["ok"]
        clean = _opskit(st, "journal", "recover")
        assert clean.returncode == 0 and "nothing to recover" in clean.stdout
    finally:
        st.close()


def test_push_against_a_corrupt_journal_is_refused_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    """pre-receive fails closed when the journal cannot be read; the pusher is told why and how to fix it."""
    from tests.support.pipeline import hooked_stage

    st = hooked_stage(tmp_path)
    try:
        db = st.settings.state_dir / "journal.db"
        c = sqlite3.connect(db)
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        c.close()
        with open(db, "r+b") as f:
            f.write(b"this is not a database at all!!" * 4)
        st.sb.commit({"app.txt": "v2\n"}, "a change")
        r = st.sb.push("master", check=False)
        assert r.returncode != 0
        assert "database corrupt" in r.stderr and str(db) in r.stderr and "opskit journal recover" in r.stderr, \
            r.stderr
    finally:
        st.close()
