#!/usr/bin/env bash
# MariaDB (Debian's mariadb-server) for the archive's development and tests: its own
# datadir under .cache/services/mariadb-data, 127.0.0.1 only, a fixed port, no system
# service. The app connects as user `oddstream` (password `oddstream`), which owns every
# database named `oddstream%` (tests make their own).
#
# Usage (called by scripts/services.sh; usable alone):
#   scripts/mariadb.sh up       start unless running; print ODDSTREAM_MYSQL=... on stdout
#   scripts/mariadb.sh env      print ODDSTREAM_MYSQL=... for the running server
#   scripts/mariadb.sh down     stop (TERM, wait, then KILL)
#   scripts/mariadb.sh kill     SIGKILL (simulate a crash)
#   scripts/mariadb.sh start    start again on the recorded port, keeping the data
#
# Environment: ODDSTREAM_MYSQL (already set: nothing is started, the value is echoed),
#   ODDSTREAM_MYSQL_PORT (13306), ODDSTREAM_MYSQL_TIMEOUT (60: readiness, s).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
SVC="$ROOT/.cache/services"
DATA="$SVC/mariadb-data"
SOCK="$SVC/mariadb.sock"
PIDF="$SVC/mariadb.pid"
PORTF="$SVC/mariadb.port"
LOG="$SVC/mariadb.log"
APP_USER=oddstream
APP_PASSWORD=oddstream
APP_DB=oddstream

log() { printf '[mariadb] %s\n' "$*" >&2; }
die() { printf '[mariadb] ERROR: %s\n' "$*" >&2; exit 1; }

port() {
    local p=""
    [ -s "$PORTF" ] && p="$(cat "$PORTF")"
    printf '%s\n' "${p:-${ODDSTREAM_MYSQL_PORT:-13306}}"
}

alive() {  # prints the pid of our server if it runs
    local pid cmdline
    [ -s "$PIDF" ] || return 1
    pid="$(cat "$PIDF")"
    kill -0 "$pid" 2>/dev/null || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    case $cmdline in *mariadbd*"$DATA"*) printf '%s\n' "$pid" ;; *) return 1 ;; esac
}

client() { mariadb --no-defaults --protocol=socket --socket="$SOCK" -uroot "$@"; }

install() {
    command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] && return 0
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install mariadb-server yourself"
    [ "$(id -u)" -eq 0 ] || die "need root to apt-get install mariadb-server"
    log "installing mariadb-server with apt-get ..."
    { DEBIAN_FRONTEND=noninteractive apt-get update -q \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
           mariadb-server mariadb-client; } >&2 || die "apt-get install mariadb-server failed"
}

start() {  # start fresh|keep
    local pid
    if pid="$(alive)"; then log "already running (pid $pid, port $(port))"; return 0; fi
    install
    mkdir -p "$SVC"
    local p
    if [ "$1" = fresh ]; then p="${ODDSTREAM_MYSQL_PORT:-13306}"; else p="$(port)"; fi
    ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null \
        || die "port $p on 127.0.0.1 is in use; set ODDSTREAM_MYSQL_PORT, or ODDSTREAM_MYSQL to use an existing server"
    printf '%s\n' "$p" >"$PORTF"
    local fresh_data=0
    if [ "$1" = fresh ] || [ ! -d "$DATA/mysql" ]; then
        rm -rf "$DATA"; mkdir -p "$DATA"
        mariadb-install-db --no-defaults --user="$(id -un)" --datadir="$DATA" \
            --auth-root-authentication-method=normal --skip-test-db >"$LOG" 2>&1 \
            || { tail -n 20 "$LOG" >&2; die "mariadb-install-db failed"; }
        fresh_data=1
    fi
    [ -f "$LOG" ] && mv -f "$LOG" "$LOG.prev"
    log "starting mariadbd on 127.0.0.1:$p"
    (
        for fd in "/proc/$BASHPID/fd"/*; do
            fd=${fd##*/}
            case $fd in 0|1|2) ;; *) eval "exec $fd>&-" 2>/dev/null || true ;; esac
        done
        exec setsid /usr/sbin/mariadbd --no-defaults --user="$(id -un)" --datadir="$DATA" \
            --socket="$SOCK" --pid-file="$SVC/mariadbd.pid" --bind-address=127.0.0.1 \
            --port="$p" --skip-name-resolve --innodb-buffer-pool-size=128M \
            --max-connections=200 </dev/null >"$LOG" 2>&1
    ) &
    pid=$!
    printf '%s\n' "$pid" >"$PIDF"
    local deadline=$((SECONDS + ${ODDSTREAM_MYSQL_TIMEOUT:-60}))
    # Ready when it answers a query; poll (bounded), as for Redis's PING.
    until client -e 'SELECT 1' >/dev/null 2>&1; do
        if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            log "not ready; last lines of ${LOG#"$ROOT"/}:"; tail -n 20 "$LOG" >&2 || true
            kill -KILL "$pid" 2>/dev/null || true; rm -f "$PIDF"; exit 1
        fi
        sleep 0.2
    done
    if [ "$fresh_data" = 1 ]; then
        client <<SQL
CREATE DATABASE IF NOT EXISTS \`$APP_DB\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
CREATE USER IF NOT EXISTS '$APP_USER'@'127.0.0.1' IDENTIFIED BY '$APP_PASSWORD';
GRANT ALL PRIVILEGES ON \`oddstream%\`.* TO '$APP_USER'@'127.0.0.1';
SQL
    fi
    log "ready (pid $pid)"
}

stop() {  # stop TERM|KILL
    local pid
    if ! pid="$(alive)"; then rm -f "$PIDF"; return 0; fi
    log "stopping (pid $pid, $1)"
    kill "-$1" "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || { kill -KILL "$pid" 2>/dev/null || true; }
        [ "$SECONDS" -lt $((deadline + 10)) ] || die "could not stop pid $pid"
        sleep 0.2
    done
    rm -f "$PIDF"
}

env_line() {
    if [ -n "${ODDSTREAM_MYSQL:-}" ]; then printf 'ODDSTREAM_MYSQL=%q\n' "$ODDSTREAM_MYSQL"
    elif alive >/dev/null; then
        printf 'ODDSTREAM_MYSQL=%q\n' "mysql://$APP_USER:$APP_PASSWORD@127.0.0.1:$(port)/$APP_DB"
    else log "not running (run: scripts/mariadb.sh up)"; return 1
    fi
}

case "${1:-}" in
    up) if [ -n "${ODDSTREAM_MYSQL:-}" ]; then log "using external MySQL"; else start fresh; fi
        env_line ;;
    env) env_line ;;
    down) stop TERM ;;
    kill) stop KILL ;;
    start) start keep ;;
    *) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
