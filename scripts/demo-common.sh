# Sourced by the demo scripts: what they share. Needs `$bin` (the binaries' folder) and `$runs`.
#
#   demo_start NAME DATA
#
# Checks that `$bin` holds student-trainer and teacher-server and that DATA (the dataset's folder
# or file) exists, with a message saying what to run when not; creates `$runs`; starts the clock
# of `stamp MESSAGE`, which prints `NAME: [SECONDS s] MESSAGE`.
demo_start() {
  demo_name=$1
  local data=$2 b
  for b in student-trainer teacher-server; do
    [ -x "$bin/$b" ] || { echo "$demo_name: $bin/$b is missing: run 'cargo build --release --bins' first" >&2; exit 1; }
  done
  [ -e "$data" ] || { echo "$demo_name: no dataset at $data: run 'make setup' first" >&2; exit 1; }
  mkdir -p "$runs"
  t_start=$(date +%s)
}

stamp() { echo "$demo_name: [$(( $(date +%s) - t_start )) s] $*"; }

# Starts teacher-server in the background on a free local port and waits for its first stdout
# line, `listening on HOST:PORT`.
#
#   start_teacher OUT_PREFIX teacher-server-flags...
#
# The server's stdout and log go to OUT_PREFIX.out and OUT_PREFIX.log. Sets `teacher`
# (http://HOST:PORT), `teacher_addr` (HOST:PORT) and `server_pid`, and kills the server when the
# calling script exits.
start_teacher() {
  local prefix=$1
  shift
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
      echo "$demo_name: teacher-server exited; its log ($server_log):" >&2
      cat "$server_log" >&2
      exit 1
    fi
    sleep 0.1
  done
  [[ $first == "listening on "* ]] || { echo "$demo_name: teacher-server did not report its address in 60 s" >&2; exit 1; }
  teacher_addr=${first#listening on }
  teacher="http://$teacher_addr"
}
