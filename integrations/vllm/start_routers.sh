#!/usr/bin/env bash
# One vllm-router per guard model in front of that model's replicas: the supported way to scale
# the guards past one GPU (docs/scaling.md). Every replica host runs `HOST=0.0.0.0 ./serve_guards.sh`
# (one replica of each guard on :8001 / :8002 / :8003); this script starts the routers, usually on
# the machine(s) of the agents or the LiteLLM proxy:
#
#   REPLICAS="gpu-a gpu-b gpu-c" ./start_routers.sh              # GuardReasoner-1B on :8101,
#                                                                # ReasoningShield-1B on :8102
#   REPLICAS="gpu-a gpu-b" ./start_routers.sh flexguard          # also FlexGuard-Qwen3-8B on :8103
#
# Then point the guard config at the routers: guard-router.yaml next to this file.
# Env: ROUTER_HOST (127.0.0.1; 0.0.0.0 to serve other machines), LOG_DIR (./router-logs).
# Names and ports follow guardrails_plugin/engines/serving.py (tests/engines/test_serving_layout.py checks them).
#
# Why these flags (measured with tests/engines/test_vllm_router.py and benchmarks/router_bench.py):
#   --policy consistent_hash      every check of one stream carries its session key (x-session-id);
#                                 the router hashes it, so the stream's checks stay on the replica
#                                 that holds its prefix in vLLM's prefix cache, while streams spread
#   --cb-failure-threshold 1      a replica that fails once is taken out at once; the request that
#   --retry-max-retries 3         met the failure is retried on another replica (with the defaults,
#                                 10 failures and 5 retries, the first requests of a dead replica's
#                                 streams can come back as 500)
#   --cb-timeout-duration-secs 5  a replica back from a restart gets traffic again within seconds
#   --health-check-interval-secs 5 (the default, 60 s, is slow to notice a dead or revived replica)
set -euo pipefail

ROUTER_HOST="${ROUTER_HOST:-127.0.0.1}"
REPLICAS="${REPLICAS:?set REPLICAS to the replica hosts, e.g. REPLICAS=\"gpu-a gpu-b\"}"
LOG_DIR="${LOG_DIR:-./router-logs}"
mkdir -p "$LOG_DIR"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM

# route NAME ROUTER_PORT METRICS_PORT REPLICA_PORT
route() {
  local name="$1" port="$2" metrics="$3" replica_port="$4" urls=() h
  for h in $REPLICAS; do urls+=("http://$h:$replica_port"); done
  echo "router for $name on $ROUTER_HOST:$port -> ${urls[*]}"
  vllm-router --host "$ROUTER_HOST" --port "$port" --prometheus-port "$metrics" \
    --worker-urls "${urls[@]}" \
    --policy consistent_hash \
    --cb-failure-threshold 1 --cb-timeout-duration-secs 5 \
    --retry-max-retries 3 \
    --health-check-interval-secs 5 --health-check-endpoint /health \
    >"$LOG_DIR/router-$name.log" 2>&1 &
  PIDS+=("$!")
}

route GuardReasoner-1B 8101 29101 8001
route ReasoningShield-1B 8102 29102 8002
if [ "${1:-}" = "flexguard" ]; then
  route FlexGuard-Qwen3-8B 8103 29103 8003
fi

echo "routers up (logs in $LOG_DIR; Prometheus metrics on :29101-29103); Ctrl-C stops them"
wait
