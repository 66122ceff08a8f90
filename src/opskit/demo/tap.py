"""The demo's last act: a change that asks for a human is approved with one tap on the local
Telegram stand-in, and the morning after is one command, `opskit incident last`.

The tap is the app's: a callback_query carrying the Approve button's own callback_data and
the on-call person's user id, read by a real `opskit inbox` run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opskit.storage.journal import Journal

ASK = "feature/docs-ask-human"  # ci/review.sh exits 3 (ask a human) for *-ask-human branches
ON_CALL = 100200300
ON_CALL_NAME = "oncall"
BOT_TOKEN_ENV = "OPSKIT_DEMO_TELEGRAM_TOKEN"


def telegram_toml(api_url: str) -> str:
    return f"""
[notify.phone]
type = "telegram"
token = "${{{BOT_TOKEN_ENV}}}"   # from @BotFather; in .env, never printed
chat_id = "-100555"
allowed_users = [{ON_CALL}]          # whose taps count
api_url = "{api_url}"   # the local Bot API stand-in (default: the public Bot API)
retry_for = 5
timeout = 5
"""


def run(sb: Any, out: Any, result: Any, *, fact: Callable[..., Any], service: str, branch: str) -> None:
    """sb, out, result: the demo's Sandbox, narrator and DemoResult; fact: its _fact."""
    _fact = fact
    repos, bot = sb.repos, sb.bot
    assert repos is not None and bot is not None
    out.step("7. A change that asks for a human, approved with one tap on Telegram")
    dev = repos.git(repos.dev)
    dev.run("fetch", "-q", "origin")
    dev.run("checkout", "-q", "-B", ASK, f"origin/{branch}")
    head = repos.commit({"README.md": "primerouter: routes prime traffic to its channels\n\nSee docs/.\n"},
                        "docs: say where the docs are")
    out.info(f"$ git push origin {ASK}   (ci/review.sh exits 3: a human decides)")
    push = sb.push(ASK, stream=lambda line: out.output(line.rstrip()))
    asks = [m for m in bot.telegram.messages if m.buttons()]
    if not push.ok or not asks:
        _fact(out, result, "approved_by_tap", False, f"push {push.describe()}; Telegram messages with buttons: "
                                                     f"{len(asks)}")
        return
    msg = asks[-1]
    out.message(f"Telegram (buttons: {', '.join(b['text'] for b in msg.buttons())})", msg.text)
    out.info(f"tap: Approve, by user {ON_CALL} (@{ON_CALL_NAME}), as the Telegram app sends it")
    bot.telegram.tap(msg.message_id, "Approve", user_id=ON_CALL, username=ON_CALL_NAME)
    out.info("$ opskit inbox")
    r = sb.opskit("inbox", stream=out.output)
    bare = repos.git(repos.bare)
    tip = bare.branch_tip(branch) or ""
    j = Journal(sb.state_dir)
    try:
        human = [e for e in j.query(service=service, type_prefix="review.pass") if e.data.get("human")
                 and e.sha == head]
    finally:
        j.close()
    who = f"telegram:{ON_CALL} @{ON_CALL_NAME}"
    merged = bool(tip) and bare.parents(tip)[-1:] == [head]
    live = repos.git(repos.worktree).head() == tip
    edited = f"approved by {who}: deployed" in msg.text and not msg.buttons()
    ok = r.ok and merged and live and bool(human) and human[0].data.get("decided_by") == who and edited
    _fact(out, result, "approved_by_tap", ok,
          f"one tap, one `opskit inbox`: {tip[:10]} merged and deployed, review.pass human, decided_by {who}; "
          "the message now says who decided" if ok else
          f"inbox {r.describe()}; merged {merged}, live {live}, human review.pass {bool(human)}, edited {edited}")
    out.info(f"$ git checkout {branch}")
    dev.run("checkout", "-q", "-B", branch, f"origin/{branch}")

    out.step("8. The morning after: opskit incident last")
    out.info(f"$ opskit incident last --service {service}")
    lines: list[str] = []

    def show(line: str) -> None:
        lines.append(line)
        out.output(line)

    r = sb.opskit("incident", "last", "--service", service, stream=show)
    text = "\n".join(lines)
    story = r.ok and "rolled back" in text and "downtime:" in text and "unknown" not in text.split("downtime:")[1]
    _fact(out, result, "incident_story", story,
          "the revert told step by step, with detection, restore and downtime from the gate's probes" if story
          else f"`opskit incident last` {r.describe()}: {text[-300:]}")
