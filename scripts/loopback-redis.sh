# Sourced by the scripts: start_loopback_redis PORT DIR starts a throwaway redis-server on 127.0.0.1:PORT (no
# persistence, log in DIR/redis.log) and returns once it answers PING.
start_loopback_redis() {
    local port=$1 dir=$2
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --daemonize yes \
        --logfile "$dir/redis.log"
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "redis-server on 127.0.0.1:$port did not start; see $dir/redis.log" >&2
    return 1
}
