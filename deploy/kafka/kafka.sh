#!/usr/bin/env bash
# Local single-node Kafka (KRaft) for Tollway's dev and CI runs, without Docker or a tarball:
# the broker's jars come from Maven (pom.xml beside this script) into a per-version cache,
# and the broker runs from them with the settings in server.properties.template.
#
#   kafka.sh fetch|start|stop|status|reset|bootstrap
#
# Every subcommand is idempotent. Environment:
#   TOLLWAY_CACHE_DIR              jar cache root   (default ~/.cache/tollway)
#   TOLLWAY_KAFKA_DIR              state dir        (default <repo>/.tollway/kafka)
#   TOLLWAY_KAFKA_PORT             broker port      (default 19092)
#   TOLLWAY_KAFKA_CONTROLLER_PORT  controller port  (default 19093)
#   TOLLWAY_KAFKA_START_TIMEOUT    seconds to wait for the broker (default 90)
#   KAFKA_HEAP_OPTS                JVM heap         (default -Xms256m -Xmx768m)
#   KAFKA_JVM_OPTS                 other JVM flags  (default below: C1 JIT only, ~30% faster start)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/pom.xml")"
libs="${TOLLWAY_CACHE_DIR:-$HOME/.cache/tollway}/kafka/$version/libs"
state="$(realpath -m "${TOLLWAY_KAFKA_DIR:-$repo/.tollway/kafka}")"
port="${TOLLWAY_KAFKA_PORT:-19092}"
controller_port="${TOLLWAY_KAFKA_CONTROLLER_PORT:-19093}"
timeout="${TOLLWAY_KAFKA_START_TIMEOUT:-90}"
java="${JAVA_HOME:+$JAVA_HOME/bin/}java"
pidfile="$state/kafka.pid"
logfile="$state/kafka.log"

die() { echo "kafka.sh: $*" >&2; exit 1; }

# Jars are fetched once per POM content; the marker (the POM's hash) is written last.
jars_ready() {
  [[ "$(cat "$libs/.complete" 2>/dev/null)" == "$1" ]] && compgen -G "$libs/kafka_2.13-*.jar" >/dev/null
}

fetch() {
  local want; want="$(sha256sum "$here/pom.xml" | cut -d' ' -f1)"
  jars_ready "$want" && return 0
  mkdir -p "$(dirname "$libs")" && exec 8>"$libs.lock" && flock 8   # one fetch at a time
  if ! jars_ready "$want"; then
    echo "kafka.sh: fetching Kafka $version jars into $libs" >&2
    rm -rf "$libs.tmp" && mkdir -p "$libs.tmp"
    local out  # captured: Debian's Maven 3.8 prints stray colour codes even with -B -q
    out="$(mvn -B -q -ntp -f "$here/pom.xml" \
      org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$libs.tmp" </dev/null 2>&1)" || die "mvn failed:"$'\n'"$out"
    echo "$want" >"$libs.tmp/.complete"
    rm -rf "$libs" && mv "$libs.tmp" "$libs"
  fi
  exec 8>&-
}

# The pid in the pid file, if that process is alive and is our broker.
broker_pid() {
  local pid; pid="$(cat "$pidfile" 2>/dev/null)" || return 1
  [[ -n "$pid" && "$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" == *" kafka.Kafka $state/server.properties "* ]] &&
    echo "$pid"
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

running() { broker_pid >/dev/null && port_open "$port"; }

# Ready = our JVM is alive, logged "Kafka Server started" (after the broker was unfenced
# and its listeners opened) and the broker port accepts connections.
wait_ready() {
  local deadline=$((SECONDS + timeout))
  until grep -q 'Kafka Server started' "$logfile" 2>/dev/null && running; do
    if ! broker_pid >/dev/null; then
      echo "kafka.sh: the broker exited during start-up; last 50 lines of $logfile:" >&2
      tail -n 50 "$logfile" >&2; exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "kafka.sh: the broker was not ready on 127.0.0.1:$port after ${timeout}s; last 50 lines of $logfile:" >&2
      tail -n 50 "$logfile" >&2
      echo "kafka.sh: it is left running (pid $(broker_pid)): 'start' again waits for it, 'stop' ends it" >&2; exit 1
    fi
    sleep 0.25
  done
}

start() {
  mkdir -p "$state"
  exec 9>"$state.lock" && flock 9   # serialise concurrent start/stop/reset (the broker must not inherit fd 9)
  if broker_pid >/dev/null; then wait_ready; return 0; fi
  port_open "$port" && die "127.0.0.1:$port is taken by another process (set TOLLWAY_KAFKA_PORT)"
  port_open "$controller_port" && die "127.0.0.1:$controller_port is taken (set TOLLWAY_KAFKA_CONTROLLER_PORT)"
  fetch
  local cp="$libs/*" data="$state/data"
  sed -e "s|@BROKER_PORT@|$port|g" -e "s|@CONTROLLER_PORT@|$controller_port|g" -e "s|@DATA_DIR@|$data|g" \
    "$here/server.properties.template" >"$state/server.properties"
  if [[ ! -f "$data/meta.properties" ]]; then
    local cluster_id; cluster_id="$("$java" -cp "$cp" kafka.tools.StorageTool random-uuid)"
    "$java" -cp "$cp" kafka.tools.StorageTool format -t "$cluster_id" -c "$state/server.properties" >/dev/null
  fi
  [[ -f "$logfile" ]] && mv "$logfile" "$logfile.1"
  # A test broker on 2 cores: C1-only JIT starts ~30% faster and uses less memory.
  local jvm_opts="${KAFKA_JVM_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:TieredStopAtLevel=1}"
  # shellcheck disable=SC2086  # the *_OPTS are lists of flags
  nohup "$java" ${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m} $jvm_opts -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$here/log4j2.properties" \
    -cp "$cp" kafka.Kafka "$state/server.properties" >"$logfile" 2>&1 </dev/null 9>&- &
  echo $! >"$pidfile"
  wait_ready
  echo "kafka.sh: Kafka $version ready on 127.0.0.1:$port" >&2
}

stop() {
  [[ -d "$state" ]] || return 0
  exec 9>"$state.lock" && flock 9
  local pid
  if pid="$(broker_pid)"; then
    kill -TERM "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { echo "kafka.sh: broker did not stop in 30s, killing it" >&2; kill -KILL "$pid"; }
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) if running; then echo running; else echo stopped; exit 1; fi ;;
  reset) stop; rm -rf "${state:?}" "$state.lock" ;;
  bootstrap) echo "127.0.0.1:$port" ;;
  *) echo "usage: $0 fetch|start|stop|status|reset|bootstrap" >&2; exit 2 ;;
esac
