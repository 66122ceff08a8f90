"""Benchmark 7: a tap on a phone until it took effect, on the local Telegram Bot API stand-in.

The decision is Unfreeze (no git, no deploy: what is timed is opskit's part). Paired, round by
round: `opskit inbox --wait 30` already listening (long-poll, as cron runs it 50 s of every
minute) vs. a one-shot `opskit inbox` started after the tap (the whole command; under cron a
tap outside the listening window also waits for the next minute, up to 10 s).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OPSKIT, ROOT, Result, Stats, bench_env, interleave, wall_ms  # noqa: E402

sys.path.insert(0, str(ROOT / "src"))

BOT = "777000:AAbench-token-for-the-stand-in-only"


def run(rounds: int = 7, warmup: int = 1) -> Result:
    import httpx

    from opskit.base import config
    from opskit.notify import decisions
    from opskit.standins.receiver import Receiver
    from opskit.storage.journal import Journal

    res = Result()
    with tempfile.TemporaryDirectory(prefix="opskit-bench-tap-") as t, Receiver.start() as rx:
        tmp = Path(t)
        env = bench_env(tmp)
        state = tmp / "state"
        conf = tmp / "opskit.toml"
        conf.write_text(f'[opskit]\nstate_dir = {json.dumps(str(state))}\nnotify = ["tg"]\n\n'
                        f'[notify.tg]\ntype = "telegram"\ntoken = "{BOT}"\nchat_id = "1"\n'
                        f'api_url = {json.dumps(rx.url("telegram"))}\nallowed_users = [42]\n\n'
                        f'[service.svc]\nrepo = {json.dumps(str(tmp / "svc.git"))}\n'
                        f'worktree = {json.dumps(str(tmp / "svc"))}\n')
        settings = config.load(conf)
        j = Journal(state)

        def ready() -> int:
            """Freeze svc and send a message with its Unfreeze button; the message id."""
            j.kv_set("frozen", "svc", {"reason": "bench", "event_id": None, "since": j.now()})
            (button,) = decisions.offer(settings, j, "svc", [("unfreeze", "svc")])
            sent = httpx.post(f"{rx.url('telegram')}/bot{BOT}/sendMessage", json={
                "chat_id": 1, "text": "svc is frozen",
                "reply_markup": {"inline_keyboard": [[{"text": button.label, "callback_data": button.token}]]}})
            return int(sent.json()["result"]["message_id"])

        def unfrozen() -> bool:
            return j.kv_get("frozen", "svc") is None

        def listening() -> float:
            mid = ready()
            polls = rx.telegram.calls.count("getUpdates")
            child = subprocess.Popen([*OPSKIT, "--config", str(conf), "inbox", "--wait", "30"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                while rx.telegram.calls.count("getUpdates") <= polls:  # it is listening
                    time.sleep(0.005)
                time.sleep(0.05)
                t0 = time.perf_counter()
                rx.telegram.tap(mid, "Unfreeze", user_id=42)
                while not unfrozen():
                    time.sleep(0.002)
                return (time.perf_counter() - t0) * 1000
            finally:
                child.terminate()
                child.wait()

        def one_shot() -> float:
            mid = ready()
            rx.telegram.tap(mid, "Unfreeze", user_id=42)
            ms = wall_ms([*OPSKIT, "--config", str(conf), "inbox"], env=env)
            if not unfrozen():
                raise RuntimeError("the one-shot inbox did not apply the tap")
            return ms

        xs = interleave({"listening": listening, "one_shot": one_shot}, rounds, warmup)
        j.close()
    ratio = [b / a for a, b in zip(xs["listening"], xs["one_shot"], strict=True)]
    res.add("7 tap", "tap → applied, `opskit inbox --wait` listening (Unfreeze, Telegram stand-in)",
            Stats.of(xs["listening"]), "ms", note="long-poll answers at once")
    res.add("7 tap", "tap, then one `opskit inbox` run (whole command)", Stats.of(xs["one_shot"]), "ms",
            note="under cron: + the wait for the next minute")
    res.add("7 tap", "one-shot / listening, paired per round", Stats.of(ratio), "×")
    return res


if __name__ == "__main__":
    from report import render_table

    print(render_table(run().rows))
