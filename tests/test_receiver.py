"""The local receiver enforces Discord's and Slack's documented limits and fails on demand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from opskit.standins import free_port
from opskit.standins.receiver import Receiver
from tests.support.notify import receiver_fixture  # noqa: F401 - the `receiver` fixture


def test_discord_accepts_within_limits_and_returns_id_with_wait(receiver: Receiver) -> None:
    url = receiver.url("discord")
    r = httpx.post(url + "?wait=true", json={"content": "x" * 2000, "username": "opskit"})
    assert r.status_code == 200 and r.json()["id"]
    assert httpx.post(url, json={"embeds": [{"title": "t", "description": "d"}]}).status_code == 204
    msgs = receiver.messages
    assert len(msgs) == 2 and msgs[0].remote_id == r.json()["id"]
    assert "tok-" not in msgs[0].path  # the recorded path hides the token


@pytest.mark.parametrize("body, field", [
    ({"content": "x" * 2001}, "content"),
    ({"content": "hi", "username": "u" * 81}, "username"),
    ({"content": "hi", "username": "my discord bot"}, "username"),
    ({"embeds": [{"title": "t" * 257}]}, "embeds"),
    ({"embeds": [{"description": "d" * 4097}]}, "embeds"),
    ({"embeds": [{"description": "d" * 4000}, {"description": "d" * 2001}]}, "embeds"),
    ({"embeds": [{"title": "t"}] * 11}, "embeds"),
])
def test_discord_rejects_what_discord_rejects(receiver: Receiver, body: dict[str, object], field: str) -> None:
    r = httpx.post(receiver.url("discord") + "?wait=true", json=body)
    assert r.status_code == 400
    assert r.json()["code"] == 50035 and field in r.json()["errors"]
    assert receiver.messages == []


def test_discord_empty_and_bad_json(receiver: Receiver) -> None:
    url = receiver.url("discord")
    r = httpx.post(url, json={"content": "   "})
    assert r.status_code == 400 and r.json()["code"] == 50006
    r = httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == 50109


def test_slack_needs_text_and_answers_ok(receiver: Receiver) -> None:
    url = receiver.url("slack")
    r = httpx.post(url, json={"username": "x"})
    assert (r.status_code, r.text) == (400, "no_text")
    r = httpx.post(url, json={"text": "y" * 50_000})
    assert (r.status_code, r.text) == (200, "ok")
    assert len(receiver.messages[0].body["text"]) == 40_000  # Slack truncates, does not refuse


def test_webhook_and_ntfy_record_anything(receiver: Receiver) -> None:
    assert httpx.post(receiver.url("webhook"), json={"a": 1}).status_code == 200
    r = httpx.post(receiver.url("ntfy", "alerts"), content="plain text", headers={"Title": "T"})
    assert r.status_code == 200 and r.json()["topic"] == "alerts"
    kinds = [(m.kind, m.body) for m in receiver.messages]
    assert kinds == [("webhook", {"a": 1}), ("ntfy", "plain text")]
    assert receiver.messages[1].headers["Title"] == "T"


def test_fail_next_429_carries_discord_json_and_retry_after(receiver: Receiver) -> None:
    receiver.fail_next(2, 429, retry_after=1.5)
    for _ in range(2):
        r = httpx.post(receiver.url("discord"), json={"content": "hi"})
        assert r.status_code == 429
        assert r.json() == {"message": "You are being rate limited.", "retry_after": 1.5, "global": False}
        assert r.headers["Retry-After"] == "2"
    assert httpx.post(receiver.url("discord"), json={"content": "hi"}).status_code == 204
    receiver.fail_next(1, 404)
    r = httpx.post(receiver.url("discord"), json={"content": "hi"})
    assert r.status_code == 404 and r.json()["message"] == "Unknown Webhook"


def test_down_then_restart_on_same_port(receiver: Receiver) -> None:
    port = receiver.port
    receiver.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.post(receiver.url("webhook"), json={})
    receiver.restart()
    assert receiver.port == port
    assert httpx.post(receiver.url("webhook"), json={}).status_code == 200


def test_hang_is_bounded_by_the_client_timeout(receiver: Receiver) -> None:
    receiver.hang_next(1)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(receiver.url("webhook"), json={}, timeout=0.3)
    assert httpx.post(receiver.url("webhook"), json={}).status_code == 200


def test_failure_rate_is_a_seeded_mix() -> None:
    codes: list[list[int]] = []
    for _ in range(2):
        with Receiver.start(hang_seconds=0.2) as r, httpx.Client() as client:
            r.set_failure_rate(0.6, seed=7)
            seen = []
            for _ in range(30):
                try:
                    seen.append(client.post(r.url("webhook"), json={}, timeout=0.1).status_code)
                except httpx.TimeoutException:
                    seen.append(0)
            codes.append(seen)
    assert codes[0] == codes[1]  # same seed, same faults
    assert {0, 200, 429, 500} <= set(codes[0])


def test_runs_as_a_process_with_control_and_record(tmp_path: Path) -> None:
    port = free_port()
    record = tmp_path / "rec.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "opskit.standins.receiver", "--port", str(port),
                          "--record", str(record)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        assert f"127.0.0.1:{port}" in p.stdout.readline()
        base = f"http://127.0.0.1:{port}"
        httpx.post(f"{base}/_control", json={"fail_next": {"n": 1, "status": 503}})
        assert httpx.post(f"{base}/slack/T/B/x", json={"text": "a"}).status_code == 503
        assert httpx.post(f"{base}/slack/T/B/x", json={"text": "b"}).status_code == 200
        got = httpx.get(f"{base}/_received").json()
        assert [m["body"]["text"] for m in got] == ["b"]
        assert [json.loads(ln)["body"]["text"] for ln in record.read_text().splitlines()] == ["b"]
    finally:
        p.terminate()
        assert p.wait(5) == 0
