"""The telegram channel and the Bot API / ntfy stand-ins, against the live receiver."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from opskit import notify
from opskit.base import config
from opskit.base.config import Settings
from opskit.base.errors import ConfigError
from opskit.notify.base import Action
from opskit.standins.receiver import Receiver
from opskit.storage.journal import Journal
from tests.support.notify import (
    RecordingClock,
    channel_toml,
    config_toml,
    dump_state,
    outbox_rows,
    receiver_fixture,  # noqa: F401 - the `receiver` fixture
)

BOT = "123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"


def tg_settings(write_config: Callable[[str], Path], r: Receiver, **extra: object) -> Settings:
    extra.setdefault("retry_for", 5)
    return config.load(write_config(config_toml(["tg"], channel_toml(
        "tg", "telegram", token=BOT, chat_id="-100200300", api_url=r.url("telegram"), allowed_users=[42],
        **extra))))


def test_sends_text_and_buttons_and_keeps_the_token_out(write_config, receiver, state_dir) -> None:
    s = tg_settings(write_config, receiver)
    j = Journal(state_dir)
    rep = notify.send(s, j, "svc: feature/x waits for a human", title="approval needed", service="svc",
                      actions=[Action("Approve", "tokA"), Action("Reject", "tokR")])
    assert rep.ok, rep.problem()
    (m,) = receiver.telegram.messages
    assert m.chat_id == "-100200300" and "approval needed" in m.text and "feature/x" in m.text
    assert [b["callback_data"] for b in m.buttons()] == ["tokA", "tokR"]
    assert outbox_rows(state_dir)[0]["remote_id"] == str(m.message_id)
    assert receiver.requests[-1][0] == "/telegram/bot…/sendMessage"
    assert BOT not in dump_state(state_dir)


def test_long_text_is_cut_to_4096_and_accepted(write_config, receiver, state_dir) -> None:
    s = tg_settings(write_config, receiver)
    rep = notify.send(s, Journal(state_dir), "line of a long test tail\n" * 400, title="t")
    assert rep.ok, rep.problem()
    (m,) = receiver.telegram.messages
    assert len(m.text) <= 4096 and "[truncated, full text in" in m.text


def test_429_parameters_retry_after_is_honoured(write_config, receiver, state_dir) -> None:
    s = tg_settings(write_config, receiver, retry_for=30)
    receiver.fail_next(1, 429, retry_after=7)
    clock = RecordingClock()
    rep = notify.send(s, Journal(state_dir, clock), "hello", clock=clock)
    assert rep.ok and clock.sleeps == [7.0]


@pytest.mark.parametrize("status", [400, 401, 403])
def test_refusal_is_permanent_and_goes_to_the_fallback(write_config, receiver, state_dir, status: int) -> None:
    s = config.load(write_config(config_toml(["tg"], channel_toml(
        "tg", "telegram", token=BOT, chat_id="1", api_url=receiver.url("telegram"), fallback="hook"),
        channel_toml("hook", "webhook", receiver.url("webhook")))))
    receiver.fail_next(1, status)
    rep = notify.send(s, Journal(state_dir), "deploy failed", actions=[Action("Approve", "t")])
    assert rep.broken == ["tg"] and rep.delivered == ["hook"]
    assert f"HTTP {status}" in rep.errors["tg"] and BOT not in rep.errors["tg"]
    hook = [m for m in receiver.messages if m.kind == "webhook"]
    assert len(hook) == 1


def test_config_names_what_is_missing(write_config) -> None:
    with pytest.raises(ConfigError, match="chat_id"):
        config.load(write_config(channel_toml("tg", "telegram", token=BOT)))
    with pytest.raises(ConfigError, match="allowed_users"):
        config.load(write_config(channel_toml("tg", "telegram", token=BOT, chat_id="1", allowed_users=["me"])))
    with pytest.raises(ConfigError, match="token"):
        config.load(write_config(channel_toml("tg", "telegram", chat_id="1")))


# --- the Bot API stand-in enforces the documented rules -------------------------------------------

def _api(r: Receiver, method: str, **body: object) -> httpx.Response:
    return httpx.post(f"{r.url('telegram')}/bot{BOT}/{method}", json=body, timeout=10)


def test_stand_in_refuses_long_callback_data_and_text(receiver) -> None:
    ok = _api(receiver, "sendMessage", chat_id=1, text="x",
              reply_markup={"inline_keyboard": [[{"text": "A", "callback_data": "a" * 64}]]})
    assert ok.status_code == 200 and ok.json()["ok"] is True
    bad = _api(receiver, "sendMessage", chat_id=1, text="x",
               reply_markup={"inline_keyboard": [[{"text": "A", "callback_data": "é" * 33}]]})  # 66 bytes
    assert bad.status_code == 400 and bad.json()["description"] == "Bad Request: BUTTON_DATA_INVALID"
    long = _api(receiver, "sendMessage", chat_id=1, text="x" * 4097)
    assert long.status_code == 400 and "too long" in long.json()["description"]
    assert httpx.post(f"{receiver.url('telegram')}/botnope/getMe").status_code == 401


def test_get_updates_offset_forgets_and_old_queries_cannot_be_answered(receiver) -> None:
    tg = receiver.telegram
    mid = _api(receiver, "sendMessage", chat_id=1, text="decide",
               reply_markup={"inline_keyboard": [[{"text": "Approve", "callback_data": "t1"}]]}).json()["result"]
    u1 = tg.tap(mid["message_id"], "Approve", user_id=42, username="alice")
    u2 = tg.tap(mid["message_id"], "Approve", user_id=43, age=60)
    got = _api(receiver, "getUpdates").json()["result"]
    assert [u["update_id"] for u in got] == [u1["update_id"], u2["update_id"]]
    assert got[0]["callback_query"]["data"] == "t1" and got[0]["callback_query"]["from"]["id"] == 42
    # unconfirmed: still there; an offset past u1 confirms it, for good
    assert len(_api(receiver, "getUpdates").json()["result"]) == 2
    assert [u["update_id"] for u in _api(receiver, "getUpdates", offset=u1["update_id"] + 1).json()["result"]] \
        == [u2["update_id"]]
    assert [u["update_id"] for u in _api(receiver, "getUpdates", offset=u1["update_id"]).json()["result"]] \
        == [u2["update_id"]]
    assert _api(receiver, "getUpdates", offset=u2["update_id"] + 1).json()["result"] == []
    fresh = _api(receiver, "answerCallbackQuery", callback_query_id=u1["callback_query"]["id"], text="ok")
    assert fresh.status_code == 200
    old = _api(receiver, "answerCallbackQuery", callback_query_id=u2["callback_query"]["id"])
    assert old.status_code == 400 and "too old" in old.json()["description"]
    edit = dict(chat_id=1, message_id=mid["message_id"], text="approved by alice")
    assert _api(receiver, "editMessageText", **edit).status_code == 200
    same = _api(receiver, "editMessageText", **edit)
    assert same.status_code == 400 and "not modified" in same.json()["description"]
    assert _api(receiver, "editMessageText", chat_id=1, message_id=999, text="x").status_code == 400


def test_get_updates_long_polls_until_a_tap(receiver) -> None:
    import threading

    mid = _api(receiver, "sendMessage", chat_id=1, text="d",
               reply_markup={"inline_keyboard": [[{"text": "A", "callback_data": "t"}]]}).json()["result"]["message_id"]
    timer = threading.Timer(0.3, lambda: receiver.telegram.tap(mid, "A", user_id=1))
    timer.start()
    got = _api(receiver, "getUpdates", timeout=20).json()["result"]
    timer.join()
    assert len(got) == 1


# --- ntfy stand-in ---------------------------------------------------------------------------------

def test_ntfy_actions_limit_poll_acl_and_cache(receiver) -> None:
    base = receiver.url("ntfy", "x").rsplit("/", 1)[0]
    four = "; ".join(f"http, B{i}, http://127.0.0.1/x, body=b{i}" for i in range(4))
    refused = httpx.post(f"{base}/alerts", content="m", headers={"Actions": four})
    assert refused.status_code == 400 and "too many actions" in refused.json()["error"]
    three = "; ".join(f"http, B{i}, http://127.0.0.1/x, method=POST, headers.Authorization=Bearer w, body=b{i}"
                      for i in range(3))
    sent = httpx.post(f"{base}/alerts", content="m", headers={"Actions": three}).json()
    assert [a["body"] for a in sent["actions"]] == ["b0", "b1", "b2"]
    assert sent["actions"][0]["headers"] == {"Authorization": "Bearer w"} and sent["actions"][0]["method"] == "POST"
    js = httpx.post(base, json={"topic": "alerts", "message": "j", "actions": [
        {"action": "http", "label": "A", "url": "http://127.0.0.1/y", "body": "z"}]})
    assert js.status_code == 200 and js.json()["actions"][0]["label"] == "A"

    receiver.ntfy.acl("replies", read={"reader-token"}, write={"writer-token", "reader-token"})
    assert httpx.post(f"{base}/replies", content="x").status_code == 403
    first = httpx.post(f"{base}/replies", content="d1", headers={"Authorization": "Bearer writer-token"}).json()
    second = httpx.post(f"{base}/replies", content="d2", headers={"Authorization": "Bearer writer-token"}).json()

    def poll(since: str, token: str = "reader-token") -> httpx.Response:
        return httpx.get(f"{base}/replies/json", params={"poll": "1", "since": since},
                         headers={"Authorization": f"Bearer {token}"})

    assert poll("all", "writer-token").status_code == 403  # the phone's token cannot read decisions
    assert [m["message"] for m in _lines(poll("all"))] == ["d1", "d2"]
    assert [m["message"] for m in _lines(poll(first["id"]))] == ["d2"]
    assert _lines(poll(second["id"])) == []
    receiver.advance(12 * 3600 + 5)
    assert _lines(poll("all")) == []  # out of the 12 h cache


def _lines(resp: httpx.Response) -> list[dict[str, object]]:
    import json

    assert resp.status_code == 200, resp.text
    return [json.loads(ln) for ln in resp.text.splitlines() if ln.strip()]


def test_doctor_warns_where_a_tap_could_not_count(write_config, state_dir) -> None:
    from opskit.views import doctor

    s = config.load(write_config(config_toml(["tg"], channel_toml("tg", "telegram", token=BOT, chat_id="1"),
                                             channel_toml("nt", "ntfy", "http://127.0.0.1:9/ntfy",
                                                          reply_url="http://127.0.0.1:9/ntfy/replies"))))
    problems = {(c.name, c.detail.split(":")[0]) for c in doctor.run_checks(s) if not c.ok}
    assert ("notify.tg", "allowed_users is empty") in problems
    assert ("notify.nt", "reply_url without reply_token") in problems and ("notify.nt", "no token") in problems


def test_buttons_root_never_signs_cost_the_buttons_after_ten_minutes_not_the_channel(
        write_config, receiver, state_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the system install the push account's message with buttons waits for root to sign it,
    and the channel's later messages wait behind it. When root's inbox never comes (no cron.d
    yet, inbox failing) the alerts must not wait forever: after SIGN_WAIT the message goes
    without its buttons, saying so, and the queue behind it follows."""
    from opskit.base.clock import FakeClock
    from opskit.notify import courier, decisions

    monkeypatch.setattr(decisions, "holds_key", lambda _state: False)  # as the push account
    s = tg_settings(write_config, receiver)
    j = Journal(state_dir)
    clock = FakeClock()
    first = notify.send(s, j, "app: feature/x waits for a human", title="approval needed", service="app",
                        actions=[Action("Approve", decisions.UNSIGNED + "1")], clock=clock)
    second = notify.send(s, j, "app: auto-reverted", title="rollback", service="app", clock=clock)
    assert not first.ok and not second.ok and not receiver.telegram.messages
    clock.advance(courier.SIGN_WAIT - 1)
    notify.flush(s, j, clock=clock)
    assert not receiver.telegram.messages  # still inside the wait: order kept, nothing sent
    clock.advance(2)
    notify.flush(s, j, clock=clock)
    texts = [m.text for m in receiver.telegram.messages]
    assert len(texts) == 2 and "waits for a human" in texts[0] and "auto-reverted" in texts[1], texts
    assert "no buttons: root's `opskit inbox` did not sign them within 10 minutes" in texts[0]
    assert not receiver.telegram.messages[0].buttons()
