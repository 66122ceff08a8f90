#!/usr/bin/env bash
# Turn a fresh Debian machine with Python 3.11+ and git into a working `opskit`.
#   ./install.sh           opskit in ./.venv (and a link in ~/.local/bin), with git and bubblewrap
#   ./install.sh --dev     the same plus the test dependencies and the Debian packages the
#                          tests need (cron, openssh-server, sudo, bubblewrap,
#                          postgresql)
#   sudo ./install.sh --system
#                          a server install: /opt/opskit (a virtualenv on the system's Python,
#                          opskit installed as a package: the clone can be deleted after),
#                          /usr/local/bin/opskit, group opskit, /etc/opskit (root:opskit 0750,
#                          an example opskit.toml only if none), /var/lib/opskit (root:opskit 2770)
#                          and the Debian packages opskit needs.
# Safe to run again: an existing venv is reused, packages are only added, existing config is kept.
# --system's places can be moved (tests do): OPSKIT_PREFIX, OPSKIT_BIN, OPSKIT_ETC, OPSKIT_STATE,
# OPSKIT_GROUP; PYTHON= chooses the interpreter (default /usr/bin/python3 for --system).
set -euo pipefail
cd "$(dirname "$0")"

mode=user
for arg in "$@"; do
    case "$arg" in
        --dev) mode=dev ;;
        --system) mode=system ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $arg (use --dev, --system or nothing)" >&2; exit 2 ;;
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
# The Debian packages whose commands are missing: "command package" pairs.
missing_packages() {
    local need=() cmd pkg
    while [ $# -gt 0 ]; do
        cmd=$1 pkg=$2; shift 2
        command -v "$cmd" >/dev/null 2>&1 || [ -x "$cmd" ] || need+=("$pkg")
    done
    [ ${#need[@]} -eq 0 ] || printf '%s\n' "${need[@]}"
}

if [ "$mode" = system ]; then
    [ "$(id -u)" -eq 0 ] || { say "--system needs root: sudo ./install.sh --system"; exit 2; }
    py="${PYTHON:-/usr/bin/python3}"
else
    py="${PYTHON:-python3}"
fi
command -v "$py" >/dev/null 2>&1 || { say "$py not found; install Python 3.11 or newer (or set PYTHON=…)"; exit 2; }
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
    say "$("$py" --version 2>&1) is too old; opskit needs Python 3.11 or newer (set PYTHON=…)"; exit 2; }
command -v git >/dev/null 2>&1 || apt_install git
# The chain runs pushed code (test, review) under bubblewrap; without it those steps fail closed.
command -v bwrap >/dev/null 2>&1 || apt_install bubblewrap

if [ "$mode" = dev ]; then
    mapfile -t need < <(missing_packages crontab cron /usr/sbin/sshd openssh-server sudo sudo bwrap bubblewrap)
    # The fleet tests start a real PostgreSQL server (initdb and pg_ctl of Debian's package).
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
    [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
fi

if [ "$mode" != system ]; then
    if [ ! -x .venv/bin/python ]; then
        say "creating virtualenv .venv"
        if ! "$py" -m venv .venv 2>/dev/null; then
            rm -rf .venv
            apt_install python3-venv
            "$py" -m venv .venv
        fi
    fi
    extras=""
    [ "$mode" = dev ] && extras="[dev]"
    say "installing opskit${extras} into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}"
    mkdir -p "$HOME/.local/bin"
    ln -sfn "$PWD/.venv/bin/opskit" "$HOME/.local/bin/opskit"
    say "done: $PWD/.venv/bin/opskit (linked from ~/.local/bin/opskit)"
    exit 0
fi

# --- the server install -----------------------------------------------------------------------
prefix="${OPSKIT_PREFIX:-/opt/opskit}"
bindir="${OPSKIT_BIN:-/usr/local/bin}"
etc="${OPSKIT_ETC:-/etc/opskit}"
state="${OPSKIT_STATE:-/var/lib/opskit}"
group="${OPSKIT_GROUP:-opskit}"
umask 022  # everything under the prefix must be readable by the git account and operators

mapfile -t need < <(missing_packages crontab cron /usr/sbin/sshd openssh-server sudo sudo \
    visudo sudo setpriv util-linux bwrap bubblewrap)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

# The hooks run as the git account with this interpreter: one under root's home (pyenv) would
# start for root only.
if command -v setpriv >/dev/null 2>&1 && ! setpriv --reuid=nobody --regid=nogroup --clear-groups \
        "$py" -c '' 2>/dev/null; then
    say "$py cannot be run by other accounts (is it under a private home?); set PYTHON=/usr/bin/python3"
    exit 2
fi

if [ ! -x "$prefix/bin/python" ]; then
    say "creating virtualenv $prefix on $("$py" --version 2>&1)"
    if ! "$py" -m venv "$prefix" 2>/dev/null; then
        rm -rf "$prefix"
        apt_install python3-venv
        "$py" -m venv "$prefix"
    fi
else
    say "reusing virtualenv $prefix"
fi
say "installing opskit from $PWD into $prefix (a package, not a link to this clone)"
"$prefix/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade .
rm -rf build  # pip's in-tree build leaves it behind

mkdir -p "$bindir"
if [ "$(readlink "$bindir/opskit" 2>/dev/null || true)" != "$prefix/bin/opskit" ]; then
    ln -sfn "$prefix/bin/opskit" "$bindir/opskit"
    say "linked $bindir/opskit -> $prefix/bin/opskit"
fi

if getent group "$group" >/dev/null; then
    say "group $group exists"
else
    groupadd --system "$group"
    say "created group $group"
fi

install -d -o root -g "$group" -m 0750 "$etc"
chown root:"$group" "$etc" && chmod 0750 "$etc"
if [ -e "$etc/opskit.toml" ]; then
    say "kept $etc/opskit.toml"
else
    tmp=$(mktemp "$etc/.opskit.toml.XXXXXX")
    cat >"$tmp" <<TOML
# opskit's configuration on this host. Secrets go in $etc/.env (root:$group 0640), as NAME=value,
# and are named here as \${NAME}. Add a service with:
#   sudo opskit add NAME --worktree DIR --deploy CMD --health-url URL
[opskit]
# One journal for every account on this host: root, the git account's hooks, the operators.
state_dir = "$state"
TOML
    chown root:"$group" "$tmp"
    chmod 0640 "$tmp"
    mv "$tmp" "$etc/opskit.toml"
    say "wrote an example $etc/opskit.toml"
fi

install -d -o root -g "$group" -m 2770 "$state"
chown root:"$group" "$state" && chmod 2770 "$state"
say "state dir $state is root:$group 2770 (the group writes it; new files keep the group)"
# The decision buttons' key is root's alone (docs/ARCHITECTURE.md, who may do what: whoever reads
# it can approve): made here, 0600 root:root, by the code that uses it; a group-readable one from
# before is replaced.
"$prefix/bin/python" -c 'import sys; from opskit.notify.decisions import secret; secret(sys.argv[1])' "$state"
say "decision key $state/decision.key is root:root 0600 (root's cron signs and applies taps)"

say "done: opskit $("$prefix/bin/python" -c 'import importlib.metadata as m; print(m.version("opskit"))') in $prefix"
cat <<NEXT
Next:
  sudo usermod -aG $group git          # the account developers push to (and each operator)
  sudo opskit add NAME --worktree DIR --deploy CMD --health-url URL
  sudo opskit cron install --system   # writes /etc/cron.d/opskit
  opskit status                        # from any account in group $group
NEXT
