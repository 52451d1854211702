# Shared by start.sh and stop.sh (sourced).
# alive PIDFILE NAME: the pid file names a live process called NAME (a zombie counts as gone:
# PID 1 here reaps orphans late and `kill -0` still succeeds on zombies).
alive() {
    local pid stat comm
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    stat=$(ps -o stat= -p "$pid" 2>/dev/null) || return 1
    comm=$(ps -o comm= -p "$pid" 2>/dev/null) || return 1
    [[ -n "$stat" && "$stat" != Z* && "$comm" == "$2"* ]]
}
