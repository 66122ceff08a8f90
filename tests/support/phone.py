"""A hooked chain stage whose notifications also go to the Telegram and ntfy stand-ins, and a
person with a phone: taps performed exactly as the apps do them.

Telegram: a callback_query update carrying the button's own callback_data and the tapper's
from.id. ntfy: the `http` action's own method, URL, headers and body, as the server handed
the action to the app, sent to the (stand-in) server.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from opskit.chain import approvals
from opskit.standins.botapi import NtfyMessage, TgMessage
from opskit.standins.receiver import Receiver
from tests.support.chain import ChainStage, make_chain_stage
from tests.support.pipeline import env_for

BOT = "555000111:AAF-opskit-test-bot-token-Xq93vLw"
ALICE = 4242
READER = "tk_opskit_reader_8fQ2"  # opskit's: reads the reply topic, writes the alert topic
PHONE = "tk_phone_writer_Zu71"  # in the buttons: can only write the reply topic


@dataclass
class Phone:
    cs: ChainStage

    @property
    def rcv(self) -> Receiver:
        assert self.cs.st.receiver is not None
        return self.cs.st.receiver

    # --- Telegram ---------------------------------------------------------------------------
    def tg_messages(self) -> list[TgMessage]:
        return list(self.rcv.telegram.messages)

    def tg_last(self) -> TgMessage:
        with_buttons = [m for m in self.tg_messages() if m.buttons()]
        assert with_buttons, f"no Telegram message with buttons: {[m.text[:60] for m in self.tg_messages()]}"
        return with_buttons[-1]

    def tg_tap(self, label: str, *, user: int = ALICE, username: str | None = "alice",
               message: TgMessage | None = None, data: str | None = None, age: float = 0.0) -> dict[str, Any]:
        m = message or self.tg_last()
        return self.rcv.telegram.tap(m.message_id, label, user_id=user, username=username, data=data, age=age)

    # --- ntfy -------------------------------------------------------------------------------
    def ntfy_last(self, topic: str = "svc-alerts") -> NtfyMessage:
        msgs = [m for m in self.rcv.ntfy.topics.get(topic, []) if m.actions]
        assert msgs, f"no ntfy message with actions on {topic}"
        return msgs[-1]

    def ntfy_tap(self, label: str, message: NtfyMessage | None = None) -> httpx.Response:
        m = message or self.ntfy_last()
        (action,) = [a for a in m.actions if a["label"] == label or a["label"].split(" ")[0] == label]
        assert action["action"] == "http"
        resp = httpx.request(action.get("method", "POST"), action["url"], headers=action.get("headers", {}),
                             content=action.get("body", "").encode(), timeout=10)
        assert resp.status_code == 200, resp.text
        return resp

    def ntfy_follow_ups(self) -> list[NtfyMessage]:
        return [m for m in self.rcv.ntfy.topics.get("svc-alerts", []) if not m.actions]

    # --- opskit ---------------------------------------------------------------------------------
    def inbox(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cs.cli("inbox", *args)

    def inbox_async(self, *args: str) -> subprocess.Popen[str]:
        import os

        return subprocess.Popen([sys.executable, "-m", "opskit", "inbox", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**os.environ, **env_for(self.cs.st)})

    def park(self, name: str = "feature/h", **files: str) -> approvals.Parked:
        self.cs.feature(name, {"review.exit": "3\n", **files}, message=f"{name}: the change to decide")
        p = self.cs.push(name)
        assert "parked as change #" in p.stderr, p.stderr
        rows = [r for r in approvals.pending(self.cs.st.journal()) if r.raw_branch == name]
        return rows[-1]


def add_phone_channels(cs: ChainStage, *, tg: bool = True, ntfy: bool = True, extra_tg: str = "") -> None:
    rcv = cs.st.receiver
    assert rcv is not None
    names = ["ops"] + (["tg"] if tg else []) + (["nt"] if ntfy else [])
    text = cs.st.config_path.read_text()
    text = text.replace('notify = ["ops"]', "notify = [" + ", ".join(f'"{n}"' for n in names) + "]", 1)
    if tg:
        text += (f'\n[notify.tg]\ntype = "telegram"\ntoken = "{BOT}"\nchat_id = "-100777"\n'
                 f'api_url = "{rcv.url("telegram")}"\nallowed_users = [{ALICE}]\nretry_for = 2\ntimeout = 5\n{extra_tg}')
    if ntfy:
        base = rcv.url("ntfy", "x").rsplit("/", 1)[0]
        text += (f'\n[notify.nt]\ntype = "ntfy"\nurl = "{base}"\ntopic = "svc-alerts"\ntoken = "{READER}"\n'
                 f'reply_url = "{base}/svc-replies"\nreply_token = "{PHONE}"\nretry_for = 2\ntimeout = 5\n')
        rcv.ntfy.acl("svc-replies", read={READER}, write={PHONE})
        rcv.ntfy.acl("svc-alerts", read={READER}, write={READER})
    # [opskit] must stay the first table: the channels go after the service's tables.
    cs.st.config_path.write_text(text)


def make_phone(tmp: Path, **kw: Any) -> Phone:
    cs = make_chain_stage(tmp)
    add_phone_channels(cs, **kw)
    return Phone(cs)


@pytest.fixture(name="phone")
def phone_fixture(tmp_path: Path) -> Iterator[Phone]:
    ph = make_phone(tmp_path)
    try:
        yield ph
    finally:
        ph.rcv.telegram.release()
        ph.cs.st.close()
