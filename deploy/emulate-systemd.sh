#!/usr/bin/env bash
# Re-runs the README's "Under systemd" recipe as written, against deploy/posrelay.service,
# without systemd: the recipe's commands run in a scratch root ($ROOT stands for /), and
# `systemctl enable --now posrelay` starts the unit the way systemd would from its file:
# the LoadCredential= copies in a directory only the service user may read
# ($CREDENTIALS_DIRECTORY), the StateDirectory= owned by that user with its mode,
# LimitMEMLOCK=, and ExecStart= run as an unprivileged user (nobody, standing in for
# DynamicUser=) with no capabilities and no way to gain privileges. Then it checks that
# the relay serves, that the service user cannot read the original token file, and that
# SIGHUP (ExecReload=) and SIGTERM (KillSignal=) work.
#
#   bash deploy/emulate-systemd.sh [path/to/posrelay]     (default target/release/posrelay)
#
# Runs as root (it switches to nobody); everything it starts listens on 127.0.0.1 and is
# stopped by its own pid.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$(cd "$REPO" && realpath "${1:-target/release/posrelay}")"
[ -x "$BIN" ] || { echo "no posrelay binary at $BIN: build it first"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root: the service runs as nobody"; exit 1; }
SERVICE_UID="$(id -u nobody)"
SERVICE_GID="$(id -g nobody)"

ROOT="$(mktemp -d /tmp/posrelay-systemd.XXXXXX)"
chmod 0755 "$ROOT"
PID=""
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill -KILL "$PID" 2>/dev/null || true; fi
  rm -rf "$ROOT"
}
trap cleanup EXIT
mkdir -p "$ROOT/etc/systemd/system" "$ROOT/usr/local/bin" "$ROOT/var/lib" "$ROOT/run/credentials"
UNIT_FILE="$ROOT/etc/systemd/system/posrelay.service"
LOG="$ROOT/posrelay.log"
fail() { echo "emulate-systemd: $*"; [ -f "$LOG" ] && tail -n 30 "$LOG"; exit 1; }

# The recipe's paths, moved under $ROOT.
rooted() {
  sed -e "s#/etc/#$ROOT/etc/#g" -e "s#/usr/local/bin/#$ROOT/usr/local/bin/#g" \
      -e "s#/var/lib/#$ROOT/var/lib/#g"
}

# The unit's setting KEY (the last one wins, as in systemd); uncommented lines only.
unit() { sed -n "s/^$1=//p" "$UNIT_FILE" | tail -n 1; }

# `$EDITOR /etc/posrelay/posrelay.toml`: what an operator writes (ports 0: any free port).
EDITOR_SCRIPT="$ROOT/editor"
cat >"$EDITOR_SCRIPT" <<'EOF'
#!/bin/sh
cat >"$1" <<'TOML'
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shards = 2
TOML
EOF
chmod 0755 "$EDITOR_SCRIPT"
export EDITOR="$EDITOR_SCRIPT"

start_unit() {
  command -v systemd-analyze >/dev/null 2>&1 &&
    { systemd-analyze verify "$UNIT_FILE" 2>&1 | grep -v "posrelay: command not found\|is not executable" || true; }
  [ "$(unit DynamicUser)" = yes ] || fail "the unit no longer sets DynamicUser=yes"
  # LoadCredential=ID:PATH -> $CREDENTIALS_DIRECTORY/ID, readable by the service only.
  local creds="$ROOT/run/credentials/posrelay.service"
  install -d -m 0500 -o "$SERVICE_UID" -g "$SERVICE_GID" "$creds"
  while IFS= read -r line; do
    local id="${line%%:*}" src
    src="$(printf '%s' "${line#*:}" | rooted)"
    [ -r "$src" ] || fail "LoadCredential=$line: $src does not exist (systemd would refuse to start)"
    install -m 0400 -o "$SERVICE_UID" -g "$SERVICE_GID" "$src" "$creds/$id"
  done < <(sed -n 's/^LoadCredential=//p' "$UNIT_FILE")
  # StateDirectory=NAME -> /var/lib/NAME owned by the service, StateDirectoryMode=.
  local state="$ROOT/var/lib/$(unit StateDirectory)"
  install -d -m "$(unit StateDirectoryMode)" -o "$SERVICE_UID" -g "$SERVICE_GID" "$state"
  # ConfigurationDirectory=NAME -> /etc/NAME, root's (the recipe made it).
  [ -d "$ROOT/etc/$(unit ConfigurationDirectory)" ] || fail "no ConfigurationDirectory"
  local memlock; memlock="$(unit LimitMEMLOCK)"; [ "$memlock" = infinity ] && memlock=unlimited
  if ! prlimit --memlock="$memlock:$memlock" true 2>/dev/null; then
    # systemd may raise it; this root may not (no CAP_SYS_RESOURCE in a container):
    # the hard limit in force is the closest it can do.
    local hard; hard="$(ulimit -Hl)"
    [ "$hard" = unlimited ] || hard=$((hard * 1024))
    echo "emulate-systemd: LimitMEMLOCK=$memlock not permitted here; using the hard limit $hard"
    memlock="$hard"
  fi
  local exec_start
  exec_start="$(unit ExecStart | rooted | sed -e "s#\${CREDENTIALS_DIRECTORY}#$creds#g")"
  # shellcheck disable=SC2086 # ExecStart= is split on spaces, as systemd does here.
  prlimit --memlock="$memlock:$memlock" -- \
    setpriv --reuid="$SERVICE_UID" --regid="$SERVICE_GID" --clear-groups \
      --inh-caps=-all --bounding-set=-all --no-new-privs -- \
    env -i PATH=/usr/bin:/bin HOME=/ CREDENTIALS_DIRECTORY="$creds" RUST_LOG=info \
      $exec_start >"$LOG" 2>&1 &
  PID=$!
  for _ in $(seq 1 200); do
    grep -q '^admin listening on' "$LOG" && return 0
    kill -0 "$PID" 2>/dev/null || fail "the service exited during start"
    sleep 0.1
  done
  fail "the service did not start within 20 s"
}

systemctl() {
  case "$*" in
    daemon-reload) ;;
    "enable --now posrelay") start_unit ;;
    "reload posrelay") kill -HUP "$PID" ;;
    *) fail "the recipe runs 'systemctl $*', which this emulation does not know" ;;
  esac
}
journalctl() { tail -n 20 "$LOG"; }
# The recipe, from the README, as written (paths under $ROOT).
RECIPE="$(awk '/^### Under systemd/{u=1} u&&/^```sh/{c=1;next} c&&/^```/{exit} c' "$REPO/README.md")"
[ -n "$RECIPE" ] || fail "no sh block under '### Under systemd' in README.md"
RECIPE="$(printf '%s\n' "$RECIPE" | rooted | sed -e "s#target/release/posrelay#$BIN#g" \
  -e "s#deploy/posrelay.service#$REPO/deploy/posrelay.service#g")"
ADMIN_URL=""
# `posrelay admin` in the recipe talks to the emulated service's admin port.
posrelay() {
  if [ "${1:-}" = admin ]; then shift; "$ROOT/usr/local/bin/posrelay" admin --admin-url "$ADMIN_URL" "$@"
  else "$ROOT/usr/local/bin/posrelay" "$@"; fi
}
set_admin_url() { ADMIN_URL="$(sed -n 's#^admin listening on ##p' "$LOG" | head -n 1)"; }
printf '%s\n' "$RECIPE" | sed 's/^systemctl daemon-reload && systemctl enable --now posrelay$/&; set_admin_url/' >"$ROOT/recipe.sh"
echo "--- the README's recipe, rooted at $ROOT:"; cat "$ROOT/recipe.sh"; echo "---"
# shellcheck disable=SC1091
source "$ROOT/recipe.sh"

# What the recipe must have achieved.
[ -n "$PID" ] && kill -0 "$PID" || fail "the service is not running"
TOKEN_FILE="$ROOT/etc/posrelay/admin-token"
[ "$(stat -c %a "$TOKEN_FILE")" = 600 ] || fail "admin-token is not 0600"
if setpriv --reuid="$SERVICE_UID" --regid="$SERVICE_GID" --clear-groups cat "$TOKEN_FILE" >/dev/null 2>&1; then
  fail "the service user can read $TOKEN_FILE: the credential copy would be pointless"
fi
STORE="$ROOT/var/lib/posrelay/posrelay.redb"
[ "$(stat -c '%a %u' "$STORE")" = "600 $SERVICE_UID" ] || fail "store is $(stat -c '%a %u' "$STORE")"
[ "$(stat -c '%a' "$ROOT/var/lib/posrelay")" = 700 ] || fail "state directory is not 0700"
export POSRELAY_ADMIN_TOKEN; POSRELAY_ADMIN_TOKEN="$(cat "$TOKEN_FILE")"
posrelay admin create-store --domain acme --merchant m1 s1 >/dev/null
CREDS="$(posrelay admin --json create-client --domain acme --store s1)"
ID="$(printf '%s' "$CREDS" | sed -n 's/.*"client_id":"\([^"]*\)".*/\1/p')"
SECRET="$(printf '%s' "$CREDS" | sed -n 's/.*"client_secret":"\([^"]*\)".*/\1/p')"
RELAY="$(sed -n 's#^relay listening on ws://##p' "$LOG" | head -n 1)"
STATUS="$(curl -s -o /dev/null -w '%{http_code}' -u "$ID:$SECRET" -d grant_type=client_credentials "http://$RELAY/oauth2/v1/acme/token")"
[ "$STATUS" = 200 ] || fail "token request answered $STATUS"
# ExecReload=: SIGHUP, and the service goes on.
kill -HUP "$PID"
for _ in $(seq 1 50); do grep -q 'SIGHUP' "$LOG" && break; sleep 0.1; done
grep -q 'SIGHUP' "$LOG" || fail "SIGHUP was not handled"
posrelay admin list-devices --domain acme >/dev/null || fail "not serving after SIGHUP"
# KillSignal=SIGTERM: a drain, exit status 0.
kill -TERM "$PID"
STATUS=0; wait "$PID" || STATUS=$?
PID=""
[ "$STATUS" = 0 ] || fail "exit status $STATUS after SIGTERM"
grep -q '"posrelay ready"' "$LOG" || grep -q 'posrelay ready' "$LOG" || fail "no readiness log line"
echo "emulate-systemd: the README's systemd recipe works as written (service user uid $SERVICE_UID)"
