#!/usr/bin/env bash
# Mutation score of opskit's rule modules, each against only its own area's tests.
#
#   bench/mutation.sh                 # every module below, one after the other
#   bench/mutation.sh lockdown revert # some of them
#   MUTATION_BUDGET=900 bench/mutation.sh outbox   # seconds per module (default 1200)
#   MUTATION_RESUME=1 bench/mutation.sh outbox     # go on after a run that hit its budget
#   MUTATION_CHILDREN=2 bench/mutation.sh verify   # mutants at once (default 1: a shared machine)
#
# Needs `./install.sh --dev` and `.venv/bin/pip install mutmut==3.8.1` (not a dev dependency:
# the run is minutes per module, outside CI). Each module runs in a copy of the tree under
# $MUTATION_DIR (default /tmp/opskit-mutation), so the worktree is never mutated; one mutant at
# a time (--max-children 1): the machine is shared. Results: $MUTATION_DIR/<module>/results.txt
# (`mutmut results`: every mutant that was not killed) and summary.txt (the counts).
#
# Known limit of mutmut's approach (trampolines in a copied tree, in-process): code that only
# runs in a subprocess (`python -m opskit`, an installed git hook) runs the unmutated source,
# so only in-process tests can kill a mutant. tests/MUTATION.md records the figures.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${MUTATION_DIR:-/tmp/opskit-mutation}
BUDGET=${MUTATION_BUDGET:-1200}
CHILDREN=${MUTATION_CHILDREN:-1}
PY="$ROOT/.venv/bin/python"
MUTMUT="$ROOT/.venv/bin/mutmut"

# module name | source file | the tests of its area [| a pytest -k expression]
# The -k expression leaves out tests that need the real system install (tests/support/server.py
# runs ./install.sh --system, which the copy has not): they run an installed, unmutated opskit in
# its own processes, so they can kill no mutant and would only fail the clean run.
MODULES=(
  "lockdown|src/opskit/guard/lockdown.py|tests/test_lockdown.py"
  "revert|src/opskit/deploy/revert.py|tests/test_revert.py"
  "outbox|src/opskit/storage/outbox.py|tests/test_outbox.py tests/test_notify.py"
  "verify|src/opskit/guard/verify.py|tests/test_verify.py"
  "health|src/opskit/deploy/health.py|tests/test_health.py"
  "drift|src/opskit/guard/drift.py|tests/test_drift.py"
  "routing|src/opskit/chain/routing.py|tests/test_chain.py tests/test_pipeline.py"
  # the security modules: who may decide, what root may open, which account runs what
  # (base/roles.py is left out: its tests need the real system install with real accounts,
  # which mutmut's copy of the tree cannot run; tests/MUTATION.md lists its hand-made mutants)
  # safety against its in-process tests only: every test that loads a config reaches it, and
  # test_foundation's crash-path test needs the real CLI's process, which the copy has not
  "safety|src/opskit/base/safety.py|tests/test_root_refusals.py"
  "placement|src/opskit/base/placement.py|tests/test_placement.py tests/test_recovery_rules.py"
  "statefs|src/opskit/base/statefs.py|tests/test_state_links.py tests/test_sqlite_swap.py tests/test_statefs.py|not planted_lock and not forged_running_row and not planted_journal_wal and not never_follows_the_log and not cron_d_lines and not inbox_lock_is_never"
  "decisions|src/opskit/notify/decisions.py|tests/test_decisions_rules.py tests/test_inbox.py"
  "inbox|src/opskit/chain/inbox.py|tests/test_inbox_answers.py tests/test_inbox.py tests/test_decisions_rules.py"
  "accounts|src/opskit/base/accounts.py|tests/test_trust_rules.py tests/test_hooks_as_root.py"
  "sandbox|src/opskit/base/bwrap.py|tests/test_sandbox_rules.py tests/test_bwrap.py tests/test_sandbox_tools.py tests/test_trust_rules.py"
  "recover|src/opskit/storage/recover.py|tests/test_journal_recover.py tests/test_recovery_rules.py"
  "fallback|src/opskit/storage/fallback.py|tests/test_journal_faults.py tests/test_recovery_rules.py"
)

[ -x "$MUTMUT" ] || { echo "mutation.sh: $MUTMUT missing; run: .venv/bin/pip install mutmut==3.8.1" >&2; exit 2; }

wanted=("$@")
for entry in "${MODULES[@]}"; do
  IFS='|' read -r name src tests select <<<"$entry"
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " == *" $name "* ]]; then
    continue
  fi
  work="$OUT/$name"
  if [ -n "${MUTATION_RESUME:-}" ] && [ -d "$work/mutants" ]; then
    # go on where a run that hit its budget stopped: mutmut keeps each mutant's result
    echo "   (resuming $work)"
  else
    rm -rf "$work"
    mkdir -p "$work"
  # -L: the package's template folders are links to hooks/ and cron/, which mutmut skips
  cp -rL "$ROOT/src" "$work/"
  cp -r "$ROOT/tests" "$work/"
  # pyproject.toml without the project table keeps pytest's options; mutmut reads setup.cfg.
  sed -n '/^\[tool.pytest.ini_options\]/,/^$/p' "$ROOT/pyproject.toml" >"$work/pyproject.toml"
  {
    echo "[mutmut]"
    echo "source_paths = src"
    echo "only_mutate = $src"
    echo "pytest_add_cli_args_test_selection ="
    for t in $tests; do echo "    $t"; done
    echo "pytest_add_cli_args ="
    echo "    -p"
    echo "    no:cacheprovider"
    if [ -n "$select" ]; then echo "    -k"; echo "    $select"; fi
  } >"$work/setup.cfg"
  fi
  echo "== $name: $src against $tests (budget ${BUDGET}s)"
  start=$(date +%s)
  # Calls made only in a test's subprocesses (a git hook, `opskit push-run`) are not seen by
  # mutmut's coverage pass and run the unmutated tree: their mutants show as "no tests".
  # (Pointing PYTHONPATH at mutants/src breaks that coverage pass: no mutant is run at all.)
  # OPSKIT_TESTS_IN_PROCESS=1 makes the tests' `opskit` fixture run the CLI in the test process
  # (tests/conftest.py), where mutmut can switch the mutant on.
  (cd "$work" && OPSKIT_TESTS_IN_PROCESS=1 timeout "$BUDGET" "$MUTMUT" run --max-children "$CHILDREN" \
      >"$work/run.log" 2>&1) || \
    echo "   (stopped after ${BUDGET}s or failed: see $work/run.log; what ran is counted)"
  (cd "$work" && "$MUTMUT" results --all true >"$work/all.txt" 2>&1 || true)
  (cd "$work" && "$MUTMUT" results >"$work/results.txt" 2>&1 || true)
  "$PY" - "$work/all.txt" "$name" "$(( $(date +%s) - start ))" <<'PY' | tee "$work/summary.txt"
import collections, sys
path, name, took = sys.argv[1:4]
counts = collections.Counter()
for line in open(path, encoding="utf-8", errors="replace"):
    key, sep, status = line.strip().rpartition(": ")
    if sep and "__mutmut_" in key:
        counts[status.strip()] += 1
# The score is over the mutants the area's tests reach in-process; "no tests" (reached only
# from a subprocess, or not at all) and "not checked" (the time budget ran out) are counted apart.
killed = counts["killed"] + counts["timeout"]
reached = killed + counts["survived"] + counts["suspicious"]
score = f"{100 * killed / reached:.1f}%" if reached else "n/a"
print(f"{name}: {killed}/{reached} killed ({score}) of the mutants its tests reach; "
      + ", ".join(f"{s} {n}" for s, n in sorted(counts.items())) + f"; {took}s")
PY
done
