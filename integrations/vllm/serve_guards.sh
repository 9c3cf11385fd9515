#!/usr/bin/env bash
# Serve the guard models with vLLM on ONE GPU, each on its own port, for guardrails-plugin's
# `engine: openai`. See README.md next to this file. Names and ports follow the serving layout
# (guardrails_plugin/engines/serving.py; tests/engines/test_serving_layout.py checks that this script agrees):
#
#   ./serve_guards.sh              # GuardReasoner-1B (:8001) + ReasoningShield-1B (:8002)
#   ./serve_guards.sh flexguard    # also FlexGuard-Qwen3-8B (:8003); sized for an 80 GB GPU
#   HOST=0.0.0.0 ./serve_guards.sh # a replica that vllm-router on another machine reaches
#                                  # (start_routers.sh, docs/scaling.md)
#
# --gpu-memory-utilization is a fraction of the WHOLE GPU per process (weights + KV cache), so the
# shares must add up to less than 1.0. Defaults: 0.35 + 0.35 for the two 1B guards; with FlexGuard
# 0.15 + 0.15 (12 GB each on 80 GB: 2.5 GB bf16 weights, the rest KV cache) + 0.50 for the 8B
# (16 GB weights + ~20 GB KV cache).
# Env overrides: HOST (127.0.0.1), MAX_MODEL_LEN (8192), GPU_UTIL_SMALL, GPU_UTIL_FLEX,
# FLEX_REASONING_PARSER (1: --reasoning-parser qwen3; 0: think block stays in content),
# LOG_DIR (./vllm-logs), READY_TIMEOUT (900 s).
set -euo pipefail

HOST="${HOST:-127.0.0.1}"
MAX_MODEL_LEN="${MAX_MODEL_LEN:-8192}"
if [ "${1:-}" = "flexguard" ]; then
  GPU_UTIL_SMALL="${GPU_UTIL_SMALL:-0.15}"
else
  GPU_UTIL_SMALL="${GPU_UTIL_SMALL:-0.35}"
fi
GPU_UTIL_FLEX="${GPU_UTIL_FLEX:-0.50}"
FLEX_REASONING_PARSER="${FLEX_REASONING_PARSER:-1}"
LOG_DIR="${LOG_DIR:-./vllm-logs}"
READY_TIMEOUT="${READY_TIMEOUT:-900}"
mkdir -p "$LOG_DIR"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup INT TERM

# serve NAME PORT GPU_UTIL MODEL [extra vllm args...]
serve() {
  local name="$1" port="$2" util="$3" model="$4"; shift 4
  echo "starting $name on $HOST:$port (gpu-memory-utilization $util)"
  vllm serve "$model" \
    --host "$HOST" --port "$port" \
    --served-model-name "$name" \
    --gpu-memory-utilization "$util" \
    --max-model-len "$MAX_MODEL_LEN" \
    --enable-prefix-caching \
    --dtype bfloat16 \
    "$@" >"$LOG_DIR/$name.log" 2>&1 &
  PIDS+=("$!")
}

wait_ready() {
  local name="$1" port="$2" t=0
  local probe="$HOST"; [ "$probe" = "0.0.0.0" ] && probe=127.0.0.1
  until curl -sf "http://$probe:$port/v1/models" >/dev/null; do
    sleep 2; t=$((t + 2))
    if [ "$t" -ge "$READY_TIMEOUT" ]; then
      echo "$name did not become ready; see $LOG_DIR/$name.log" >&2; cleanup; exit 1
    fi
  done
  echo "$name ready: http://$probe:$port/v1 (served as $name)"
}

# vLLM profiles free memory at start-up: start the servers one after another, not in parallel.
serve GuardReasoner-1B 8001 "$GPU_UTIL_SMALL" yueliu1999/GuardReasoner-1B
wait_ready GuardReasoner-1B 8001
serve ReasoningShield-1B 8002 "$GPU_UTIL_SMALL" ReasoningShield/ReasoningShield-1B
wait_ready ReasoningShield-1B 8002

if [ "${1:-}" = "flexguard" ]; then
  flex_args=()
  if [ "$FLEX_REASONING_PARSER" = "1" ]; then
    # The <think> block comes back in message.reasoning(_content); the plugin re-assembles it.
    flex_args+=(--reasoning-parser qwen3)
  fi
  serve FlexGuard-Qwen3-8B 8003 "$GPU_UTIL_FLEX" Tommy-DING/FlexGuard-Qwen3-8B ${flex_args[@]+"${flex_args[@]}"}
  wait_ready FlexGuard-Qwen3-8B 8003
fi

echo "all guards up (logs in $LOG_DIR); Ctrl-C stops them"
wait
