"""opskit add NAME: put a running service's checkout under opskit; opskit sudoers NAME."""

from __future__ import annotations

from pathlib import Path

import typer

from opskit.commands import _common


def _keys_step(user: str) -> str:
    return f"sudo opskit keys add NAME NAME.pub --user {user}"


def register(app: typer.Typer) -> None:
    @app.command("add")
    def add(
        name: str = typer.Argument(..., help="The service's name in the config."),
        worktree: Path = typer.Option(..., "--worktree", help="The checkout the service runs from."),
        deploy: str = typer.Option(..., "--deploy", help="The command that (re)starts it, e.g. "
                                   "\"sudo systemctl restart NAME\"."),
        health_url: str = typer.Option(..., "--health-url", help="The URL that answers 2xx/3xx when healthy."),
        user: str = typer.Option(None, "--user", help="The account it runs as (default: the worktree's owner)."),
        repo: Path = typer.Option(None, "--repo", help="The bare repo developers push to (default /srv/git/NAME.git)."),
        branch: str = typer.Option(None, "--branch", help="The deploy branch (default: the worktree's branch)."),
        host: str = typer.Option(None, "--host", help="The host name developers reach over SSH (default: this host's)."),
        direct_push: bool = typer.Option(False, "--direct-push", help="Accept and deploy pushes to the branch "
                                         "itself (default: feature branches only)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be done; change nothing."),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Put a service that runs from a git checkout under opskit.

        Creates the bare repo from the checkout's history (owned by the service's account), points
        the checkout's origin at it, adds [service.NAME] to the config (every other line kept),
        installs the hooks and prints the `git remote add` line for developers. Running it again
        with the same values changes nothing.

        Example: sudo opskit add app --worktree /srv/app --deploy "sudo systemctl restart app" --health-url http://127.0.0.1:8000/health
        """
        from opskit.wiring.add import AddRequest
        from opskit.wiring.add import add as core

        settings = _common.settings()
        if settings.path is None:
            _common.usage("opskit add needs a config file to add the service to: pass --config "
                          "/etc/opskit/opskit.toml (install.sh --system writes one)")
        result = core(settings.path, AddRequest(name, worktree, deploy, health_url, user, repo, branch, host,
                                                 direct_push),
                      dry_run=dry_run)
        if as_json:
            _common.print_json({"name": result.name, "config": str(result.config), "user": result.user,
                                "repo": str(result.repo), "branch": result.branch, "dry_run": result.dry_run,
                                "changed": result.changed, "actions": result.actions,
                                "remote": result.remote_line, "keys_add": _keys_step(result.user)})
            return
        out = _common.console()
        for a in result.actions:
            out.print(("would: " if dry_run and not a.startswith("unchanged") else "") + a,
                      markup=False, soft_wrap=True)
        if not result.changed:
            out.print(f"{name} is already under opskit with these values; nothing changed", markup=False)
        out.print(f"developers add: {result.remote_line}", markup=False, soft_wrap=True)
        out.print(f"and each developer's or agent's key (git push and fetch only): {_keys_step(result.user)}",
                  markup=False, soft_wrap=True)

    @app.command("sudoers")
    def sudoers(name: str = typer.Argument(..., help="The service whose deploy command needs sudo.")) -> None:
        """Print a sudoers rule for a service's deploy command.

        The rule is checked with `visudo -cf` first. Install it with
        `opskit sudoers NAME | sudo tee /etc/sudoers.d/opskit-NAME && sudo chmod 0440 /etc/sudoers.d/opskit-NAME`.

        Example: opskit sudoers primerouter
        """
        import sys

        from opskit.wiring.sudoers import rule

        sys.stdout.write(rule(_common.settings().service(name)).text)
