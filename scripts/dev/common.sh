# shellcheck shell=bash
# Shared by the development infrastructure scripts (setup, dev-up, dev-down, dev-restart-broker).
# Sourced, not run. Scripts that use the local broker or registry source it too, to find the venv.

# Python tools of the dev infrastructure (noida-db, the Kafka-protocol broker; avro, for the
# registry's compatibility checks) live in this venv, outside the work tree. scripts/setup makes it.
export TRIPLINE_VENV="${TRIPLINE_VENV:-$HOME/.cache/tripline/venv}"

# Exact pins. avro 1.12.1: has avro.compatibility (ReaderWriterCompatibilityChecker), needs
# Python >= 3.10.
TRIPLINE_PY_PINS=(noida-db==0.2.3 avro==1.12.1)

# shellcheck disable=SC2034 # used by the scripts that source this
TRIPLINE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# Progress and errors go to stderr, prefixed with the script's name; stdout is kept for results.
tripline_say() { echo "$(basename "$0"): $*" >&2; }
tripline_die() { echo "$(basename "$0"): error: $*" >&2; exit 1; }

# True when the venv has its tools at the pinned versions.
tripline_venv_ready() {
  [ -x "$TRIPLINE_VENV/bin/python" ] && [ -x "$TRIPLINE_VENV/bin/noida-db" ] &&
    [ "$(cat "$TRIPLINE_VENV/.tripline-pins" 2>/dev/null)" = "${TRIPLINE_PY_PINS[*]}" ] &&
    "$TRIPLINE_VENV/bin/python" -c 'import avro.compatibility' >/dev/null 2>&1
}

# Runs noida-db, keeping its chatter (and the harmless "GLIBC_2.39 not found" loader warning it
# prints on every call) out of our output; shows it, filtered, only when the command fails (and
# TRIPLINE_NOIDA_QUIET is empty) or TRIPLINE_DEV_VERBOSE is set.
tripline_noida() {
  local out rc=0
  out="$(mktemp)"
  "$TRIPLINE_VENV/bin/noida-db" "$@" </dev/null >"$out" 2>&1 || rc=$?
  if { [ "$rc" != 0 ] && [ -z "${TRIPLINE_NOIDA_QUIET:-}" ]; } || [ -n "${TRIPLINE_DEV_VERBOSE:-}" ]; then
    grep -v 'GLIBC_2\.39' "$out" | sed 's/^/  noida-db: /' >&2 || true
  fi
  rm -f "$out"
  return "$rc"
}

# Whether a process runs (a zombie, e.g. a daemon not yet reaped, does not count).
tripline_pid_alive() {
  local pid="$1" state
  [ -n "$pid" ] || return 1
  if [ -r "/proc/$pid/stat" ]; then
    state="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" || return 1
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
  else
    kill -0 "$pid" 2>/dev/null
  fi
}

# A process's command line (empty if it is gone).
tripline_pid_cmdline() {
  { tr '\0' ' ' <"/proc/$1/cmdline"; } 2>/dev/null || true
}

# Stops a process: SIGTERM, up to $2 seconds (default 10) for it to end, then SIGKILL.
tripline_stop_pid() {
  local pid="$1" grace="${2:-10}" i
  tripline_pid_alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    tripline_pid_alive "$pid" || return 0
    sleep 0.1
  done
  tripline_say "process $pid did not stop within ${grace}s of SIGTERM; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    tripline_pid_alive "$pid" || return 0
    sleep 0.1
  done
  tripline_die "process $pid survived SIGKILL"
}

# Python helpers (stdlib only): free-port, kafka-up HOST PORT, http-up URL,
# wait-kafka HOST PORT TIMEOUT, wait-http URL TIMEOUT [PID]. Exit 0 on success.
# Kafka "answers" when a TCP connection succeeds and an ApiVersions request gets an answer.
tripline_probe() {
  local py="$TRIPLINE_VENV/bin/python"
  [ -x "$py" ] || py=python3
  "$py" - "$@" <<'PY'
import os, socket, struct, sys, time, urllib.request

def kafka_up(host, port):
    try:
        with socket.create_connection((host, int(port)), timeout=2) as s:
            s.settimeout(2)
            client = b"tripline-dev"
            req = struct.pack(">hhih", 18, 0, 4242, len(client)) + client  # ApiVersions v0
            s.sendall(struct.pack(">i", len(req)) + req)
            data = b""
            while len(data) < 10:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                data += chunk
            _size, correlation, error = struct.unpack(">iih", data[:10])
            return correlation == 4242 and error == 0
    except OSError:
        return False

def http_up(url):
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/subjects", timeout=2) as r:
            return r.status == 200
    except Exception:
        return False

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] not in "ZX"
    except OSError:
        return False

def wait(check, timeout, pid=None):
    deadline = time.monotonic() + float(timeout)
    while time.monotonic() < deadline:
        if check():
            return 0
        if pid and not alive(pid):
            return 3
        time.sleep(0.1)
    return 1

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "free-port":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])
    sys.exit(0)
if cmd == "kafka-up":
    sys.exit(0 if kafka_up(*args) else 1)
if cmd == "http-up":
    sys.exit(0 if http_up(*args) else 1)
if cmd == "wait-kafka":
    sys.exit(wait(lambda: kafka_up(args[0], args[1]), args[2]))
if cmd == "wait-http":
    sys.exit(wait(lambda: http_up(args[0]), args[1], args[2] if len(args) > 2 else None))
sys.exit(f"tripline_probe: unknown command {cmd}")
PY
}

# Parses the common options of the dev scripts into DATA_DIR, KAFKA_PORT, REGISTRY_PORT and
# KILL_BROKER; $1 is the usage text, the rest the script's arguments. DATA_DIR is made absolute
# (it need not exist).
# shellcheck disable=SC2034 # the variables are read by the scripts that source this
tripline_dev_args() {
  local usage="$1"
  shift
  DATA_DIR="" KAFKA_PORT="" REGISTRY_PORT="" KILL_BROKER=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --data-dir) DATA_DIR="${2:?--data-dir needs a value}"; shift 2 ;;
      --data-dir=*) DATA_DIR="${1#*=}"; shift ;;
      --kafka-port) KAFKA_PORT="${2:?--kafka-port needs a value}"; shift 2 ;;
      --kafka-port=*) KAFKA_PORT="${1#*=}"; shift ;;
      --registry-port) REGISTRY_PORT="${2:?--registry-port needs a value}"; shift 2 ;;
      --registry-port=*) REGISTRY_PORT="${1#*=}"; shift ;;
      --kill) KILL_BROKER=1; shift ;;
      -h | --help) echo "$usage"; exit 0 ;;
      *) echo "$usage" >&2; tripline_die "unknown argument: $1" ;;
    esac
  done
  [ -n "$DATA_DIR" ] || { echo "$usage" >&2; tripline_die "--data-dir is required"; }
  local p
  for p in "$KAFKA_PORT" "$REGISTRY_PORT"; do
    [ -z "$p" ] || [[ "$p" =~ ^[0-9]+$ && "$p" -ge 1 && "$p" -le 65535 ]] || tripline_die "not a port: $p"
  done
  DATA_DIR="$(realpath -m -- "$DATA_DIR")"
}

# Reads NAME's value from DATA_DIR/env (empty if absent).
tripline_env_value() {
  [ -f "$DATA_DIR/env" ] || return 0
  sed -n "s/^$1=//p" "$DATA_DIR/env" | tail -n 1
}

# The broker's and the registry's processes for DATA_DIR, from their own records.
tripline_broker_pid() {
  local pid
  pid="$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$DATA_DIR/kafka/noida.control.json" 2>/dev/null)"
  if [ -n "$pid" ] && tripline_pid_alive "$pid" && [[ "$(tripline_pid_cmdline "$pid")" == *noida-db* ]]; then
    echo "$pid"
  fi
}
tripline_registry_pids() {
  # The pid file, plus any registry.py still serving this data dir (e.g. its pid file was lost).
  local pid cmd
  {
    pid="$(cat "$DATA_DIR/registry.pid" 2>/dev/null || true)"
    if [ -n "$pid" ] && tripline_pid_alive "$pid" && [[ "$(tripline_pid_cmdline "$pid")" == *registry.py* ]]; then
      echo "$pid"
    fi
    { grep -lsFa -- "$DATA_DIR/registry" /proc/[0-9]*/cmdline || true; } | while read -r cmd; do
      pid="${cmd#/proc/}"
      pid="${pid%/cmdline}"
      case "$(tripline_pid_cmdline "$pid")" in
        *registry.py*"--data-dir $DATA_DIR/registry "*) if tripline_pid_alive "$pid"; then echo "$pid"; fi ;;
      esac
    done
  } | sort -u
}
