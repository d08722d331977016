#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to a serving daemon: installs the
# dependencies, fetches and verifies the default model, builds, and starts
# lacunad on 127.0.0.1:8080 (Ctrl-C stops it). Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
LACUNA_SKIP_PIP=1 ./scripts/install_deps.sh
./scripts/fetch_model.sh
./scripts/build.sh ${LACUNA_CONFIGURE_ARGS:-}

MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
HOST=${LACUNA_HOST:-127.0.0.1}
PORT=${LACUNA_PORT:-8080}
cat <<MSG

==> starting lacunad on http://$HOST:$PORT (model: $MODEL)
    try, from another terminal:

    curl -s http://$HOST:$PORT/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model":"SmolLM2-135M-Instruct","messages":[{"role":"user","content":"Name three colours."}],"max_tokens":64,"temperature":0}'

MSG
exec ./build/lacunad --config conf/lacuna.conf --model "$MODEL" --host "$HOST" --port "$PORT"
