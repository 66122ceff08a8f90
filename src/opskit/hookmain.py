"""The entry point opskit's installed git hooks exec (not the Typer CLI).

    python -I -c 'from opskit.hookmain import main; raise SystemExit(main())' \
        HOOK --config PATH --service NAME --self HOOKPATH -- ARGS…

(`-c`, not `-m`: runpy alone costs ~5 ms of a hook's budget.) Hooks are fast (start-up is their cost): this module imports `os` and `sys` at module level and
nothing else; each hook imports what its own path needs, and the worktree refusal path
imports only opskit.guard.lockdown (itself `os` only). `-I` keeps the hook's working directory
(the deployed worktree, which anyone with a shell there can write to) off sys.path and
ignores PYTHON* variables, so nothing in the worktree can replace opskit's code.

A hook that was installed before opskit (`HOOK.pre-opskit` beside us) runs first, with the
same stdin for the receive hooks; its refusal refuses, as it would alone (pre-commit's way of installing hooks).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing itself costs ~10 ms to import; the hook must not pay it
if TYPE_CHECKING:
    from collections.abc import Callable

HOOKS = ("pre-receive", "post-receive", "pre-commit", "pre-merge-commit")
CHAIN_SUFFIX = ".pre-opskit"
# A displaced hook that hangs must not hang every push and commit: after this it counts as a
# refusal (pre-receive, pre-commit) or a failure (post-receive), like any non-zero exit.
CHAINED_TIMEOUT = 600.0


class _Args:
    def __init__(self) -> None:
        self.hook = ""
        self.config = ""
        self.service = ""
        self.self_path = ""
        self.state_dir = ""
        self.rest: list[str] = []


def parse(argv: list[str]) -> _Args:
    """Hand-rolled on purpose: argparse costs more to import than this hook's whole budget."""
    a = _Args()
    if not argv or argv[0] not in HOOKS:
        raise ValueError(f"first argument must be one of {', '.join(HOOKS)}")
    a.hook = argv[0]
    i = 1
    while i < len(argv):
        opt = argv[i]
        if opt == "--":
            a.rest = argv[i + 1:]
            break
        if opt not in ("--config", "--service", "--self", "--state-dir") or i + 1 >= len(argv):
            raise ValueError(f"unexpected argument {opt!r}")
        setattr(a, {"--self": "self_path", "--state-dir": "state_dir"}.get(opt, opt[2:]), argv[i + 1])
        i += 2
    if not a.config or not a.service:
        raise ValueError("--config and --service are required (reinstall: opskit hooks install)")
    return a


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        _err(f"opskit hook: {e}")
        return 2
    if args.state_dir:
        # Written in at install: the git account's hooks use the journal root and the operators
        # use, not one under their own home. A state_dir in the config still wins, as for everyone.
        os.environ["OPSKIT_STATE_DIR"] = args.state_dir
    if args.hook in ("pre-commit", "pre-merge-commit"):
        return worktree_hook(args)
    stdin = sys.stdin.buffer.read()  # read completely before anything else
    if args.hook == "pre-receive":
        return pre_receive(args, stdin)
    return post_receive(args, stdin)


# --- output -------------------------------------------------------------------------------

def _out(line: str) -> None:
    """One line to the pusher: a receive hook's stdout reaches them as `remote: …`. Every
    line they see passes here (the streamed log of the push's run too), so here it is escaped:
    a commit subject, a branch name or a test's output is shown, never obeyed by their terminal."""
    sys.stdout.buffer.write(_shown(line).encode("utf-8", "surrogateescape") + b"\n")
    sys.stdout.flush()


def _err(line: str) -> None:
    sys.stderr.buffer.write(_shown(line).encode("utf-8", "surrogateescape") + b"\n")
    sys.stderr.flush()


def _shown(line: str) -> str:
    # here, not at the top: this module imports os and sys only (base/text.py is stdlib-free)
    from opskit.base.text import shown

    return shown(line)


def _describe(e: BaseException, config_path: str = "") -> str:
    from opskit.base.errors import OpsError, redact

    text = str(e) if isinstance(e, OpsError) else f"{type(e).__name__}: {e}"
    if type(e).__module__ == "sqlite3" and config_path:
        # A full disk or a corrupt journal.db: name it, with the path and the fix.
        try:
            from pathlib import Path

            from opskit.base import config
            from opskit.storage.fallback import journal_problem

            text = journal_problem(e, config.load_file(Path(config_path)).state_dir) or text
        except Exception:
            pass
    return redact(text)[:400]


# --- chaining -----------------------------------------------------------------------------

def run_chained(args: _Args, stdin: bytes | None, write: Callable[[str], None]) -> int:
    """Run the hook opskit displaced, if any; its exit code (0 when there is none).
    Git skips a hook that is not executable, so do we."""
    if not args.self_path:
        return 0
    chained = args.self_path + CHAIN_SUFFIX
    if not (os.path.isfile(chained) and os.access(chained, os.X_OK)):
        return 0
    from opskit.base import proc

    # The hook's own environment on purpose: a chained pre-receive needs GIT_QUARANTINE_PATH.
    r = proc.run([chained, *args.rest], env=os.environ, input=stdin, timeout=CHAINED_TIMEOUT, stream=write)
    if r.timed_out:
        write(f"opskit: {os.path.basename(chained)} did not finish within {CHAINED_TIMEOUT:.0f}s; stopped it")
        return 1
    return r.returncode


# --- pre-receive --------------------------------------------------------------------------

def pre_receive(args: _Args, stdin: bytes) -> int:
    """Fail closed: when the protections cannot be evaluated, the push is refused."""
    try:
        from pathlib import Path

        from opskit.base import config
        from opskit.git.repo import Git, read_hook_lines
        from opskit.guard import lockdown
        from opskit.storage.journal import Journal

        updates = list(read_hook_lines(stdin.decode("utf-8", "surrogateescape")))
        rc = run_chained(args, stdin, _out)
        settings = config.load_file(Path(args.config))
        service = settings.service(args.service)
        journal = Journal(settings.state_dir, fleet=settings.fleet)
        if rc != 0:
            _out(f"opskit: refused by the hook that was here before opskit "
                 f"({os.path.basename(args.self_path)}{CHAIN_SUFFIX}, exit {rc}).")
            for old, new, ref in updates:
                journal.append("lockdown.blocked", service.name,
                               {"ref": lockdown.show(ref), "old": old, "new": new,
                                "rule": "chained-hook",
                                "reason": f"{args.hook}{CHAIN_SUFFIX} exited {rc}",
                                "hook": args.hook},
                               sha=None if new == lockdown.ZERO else new)
            return rc
        # cwd is the bare repo; keep git's environment so the quarantined objects are visible.
        git = Git(os.getcwd(), env=os.environ)
        facts = lockdown.GitFacts(git, journal, service.name)
        return lockdown.pre_receive(service, updates, facts, journal, _out)
    except Exception as e:
        _out(f"opskit: refused: the push could not be checked ({_describe(e, args.config)}).")
        _out(f"  Fix the problem, or remove the hooks: opskit hooks uninstall {args.service}")
        return 1


# --- post-receive -------------------------------------------------------------------------

def post_receive(args: _Args, stdin: bytes) -> int:
    """The push has landed; nothing here can undo it. So errors are said plainly to the
    pusher and the hook exits 0: never hidden, never journaled as something they are not.

    The push has landed when this runs, so the pusher's Ctrl-C or hang-up must not stop it
    before it has started the pipeline (detached, chain/routing.py): a bad commit would stay
    on the branch with nothing watching it. After that, leaving only stops the streaming."""
    import signal

    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    rc = 0
    try:
        rc = run_chained(args, stdin, _out)
    except Exception as e:
        _out(f"opskit: the hook that was here before opskit could not run ({_describe(e)}).")
        rc = 1
    try:
        from pathlib import Path

        from opskit.git.repo import read_hook_lines

        updates = list(read_hook_lines(stdin.decode("utf-8", "surrogateescape")))
        # Here, not at the top: the other hooks never pay for the deploy machinery.
        from opskit.chain import routing
    except Exception as e:
        _out(f"opskit: the push landed but the pipeline could not be loaded ({_describe(e)}); "
             f"nothing was tested or deployed. Deploy by hand: opskit deploy {args.service}")
        return 0
    try:
        result = routing.on_post_receive(Path(args.config), args.service, updates, _out)
    except Exception as e:
        _out(f"opskit: the push landed but the pipeline failed ({_describe(e, args.config)}); "
             f"see: opskit events --service {args.service}")
        return 0
    return rc or int(result or 0)


# --- pre-commit / pre-merge-commit in the deployed worktree --------------------------------

def worktree_hook(args: _Args) -> int:
    from opskit.guard import lockdown

    try:
        rc = run_chained(args, None, _err)
    except Exception as e:
        _err(f"opskit: the hook that was here before opskit could not run ({_describe(e)}).")
        rc = 1
    if rc != 0:
        return rc
    decision = lockdown.check_commit(args.hook, args.service, os.environ)
    if not decision.allowed:
        for line in decision.lines:
            _err(line)
        cwd = os.getcwd()
        _in_background(lockdown.record_blocked_commit, args.config, args.service, args.hook,
                       cwd, lockdown.current_ref(cwd))
        return 1
    try:
        lockdown.break_glass(args.config, args.service, args.hook, decision.reason, os.getcwd(), _err)
    except Exception as e:
        _err(f"opskit: warning: break glass allowed but NOT journaled ({_describe(e)}); "
             "tell the team yourself.")
    return 0


def _in_background(fn: Callable[..., object], *fargs: str | None) -> None:
    """Run fn in a detached child so the committer gets the refusal at once: loading the
    config and opening the journal costs more than the hook's whole 40 ms budget. The
    child lets go of the terminal and of git's pipes before it does anything."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:
        return
    if pid:
        return
    try:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        fn(*fargs)
    except BaseException:
        pass
    finally:
        os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
