"""`opskit status` names each service's last incident of the last 7 days — when, what, downtime
and `opskit incident ID` — in text and --json, after a real auto-revert through the hooks."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from opskit.base.clock import FakeClock, parse_iso
from opskit.views.incident import build, find
from opskit.views.status import collect, render
from tests.support.gitsandbox import git
from tests.support.pipeline import env_for, hooked_stage


def test_status_names_the_last_incident_and_forgets_it_after_7_days(tmp_path: Path) -> None:
    st = hooked_stage(tmp_path, health={"window": 1.0, "period": 0.2, "startup": 1.0})
    try:
        bad = st.sb.commit({"service.mode": "crash\n", "app.txt": "v2\n"}, "make it crash")
        git(st.sb.dev, "push", "origin", st.sb.branch, check=False)
        j = st.journal()
        assert j.last("rollback.complete", "svc") is not None  # a real auto-revert happened
        anchor = find(j, "last", "svc")
        inc = build(j, anchor)
        assert inc.status == "reverted" and inc.downtime is not None

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "opskit", "status", *args], check=False, capture_output=True,
                                  text=True, env={**os.environ, **env_for(st)}, timeout=60)

        p = cli("--json")
        assert p.returncode == 0, p.stderr + p.stdout  # history, not attention: the service is healthy
        last = json.loads(p.stdout)["services"][0]["last_incident"]
        assert last["id"] == anchor.id and last["ts"] == anchor.ts and last["status"] == "reverted"
        assert last["downtime_s"] == round(inc.downtime, 3)
        assert last["summary"].startswith(f"auto-reverted {bad[:12]}: health gate failed: ")
        assert "Connection refused" in last["summary"]
        assert last["command"] == f"opskit incident {anchor.id}"

        text = cli()
        assert text.returncode == 0, text.stdout
        line = next(ln for ln in text.stdout.splitlines() if ln.strip().startswith("last incident:"))
        assert anchor.ts in line and f"auto-reverted {bad[:12]}" in line and "Connection refused" in line
        assert f"downtime {inc.downtime:.2f}s" in line and f"(opskit incident {anchor.id})" in line
        assert "needs attention: nothing" in text.stdout

        # seven days on it is history `opskit incident --list` keeps, not a status line
        later = FakeClock(parse_iso(anchor.ts) + dt.timedelta(days=7, minutes=1))
        old = collect(st.settings, j, clock=later)
        assert old["services"][0]["last_incident"] is None
        assert "  last incident: none in 7 days" in render(old)
        within = collect(st.settings, j, clock=FakeClock(parse_iso(anchor.ts) + dt.timedelta(days=6)))
        assert within["services"][0]["last_incident"]["id"] == anchor.id
    finally:
        st.close()
