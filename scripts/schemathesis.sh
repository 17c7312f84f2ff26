#!/usr/bin/env bash
# Runs Schemathesis (all checks, 100 examples per operation) against a
# tally server started here on a temporary SQLite database, with an
# operator token. Installs Schemathesis into .venv-schemathesis if missing.
# Exit code: Schemathesis's (0 = no failure).
set -euo pipefail
cd "$(dirname "$0")/.."
examples="${SCHEMATHESIS_EXAMPLES:-100}"
venv=.venv-schemathesis
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis>=4,<5"
fi
cargo build -q
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export TALLY_JWT_SECRET=schemathesis-secret-0123456789
export STRIPE_WEBHOOK_SECRET=whsec_schemathesis
(cd "$dir" && DATABASE_URL="sqlite://$dir/tally.db" TALLY_BIND="127.0.0.1:$port" RUST_LOG=warn \
  exec "$OLDPWD/target/debug/tally" serve) > "$dir/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
token=$(target/debug/tally token --sub schemathesis-operator --role admin)
"$venv/bin/schemathesis" --config-file schemathesis.toml run "http://127.0.0.1:$port/openapi.json" \
  -H "Authorization: Bearer $token" \
  --checks all -n "$examples" --workers 2 \
  --generation-deterministic
