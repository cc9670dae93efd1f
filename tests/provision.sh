#!/usr/bin/env bash
# Install what the test suite needs that this machine lacks: Chromium (the browser tests),
# PostgreSQL's server binaries (the suite starts a private server when none answers),
# sqlite3 (deploy/backup.sh), nginx and Caddy (the proxy configurations in deploy/ are
# tested for real) and a font for Chromium to render the pages with.
#
# `make test`, `make test-fast` and `.ci/run` call it first. With everything present it only
# checks (well under a second). As root it runs `apt-get update` once and installs the
# missing Debian packages; without root it installs nothing and stops with one line naming
# the exact command to run. Package scripts are not allowed to start nginx, Caddy or
# PostgreSQL as services (a temporary policy-rc.d), and any nginx or Caddy daemon that a
# package still left listening on port 80 or 443 is stopped: the tests start their own.
#
#   tests/provision.sh           install what is missing (as root), else say what to run
#   tests/provision.sh --check   only report what is missing (exit 1 if anything is)
set -euo pipefail

check_only=0
[ "${1:-}" = "--check" ] && check_only=1

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
compgen -G "${ADVBIAS_PG_ROOT:-/usr/lib/postgresql}/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v caddy >/dev/null 2>&1 || need+=(caddy)
compgen -G "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf" >/dev/null || need+=(fonts-dejavu-core)

[ ${#need[@]} -eq 0 ] && exit 0

install_cmd="apt-get update && apt-get install -y --no-install-recommends ${need[*]}"
if [ "$check_only" = 1 ]; then
  echo "tests need: ${need[*]} (install: sudo sh -c '$install_cmd')" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "the tests need ${need[*]}: run  sudo sh -c '$install_cmd'  (or run make test as root)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "the tests need ${need[*]} and this machine has no apt-get: install them with its package manager" >&2
  exit 1
fi

# Package scripts must not start services (Debian's policy-rc.d convention; exit 101 = "not allowed").
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  made_policy=1
fi
trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT

export DEBIAN_FRONTEND=noninteractive
echo "installing for the tests: ${need[*]}" >&2
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null

# Where a package started its daemon anyway (systemd, no policy-rc.d honoured), stop it:
# ports 80 and 443 stay free, and no proxy from a package answers in place of the tests' own.
for daemon in nginx caddy; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active -q "$daemon" 2>/dev/null; then
    echo "stopping the $daemon service that its package started" >&2
    systemctl stop "$daemon" || true
    systemctl disable -q "$daemon" 2>/dev/null || true
  fi
  if command -v ss >/dev/null 2>&1; then  # started some other way: the listening processes, by pid
    pids=$(ss -Hltnp 'sport = :80 or sport = :443' 2>/dev/null | grep -o "\"$daemon\",pid=[0-9]*" | cut -d= -f2 | sort -u)
    if [ -n "$pids" ]; then
      echo "stopping the $daemon daemon that its package started (pid $(echo $pids))" >&2
      kill $pids 2>/dev/null || true
    fi
  fi
done

# Say what is still missing (a package that did not bring its command) and fail.
exec "$0" --check
