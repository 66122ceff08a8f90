"""Any Apprise URL, when the optional `apprise` package is installed (opskit[apprise]).

Apprise reports only success or failure, so a failure is treated as transient; a missing
package or a URL Apprise does not understand is permanent.
"""

from __future__ import annotations

import logging

from opskit.base.config import ChannelSettings
from opskit.notify.base import Message, Outcome


def deliver(ch: ChannelSettings, msg: Message, timeout: float) -> Outcome:
    try:
        import apprise  # optional extra, and slow to import
    except ImportError:
        return Outcome.permanent("the apprise channel needs the apprise package: "
                                 "pip install 'opskit[apprise]'")
    # Apprise logs the URLs it posts to; keep its log out of our stderr.
    logging.getLogger("apprise").addHandler(logging.NullHandler())
    logging.getLogger("apprise").propagate = False
    assert ch.url is not None
    kinds = {"info": apprise.NotifyType.INFO, "warning": apprise.NotifyType.WARNING,
             "error": apprise.NotifyType.FAILURE, "critical": apprise.NotifyType.FAILURE}
    try:
        a = apprise.Apprise()
        if not a.add(ch.url.reveal()):
            return Outcome.permanent("apprise does not understand the channel's URL")
        ok = a.notify(body=msg.text, title=f"{msg.emoji} {msg.heading}",
                      notify_type=kinds.get(msg.level, apprise.NotifyType.INFO))
    except Exception as e:  # a third-party library: anything it raises is a failed attempt
        return Outcome.transient(f"apprise failed ({type(e).__name__})")
    return Outcome.delivered() if ok else Outcome.transient("apprise could not deliver")
