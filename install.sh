#!/usr/bin/env bash
# Turn a fresh Debian machine with Python 3.11+ and git into a working `opskit`.
#   ./install.sh         opskit in ./.venv (and a link in ~/.local/bin), with git and bubblewrap
#   ./install.sh --dev   the same plus the test dependencies and the Debian packages the
#                        tests need (cron, for the real `crontab` binary)
# Safe to run twice: an existing venv is reused and packages are only added.
set -euo pipefail
cd "$(dirname "$0")"

dev=0
for arg in "$@"; do
    case "$arg" in
        --dev) dev=1 ;;
        -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $arg (use --dev or nothing)" >&2; exit 2 ;;
    esac
done

say() { printf 'install.sh: %s\n' "$*"; }
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else say "need root for: $*"; return 1
    fi
}
apt_install() {
    say "installing Debian packages: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

py="${PYTHON:-python3}"
command -v "$py" >/dev/null 2>&1 || { say "python3 not found; install Python 3.11 or newer"; exit 2; }
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
    say "$("$py" --version 2>&1) is too old; opskit needs Python 3.11 or newer (set PYTHON=…)"; exit 2; }
command -v git >/dev/null 2>&1 || apt_install git
# The chain runs pushed code (test, review) under bubblewrap; without it those steps fail closed.
command -v bwrap >/dev/null 2>&1 || apt_install bubblewrap

if [ "$dev" -eq 1 ]; then
    need=()
    command -v crontab >/dev/null 2>&1 || need+=(cron)
    [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    say "creating virtualenv .venv"
    if ! "$py" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        apt_install python3-venv
        "$py" -m venv .venv
    fi
fi

extras=""
[ "$dev" -eq 1 ] && extras="[dev]"
say "installing opskit${extras} into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}"

mkdir -p "$HOME/.local/bin"
ln -sfn "$PWD/.venv/bin/opskit" "$HOME/.local/bin/opskit"
say "done: $PWD/.venv/bin/opskit (linked from ~/.local/bin/opskit)"
