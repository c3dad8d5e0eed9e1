# Sourced by the demo scripts: starts teacher-server in the background on a free local port and
# waits for its first stdout line, `listening on HOST:PORT`.
#
#   start_teacher NAME OUT_PREFIX teacher-server-flags...
#
# NAME prefixes the messages (e.g. demo-lm); the server's stdout and log go to OUT_PREFIX.out and
# OUT_PREFIX.log. Sets `teacher` (http://HOST:PORT), `teacher_addr` (HOST:PORT) and
# `server_pid`, and kills the server when the calling script exits. Needs `$bin`.
start_teacher() {
  local name=$1 prefix=$2
  shift 2
  server_out="$prefix.out" server_log="$prefix.log"
  : >"$server_out"
  "$bin/teacher-server" --listen 127.0.0.1:0 "$@" >"$server_out" 2>"$server_log" &
  server_pid=$!
  trap 'kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true' EXIT
  local first=
  for _ in $(seq 600); do
    first=$(head -n 1 "$server_out")
    [[ $first == "listening on "* ]] && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "$name: teacher-server exited; its log ($server_log):" >&2
      cat "$server_log" >&2
      exit 1
    fi
    sleep 0.1
  done
  [[ $first == "listening on "* ]] || { echo "$name: teacher-server did not report its address in 60 s" >&2; exit 1; }
  teacher_addr=${first#listening on }
  teacher="http://$teacher_addr"
}
