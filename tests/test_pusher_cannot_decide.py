"""The push account cannot decide (docs/ARCHITECTURE.md, who may do what). On the real system install (install.sh
--system, a git push account, an operator, root's opskit inbox against the Telegram stand-in):
the push account's approve/reject/unfreeze/quarantine release are exit 2 naming the rule; it can
neither read nor make decision.key; a claim it forges in the journal is not applied by root; an
Unfreeze offered for one freeze does not lift a later one. Needs root; skipped otherwise."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from opskit.standins.receiver import Receiver
from tests.support.server import Server, need_root, run_as, server_fixture

pytestmark = [pytest.mark.slow, pytest.mark.skipif(need_root() is not None, reason=need_root() or "")]

BOT = "555000111:AAF-opskit-test-bot-token-Xq93vLw"
ALICE = 4242


@dataclass
class Site:
    srv: Server
    rcv: Receiver

    @property
    def key(self) -> Path:
        return self.srv.state / "decision.key"

    def py(self, user: str, code: str) -> subprocess.CompletedProcess[str]:
        """Python of the system install as user, with `settings` and `journal` of the host."""
        head = ("import sys; from pathlib import Path; from opskit.base import config; "
                "from opskit.storage.journal import Journal; "
                f"settings = config.load({str(self.srv.config)!r}); journal = Journal(settings.state_dir)\n")
        return run_as(user, [str(self.srv.prefix / "bin" / "python"), "-c", head + code])

    def park(self) -> int:
        """A parked change, as the hooks' pipeline (the push account) parks one."""
        r = self.py(self.srv.git, "from opskit.storage import approvals\n"
                    "print(approvals.park(journal, service='app', chain='c1', branch='feature/x', sha='a' * 40, "
                    "base=None, cause='review asked for a human').id)")
        assert r.returncode == 0, r.stderr
        return int(r.stdout.strip())

    def offer_unfreeze(self, user: str) -> None:
        """The message with an Unfreeze button, sent as `user` sends it (the pipeline: the git account)."""
        r = self.py(user, "from opskit import notify; from opskit.notify import decisions\n"
                    "b = decisions.buttons(settings, journal, 'app', [('unfreeze', 'app')])\n"
                    "assert b, 'no buttons'\n"
                    "notify.send(settings, journal, 'app is frozen', title='app: frozen', service='app', actions=b)")
        assert r.returncode == 0, r.stderr

    def events(self, kind: str) -> list[dict[str, object]]:
        r = self.srv.ops("root", "events", "--json", "--limit", "500", "--type", kind)
        assert r.returncode == 0, r.stderr
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def _frozen(site: Site) -> bool:
    r = site.py("root", "print(journal.frozen('app') is not None)")
    assert r.returncode == 0, r.stderr
    return r.stdout.strip() == "True"


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    for srv in server_fixture():
        r = srv.ops("root", "add", "app", "--worktree", str(srv.worktree), "--deploy", "true",
                    "--health-url", f"http://127.0.0.1:{srv.port}/health", "--repo", str(srv.repo),
                    "--host", "127.0.0.1", "--direct-push")
        assert r.returncode == 0, r.stdout + r.stderr
        rcv = Receiver.start()
        try:
            text = srv.config.read_text()
            text = text.replace('state_dir = "', 'notify = ["tg"]\nstate_dir = "', 1)
            text += (f'\n[notify.tg]\ntype = "telegram"\ntoken = "{BOT}"\nchat_id = "-100777"\n'
                     f'api_url = "{rcv.url("telegram")}"\nallowed_users = [{ALICE}]\nretry_for = 1\ntimeout = 5\n')
            srv.config.write_text(text)
            yield Site(srv, rcv)
        finally:
            rcv.stop()


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_the_push_account_cannot_decide_and_an_operator_can(site: Site) -> None:
    srv = site.srv
    change = site.park()
    assert srv.ops(srv.git, "freeze", "app", "--reason", "the agent stops itself").returncode == 0  # allowed
    assert _frozen(site)
    before = site.events("decision") + site.events("review") + site.events("service")
    tries = {"approve": ["approve", str(change)], "reject": ["reject", str(change), "--reason", "mine"],
             "unfreeze": ["unfreeze", "app"], "quarantine release": ["quarantine", "release", "app", "abcd"]}
    for verb, args in tries.items():
        r = srv.ops(srv.git, *args)
        assert r.returncode == 2, (verb, r.stdout, r.stderr)
        assert one_line(r) == (f"opskit: {verb}: account {srv.git} pushes to service app and may not decide on its "
                               f"changes; an operator (another member of group {srv.group}, or root) runs it"), verb
    # nothing changed: still parked, still frozen, no decision journaled
    r = site.py("root", f"from opskit.storage import approvals; print(approvals.get(journal, {change}).status)")
    assert r.stdout.strip() == "parked", r.stderr
    assert _frozen(site)
    assert site.events("decision") + site.events("review") + site.events("service") == before
    # Root by sudo acts for the account behind it: a sudo rule for the group is no way around the rule.
    r = srv.ops("root", "approve", str(change), env={"SUDO_UID": str(pwd.getpwnam(srv.git).pw_uid),
                                                     "SUDO_USER": srv.git})
    assert r.returncode == 2, r.stdout + r.stderr
    assert one_line(r) == (f"opskit: approve: account {srv.git} (root by sudo acts for SUDO_UID="
                           f"{pwd.getpwnam(srv.git).pw_uid}) pushes to service app and may not decide on its "
                           f"changes; an operator (another member of group {srv.group}, or root) runs it")
    # An operator's approve needs root for the merge (git runs in the account's repository): said
    # before the decision, so the change still waits.
    r = srv.ops(srv.operator, "approve", str(change))
    assert r.returncode == 2, r.stdout + r.stderr
    assert one_line(r) == (f"opskit: approve: the merge runs git in service app's repository, which belongs to "
                           f"{srv.git}; an operator approves as root: sudo opskit approve {change} "
                           "(or taps the button on a phone)")
    r = site.py("root", f"from opskit.storage import approvals; print(approvals.get(journal, {change}).status)")
    assert r.stdout.strip() == "parked", r.stderr
    # An operator decides: reject and unfreeze as themselves; root's approve is not refused by the rule.
    r = srv.ops(srv.operator, "reject", str(change), "--reason", "not this way")
    assert r.returncode == 0 and f"rejected by {srv.operator}" in r.stdout, r.stdout + r.stderr
    r = srv.ops(srv.operator, "unfreeze", "app")
    assert r.returncode == 0 and "unfrozen" in r.stdout, r.stdout + r.stderr
    assert not _frozen(site)
    other = site.park()
    r = srv.ops("root", "approve", str(other), "--lock-wait", "5")
    assert "may not decide" not in r.stderr and f"change #{other}" in r.stdout + r.stderr, r.stdout + r.stderr


def test_the_key_is_roots_and_the_push_account_never_reads_or_makes_it(site: Site) -> None:
    srv = site.srv
    st = site.key.lstat()  # install.sh --system made it
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0)
    r = run_as(srv.git, ["cat", str(site.key)])
    assert r.returncode != 0 and "Permission denied" in r.stderr
    r = site.py(srv.git, "from opskit.notify import decisions; decisions.secret(settings.state_dir)")
    assert r.returncode != 0 and "decision key is root's alone" in r.stderr, r.stderr
    # Without a key, the push account's pipeline still records its offers, and never makes one.
    site.key.unlink()
    try:
        site.offer_unfreeze(srv.git)
        assert not os.path.lexists(site.key)
        # Its message waits for root (never sent without its buttons, never dropped) ...
        r = site.py("root", "from opskit.storage import outbox; print(outbox.channels_waiting_to_sign(journal))")
        assert "tg" in r.stdout, r.stdout + r.stderr
        # ... and the push account cannot run the inbox that would sign it.
        r = srv.ops(srv.git, "inbox")
        assert r.returncode == 2 and "only root holds the decision key" in one_line(r)
    finally:
        r = srv.ops("root", "inbox")  # root makes the key and sends what waited, signed
    assert r.returncode == 0, r.stdout + r.stderr
    st = site.key.lstat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0)
    sent = [m for m in site.rcv.telegram.messages if m.text.startswith("app is frozen") or "app is frozen" in m.text]
    assert sent and sent[-1].buttons() and sent[-1].buttons()[0]["callback_data"].startswith("1."), sent


def test_a_claim_forged_in_the_journal_is_not_applied_by_roots_inbox(site: Site) -> None:
    srv = site.srv
    assert srv.ops("root", "freeze", "app", "--reason", "held").returncode == 0
    r = site.py(srv.git, "from opskit.storage import decisions as store; store.get_offer(journal, 0)")
    assert r.returncode == 0, r.stderr  # the tables exist, as after any offer
    # The push account writes a tap's claim left `applying` under a dead pid, as a killed inbox would.
    forged = ("INSERT INTO decision_offers (action, target, service, created, expires, status, channel, decided_by, "
              "claimed_by, claimed_at, tap) VALUES ('unfreeze', 'app', 'app', '2026-01-01T00:00:00Z', 4102444800, "
              "'applying', 'tg', 'telegram:4242 @alice', 999999999, '2026-01-01T00:00:00Z', '77');")
    r = run_as(srv.git, ["sqlite3", str(srv.state / "journal.db"), forged])
    assert r.returncode == 0, r.stderr
    r = srv.ops("root", "inbox")
    assert r.returncode == 0, r.stdout + r.stderr
    assert _frozen(site), "root's inbox applied a decision nobody tapped"
    refused = site.events("decision.refused")
    assert refused and "no valid proof" in str(refused[-1]["data"]), refused
    assert srv.ops("root", "unfreeze", "app").returncode == 0


def test_an_unfreeze_offered_for_an_older_freeze_does_not_lift_a_later_one(site: Site) -> None:
    srv = site.srv
    assert srv.ops("root", "freeze", "app", "--reason", "first").returncode == 0
    site.offer_unfreeze(srv.git)  # the pipeline's Unfreeze button, for this freeze
    assert srv.ops("root", "inbox").returncode == 0  # root signs and sends it
    first = [m for m in site.rcv.telegram.messages if m.buttons()][-1]
    assert srv.ops(srv.operator, "unfreeze", "app").returncode == 0
    assert srv.ops("root", "freeze", "app", "--reason", "second").returncode == 0
    site.rcv.telegram.tap(first.message_id, "Unfreeze", user_id=ALICE, username="alice")
    r = srv.ops("root", "inbox")
    assert r.returncode == 0, r.stdout + r.stderr
    assert _frozen(site), "an old Unfreeze lifted a later freeze"
    refused = site.events("decision.refused")
    assert "no longer waits" in str(refused[-1]["data"]), refused[-1]
    # The button offered for the freeze that holds now does lift it.
    site.offer_unfreeze(srv.git)
    assert srv.ops("root", "inbox").returncode == 0
    second = [m for m in site.rcv.telegram.messages if m.buttons()][-1]
    assert second.message_id != first.message_id
    site.rcv.telegram.tap(second.message_id, "Unfreeze", user_id=ALICE, username="alice")
    r = srv.ops("root", "inbox")
    assert r.returncode == 0 and not _frozen(site), r.stdout + r.stderr
