"""opskit keys add|list|remove: the push account's SSH keys, each able to git push and fetch only."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer

from opskit.base.errors import UsageError
from opskit.commands import _common

_USER_HELP = "The push account (default: the one account every service's repo belongs to)."


@contextlib.contextmanager
def _os_errors() -> Iterator[None]:
    """A full disk, a read-only home, a home the account cannot enter: one line, exit 2."""
    try:
        yield
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        raise UsageError(f"keys: {where}{e.strerror or e}; authorized_keys was not replaced (fix that, then run the command "
                         "again)") from None


def register(app: typer.Typer) -> None:
    keys_app = typer.Typer(help="SSH keys of the push account: each can git push and git fetch this host's "
                           "opskit repos, and nothing else (no shell, no forwarding, no pty).\n\n"
                           "Example: sudo opskit keys add alice ~alice/id_ed25519.pub && sudo opskit keys list",
                           no_args_is_help=True)
    app.add_typer(keys_app, name="keys")

    @keys_app.command("add")
    def add(
        name: str = typer.Argument(..., help="A name for the key (letters, digits, . _ -), e.g. alice-laptop."),
        pubkey: str = typer.Argument(..., metavar="PUBKEYFILE", help="The public key file (.pub); - reads stdin."),
        user: str = typer.Option(None, "--user", metavar="ACCOUNT", help=_USER_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Let a key git push and git fetch the account's opskit repos, and nothing else.

        Writes one line to the account's ~/.ssh/authorized_keys:
        restrict,command="… -m opskit.guard.sshshell …" TYPE KEY opskit:NAME. Lines added by hand
        are kept byte for byte. Adding the same key under the same name again changes nothing;
        the same key under another name, or a private key, is refused.

        Example: sudo opskit keys add ci-bot /tmp/ci-bot.pub --user git
        """
        from opskit.wiring import keys

        with _os_errors():
            result = keys.add(_common.settings(), name, pubkey, user)
        if as_json:
            _common.print_json(result.to_dict())
            return
        out = _common.console()
        for note in result.notes:
            out.print(f"note: {note}", markup=False, soft_wrap=True)
        verb = {"added": "added to", "unchanged": "already in", "rewritten": "rewritten in"}[result.action]
        out.print(f"key {name} ({result.fingerprint}) {verb} {result.path}: git push and fetch only",
                  markup=False, soft_wrap=True)

    @keys_app.command("list")
    def list_(
        user: str = typer.Option(None, "--user", metavar="ACCOUNT", help=_USER_HELP),
        as_json: bool = typer.Option(False, "--json", help="One JSON object a key."),
    ) -> None:
        """List the account's keys: name, type, fingerprint; keys added by hand are "not managed".

        "edited" means an opskit line that is no longer what opskit wrote (options changed, or
        opskit moved): opskit keys add NAME FILE rewrites it.

        Example: sudo opskit keys list --json
        """
        from opskit.base.text import shown
        from opskit.wiring import keys

        with _os_errors():
            account, path, rows = keys.list_keys(_common.settings(), user)
        if as_json:
            for r in rows:
                _common.print_json({"account": account, **r.to_dict()})
            return
        out = _common.console()
        if not rows:
            out.print(f"no keys in {path}", markup=False)
        for r in rows:
            label = r.name if r.name is not None else f"- {shown(r.comment)}".rstrip()
            out.print(f"{label:24} {shown(r.kind):20} {r.fingerprint:52} {r.state}", markup=False, soft_wrap=True)

    @keys_app.command("remove")
    def remove(
        name: str = typer.Argument(..., help="The key's name (opskit keys list)."),
        user: str = typer.Option(None, "--user", metavar="ACCOUNT", help=_USER_HELP),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Remove a key opskit added; its next push or fetch is refused. Other lines stay byte for byte.

        Example: sudo opskit keys remove alice-laptop
        """
        from opskit.wiring import keys

        with _os_errors():
            result = keys.remove(_common.settings(), name, user)
        if as_json:
            _common.print_json(result.to_dict())
            return
        _common.console().print(f"key {name} ({result.fingerprint}) removed from {result.path}",
                                markup=False, soft_wrap=True)
