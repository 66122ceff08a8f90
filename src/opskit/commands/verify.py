"""opskit verify-push: prove a push landed."""

from __future__ import annotations

import sys

import typer

from opskit.commands import _common


def register(app: typer.Typer) -> None:
    @app.command("verify-push")
    def verify_push(
        cmd: list[str] = typer.Argument(None, metavar="[-- CMD ...]",
                                        help="Push command to wrap; its output passes through."),
        repo: str = typer.Option(".", "--repo", metavar="DIR", help="The local checkout."),
        remote: str = typer.Option(None, "--remote", metavar="R",
                                   help="Remote name, path or URL (default: the branch's remote, else origin)."),
        branch: str = typer.Option(None, "--branch", metavar="B", help="Remote branch (default: current branch)."),
        expect: str = typer.Option(None, "--expect", metavar="SHA",
                                   help="Commit that must be the remote tip (default: local B after CMD)."),
        contains: bool = typer.Option(False, "--contains", help="Accept a remote tip that has SHA as an ancestor."),
        wait: float = typer.Option(0.0, "--wait", metavar="S", help="Poll up to S seconds for a lagging remote."),
        timeout: float = typer.Option(30.0, "--timeout", metavar="S", help="Bound on each read of the remote."),
        allow_noop: bool = typer.Option(False, "--allow-noop",
                                        help="Exit 0 when the expected commit was already the remote tip."),
        as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
    ) -> None:
        """Prove that a push landed: the remote branch tip (asked of the remote itself) is the
        expected commit and it moved. Outcomes: landed, unchanged, mismatch, rejected,
        branch-missing, unreachable (exit 1), up-to-date (exit 0 with --allow-noop).

        Example: opskit verify-push --remote origin -- git push origin master
        """
        _common.seconds("--wait", wait)
        _common.seconds("--timeout", timeout, positive=True)
        from opskit.guard.verify import verify_push as core

        def passthrough(line: str) -> None:
            # With --json, stdout carries only the JSON object.
            stream = sys.stderr if as_json else sys.stdout
            stream.write(line + "\n")
            stream.flush()

        res = core(_common.settings(), _common.journal(), repo_dir=repo, remote=remote, branch=branch,
                   expect=expect, contains=contains, wait=wait, timeout=timeout, cmd=cmd or None,
                   allow_noop=allow_noop, output=passthrough)
        if as_json:
            _common.print_json(res.to_dict())
        else:
            out = _common.console()
            out.print(f"{res.outcome}: {res.reason}", markup=False, highlight=False, soft_wrap=True)
            for note in res.notes:
                out.print(f"  note: {note}", markup=False, highlight=False, soft_wrap=True)
            if res.outcome == "rejected" and res.cmd_tail:
                for line in res.cmd_tail[-5:]:
                    out.print(f"  | {line}", markup=False, highlight=False, soft_wrap=True)
        _common.exit_with(0 if res.ok else 1)
