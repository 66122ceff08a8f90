"""What a push shows the pusher of its health gate: a good push is a few lines however long the
window; a failing gate still shows its failing probes; the journal keeps every probe either way."""

from __future__ import annotations

from pathlib import Path

from tests.support.gitsandbox import git
from tests.support.pipeline import hooked_stage


def _remote_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("remote:")]


def test_a_good_push_is_a_few_lines_and_the_journal_keeps_every_probe(tmp_path: Path) -> None:
    st = hooked_stage(tmp_path, health={"window": 6, "period": 0.5})
    try:
        st.sb.commit({"service.mode": "healthy\n", "app.txt": "v2\n"}, "good change")
        p = git(st.sb.dev, "push", "origin", st.sb.branch, check=False)
        assert p.returncode == 0, p.stderr
        remote = _remote_lines(p.stderr)
        assert len(remote) <= 8, "\n".join(remote)
        assert any("health: probing" in ln and "every 0.5s for 6s" in ln for ln in remote), remote
        passed = st.journal().last("health.pass", "svc")
        assert passed is not None
        n = passed.data["probes"]
        assert n >= 12 and len(passed.data["probe_log"]) == n  # every probe, 0.5 s apart over 6 s
        assert all(ok for _at, ok, _detail in passed.data["probe_log"])
        assert any(f"✔ healthy: {n}/{n} probes ok, 0 failed" in ln for ln in remote), remote
    finally:
        st.close()


def test_a_failing_gate_still_shows_its_failing_probes(tmp_path: Path) -> None:
    st = hooked_stage(tmp_path, health={"window": 6, "period": 0.5, "failures": 3})
    try:
        st.sb.commit({"service.mode": "crash\n", "app.txt": "v2\n"}, "make it crash")
        p = git(st.sb.dev, "push", "origin", st.sb.branch, check=False)
        remote = _remote_lines(p.stderr)
        failed = st.journal().query(service="svc", type_prefix="health.fail")
        assert len(failed) == 1, remote
        bad = [(at, detail) for at, ok, detail in failed[0].data["probe_log"] if not ok]
        assert bad
        shown = [ln for ln in remote if " BAD " in ln]
        # each of the last failed probes, as the journal has it, bounded
        assert 1 <= len(shown) <= 5, remote
        for at, detail in bad[-len(shown):]:
            assert any(f"probe +{at:.1f}s BAD {detail}" in ln for ln in shown), (at, detail, remote)
        assert any("✘ health gate failed:" in ln for ln in remote), remote
        assert not any(" ok " in ln and "probe +" in ln for ln in remote), remote  # no good-probe lines
    finally:
        st.close()


def test_a_long_failing_gate_shows_its_last_failed_probes_and_how_many_more() -> None:
    from opskit.deploy.health import FAILED_SHOWN, ProbeResult, Verdict, verdict_lines

    probes = [ProbeResult(at=i * 2.0, ok=False, detail=f"Connection refused #{i}") for i in range(15)]
    lines = verdict_lines(Verdict(healthy=False, reason="no healthy probe within 30s startup", target="t",
                                  probes=probes, duration=30.0, event_id=42))
    assert len(lines) == FAILED_SHOWN + 2 <= 8, lines
    assert lines[0] == f"  … {15 - FAILED_SHOWN} earlier failed probe(s) not shown (every probe: opskit incident 42)"
    assert lines[1:-1] == [f"  probe +{p.at:.1f}s BAD {p.detail}" for p in probes[-FAILED_SHOWN:]]
    assert lines[-1].startswith("✘ health gate failed: no healthy probe") and "0/15 probes ok, 15 failed" in lines[-1]
