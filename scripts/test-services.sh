#!/usr/bin/env bash
# Starts and stops the services the tests talk to: a dockerd and a docker-registry of their own,
# with all their state under BUILD_DIR/services and their sockets in a short-lived runtime
# directory (unix socket paths are limited to 108 bytes). Nothing runs or remains outside those
# two folders once `stop` has run.
#
# Usage: scripts/test-services.sh start BUILD_DIR   prints the variables the tests read
#        scripts/test-services.sh stop BUILD_DIR
set -uo pipefail

command=${1:?usage: test-services.sh start|stop BUILD_DIR}
build_dir=$(realpath -m "${2:?usage: test-services.sh start|stop BUILD_DIR}")
state_dir="$build_dir/services"
runtime_link="$state_dir/runtime" # points to the runtime directory while services run

say() { printf 'test-services: %s\n' "$*" >&2; }

wait_until() { # SECONDS COMMAND...: runs COMMAND every 0.2 s until it succeeds
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

free_loopback_port() {
  local port
  for _ in $(seq 100); do
    port=$((20000 + RANDOM % 20000))
    if ! ss -Htln "sport = :$port" | grep -q .; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

# A process that has exited but not been reaped yet (a zombie: its parent, this script's earlier
# run, is gone and PID 1 may not reap) counts as stopped.
is_running() {
  [[ -r /proc/$1/stat ]] && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]
}

stop_pidfile() { # PIDFILE NAME: TERM, then KILL after 20 s
  local pidfile=$1 name=$2 pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if is_running "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    if ! wait_until 20 bash -c "$(declare -f is_running); ! is_running $pid"; then
      say "$name (pid $pid) did not stop on SIGTERM; killing it"
      kill -KILL "$pid" 2>/dev/null
    fi
  fi
  rm -f "$pidfile"
}

start_dockerd() {
  local runtime=$1
  local socket="$runtime/docker.sock"
  mkdir -p "$state_dir/docker"
  # vfs needs no kernel overlay support; no iptables and no bridge: the tests never run
  # containers with networking, and nothing may touch the host's network set-up.
  setsid dockerd \
    --host "unix://$socket" \
    --data-root "$state_dir/docker" \
    --exec-root "$runtime/docker-exec" \
    --pidfile "$runtime/dockerd.pid" \
    --storage-driver vfs --iptables=false --ip6tables=false --bridge=none \
    --ip-forward=false --ip-masq=false --userland-proxy=false \
    >"$state_dir/dockerd.log" 2>&1 </dev/null &
  echo $! >"$state_dir/dockerd.pid"
  if wait_until 60 curl -sf --unix-socket "$socket" http://docker/_ping; then
    echo "export COMPACTOR_TEST_DOCKER_SOCKET=$socket"
  else
    say "dockerd did not answer within 60 s; the end of $state_dir/dockerd.log:"
    tail -n 5 "$state_dir/dockerd.log" >&2
  fi
}

start_registry() {
  local port
  if ! port=$(free_loopback_port); then
    say "no free loopback port for the registry"
    return
  fi
  mkdir -p "$state_dir/registry"
  cat >"$state_dir/registry.yml" <<CONFIG
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $state_dir/registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
CONFIG
  setsid docker-registry serve "$state_dir/registry.yml" \
    >"$state_dir/registry.log" 2>&1 </dev/null &
  echo $! >"$state_dir/registry.pid"
  if wait_until 30 curl -sf "http://127.0.0.1:$port/v2/"; then
    echo "export COMPACTOR_TEST_REGISTRY=127.0.0.1:$port"
  else
    say "docker-registry did not answer on 127.0.0.1:$port within 30 s; its log says:"
    tail -n 5 "$state_dir/registry.log" >&2
  fi
}

stop_all() {
  stop_pidfile "$state_dir/registry.pid" docker-registry
  stop_pidfile "$state_dir/dockerd.pid" dockerd
  if [[ -L $runtime_link ]]; then
    local runtime
    runtime=$(readlink "$runtime_link")
    # dockerd leaves its exec root mounted when killed hard; unmount before removing.
    grep -o " $runtime[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$runtime"
    rm -f "$runtime_link"
  fi
}

case $command in
start)
  stop_all # whatever an interrupted run left behind
  mkdir -p "$state_dir"
  runtime=$(mktemp -d /run/compactor-test.XXXXXX)
  ln -s "$runtime" "$runtime_link"
  start_dockerd "$runtime"
  start_registry
  ;;
stop)
  stop_all
  ;;
*)
  say "unknown command $command (start or stop)"
  exit 2
  ;;
esac
