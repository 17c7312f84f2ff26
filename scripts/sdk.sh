#!/usr/bin/env bash
# The generated SDKs, end to end. Generates, from openapi/openapi.json:
#   - a Python client with openapi-python-client (into target/sdk/python,
#     failing on any generator warning), installed into .venv-sdk;
#   - TypeScript types with openapi-typescript (sdk/typescript/generated),
#     used through openapi-fetch and type-checked by tsc;
# then runs each one's scenario (sdk/python/scenario.py,
# sdk/typescript/scenario.ts) against a live `tally serve` on a fresh SQLite
# database and the fake Stripe (examples/fake_stripe.rs), a new pair per
# scenario. Installs its tools if missing (needs python3 with venv, node and npm).
#
#   - a Python client with openapi-generator from openapi/openapi-3.0.json
#     (needs a JRE), installed into .venv-ogen;
#   - a Rust client with progenitor from openapi/openapi-3.0.json, generated
#     by sdk/rust/build.rs when its crate builds (target dir target/sdk-rust,
#     nothing shared with the server's build), whose binary is the scenario.
#   scripts/sdk.sh                  # all four
#   scripts/sdk.sh python           # or: typescript, openapi-generator, rust
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
langs=("$@")
[ ${#langs[@]} -gt 0 ] || langs=(python typescript openapi-generator rust)
work="$root/target/sdk"
mkdir -p "$work"

cargo build -q --bin tally --example fake_stripe
tally="$root/target/debug/tally"
fake="$root/target/debug/examples/fake_stripe"

generate_python() {
  local venv="$root/.venv-sdk"
  if [ ! -x "$venv/bin/openapi-python-client" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "openapi-python-client==0.29.1"
  fi
  # The receiver's verifier: Standard Webhooks' own library.
  "$venv/bin/python" -c 'import standardwebhooks' 2>/dev/null ||
    "$venv/bin/pip" install -q "standardwebhooks==1.0.1"
  rm -rf "$work/python"
  # openapi-python-client (0.29) has no tag filter: it reads the document
  # without the `operations` tag (health, readiness, metrics: no SDK methods).
  python3 -c 'import json, sys
d = json.load(open("openapi/openapi.json"))
for item in d["paths"].values():
    for m in [m for m, op in item.items() if "operations" in op.get("tags", [])]:
        del item[m]
d["paths"] = {p: i for p, i in d["paths"].items() if i}
d["tags"] = [t for t in d["tags"] if t["name"] != "operations"]
json.dump(d, sys.stdout)' >"$work/openapi-python.json"
  PATH="$venv/bin:$PATH" openapi-python-client generate --path "$work/openapi-python.json" \
    --config sdk/python/config.yml --output-path "$work/python" --fail-on-warning
  "$venv/bin/pip" install -q "$work/python"
}

# openapi-generator (its PyPI wrapper, which runs the jar: needs a JRE) from
# the 3.0.3 variant, with the generator's default spec validation, into
# target/sdk/openapi-generator, installed into .venv-ogen.
generate_openapi_generator() {
  local venv="$root/.venv-ogen"
  if [ ! -x "$venv/bin/openapi-generator-cli" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "openapi-generator-cli==7.26.0"
  fi
  rm -rf "$work/openapi-generator"
  # Every tag but `operations` (health, readiness, metrics are no SDK methods).
  local tags
  tags=$(python3 -c 'import json; d = json.load(open("openapi/openapi-3.0.json"))
print("|".join(t["name"] for t in d["tags"] if t["name"] != "operations"))')
  "$venv/bin/openapi-generator-cli" generate -i openapi/openapi-3.0.json -g python \
    -o "$work/openapi-generator" --package-name tally_openapi_client \
    --openapi-normalizer "FILTER=tag:$tags" >"$work/openapi-generator.log" 2>&1 ||
    { cat "$work/openapi-generator.log"; return 1; }
  if grep -E "ERROR|Exception" "$work/openapi-generator.log"; then return 1; fi
  "$venv/bin/pip" install -q "$work/openapi-generator"
}

# progenitor runs in sdk/rust/build.rs: building the crate generates the
# client (a generator error fails the build) and compiles the scenario.
generate_rust() {
  (cd sdk/rust && CARGO_TARGET_DIR="$root/target/sdk-rust" cargo build -q --locked)
}

# openapi-typescript leaves the `operations` tag out by the Redocly
# decorator in sdk/typescript/redocly.yaml (`npm run generate` names it).
generate_typescript() {
  (cd sdk/typescript && npm ci --no-audit --no-fund --loglevel=error && npm run --silent generate &&
    npx --no-install tsc -p .)
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

pids=()
dirs=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for d in "${dirs[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT

# Runs "$@" against a fresh server and fake Stripe, with the scenario's environment.
scenario() {
  local dir port stripe_url packs
  # The default packs, the starter one also sold with 30-day credits.
  packs='[{"id": "starter", "name": "Starter", "credits": "50", "validity": {"30d": "4", "lifetime": "5"}},
    {"id": "standard", "name": "Standard", "credits": "150", "price_usd": "15"},
    {"id": "pro", "name": "Pro", "credits": "500", "price_usd": "50"}]'
  dir=$(mktemp -d)
  dirs+=("$dir")
  port=$(free_port)
  "$fake" --webhook-url "http://127.0.0.1:$port/v1/webhooks/stripe" >"$dir/fake.out" 2>"$dir/fake.log" &
  pids+=($!)
  for _ in $(seq 1 100); do
    [ -s "$dir/fake.out" ] && break
    sleep 0.1
  done
  stripe_url=$(head -n 1 "$dir/fake.out")
  export TALLY_JWT_SECRET=sdk-scenario-secret-0123456789
  (cd "$dir" && DATABASE_URL="sqlite://$dir/tally.db" TALLY_BIND="127.0.0.1:$port" RUST_LOG=warn \
    TALLY_EARNINGS_HOLD=1s TALLY_SETTLEMENT_SWEEP=200ms TALLY_MIN_WITHDRAWAL=10 \
    TALLY_CREDIT_PACKS="$packs" TALLY_WEBHOOKS_ALLOW_PRIVATE=true TALLY_WEBHOOK_POLL=200ms \
    STRIPE_SECRET_KEY=sk_test_fake STRIPE_WEBHOOK_SECRET=whsec_test_0123456789abcdef \
    STRIPE_API_BASE="$stripe_url" exec "$tally" serve) >"$dir/server.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  if ! TALLY_URL="http://127.0.0.1:$port" FAKE_STRIPE_URL="$stripe_url" \
    ADMIN_TOKEN=$("$tally" token --sub sdk-operator --role admin) \
    CREATOR_TOKEN=$("$tally" token --sub sdk-creator) \
    PAYER_TOKEN=$("$tally" token --sub sdk-payer) "$@"; then
    echo "--- server log"; cat "$dir/server.log"
    echo "--- fake Stripe log"; cat "$dir/fake.log"
    return 1
  fi
}

for lang in "${langs[@]}"; do
  case "$lang" in
    python)
      generate_python
      scenario "$root/.venv-sdk/bin/python" sdk/python/scenario.py
      ;;
    typescript)
      generate_typescript
      scenario node sdk/typescript/dist/scenario.js
      ;;
    openapi-generator)
      generate_openapi_generator
      scenario "$root/.venv-ogen/bin/python" sdk/openapi-generator/scenario.py
      ;;
    rust)
      generate_rust
      scenario "$root/target/sdk-rust/debug/scenario"
      ;;
    *)
      echo "unknown SDK '$lang' (python, typescript, openapi-generator or rust)" >&2
      exit 2
      ;;
  esac
done
echo "sdk scenarios passed: ${langs[*]}"
