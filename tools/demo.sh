#!/usr/bin/env bash
# The whole stack on local defaults: anvil chain + test USDC, settler (SQLite), Envoy with
# the filter, a demo API, and a paid request with x402-pay.
#   tools/demo.sh demo   one paid request, settlement followed to its tx, then everything stops
#   tools/demo.sh run    same stack, left running; prints the command that pays it
# Keys are anvil's public dev keys: a local chain only, never real funds.
set -euo pipefail
mode=${1:-demo}
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUN=$ROOT/.run
BIN=$ROOT/target/debug
mkdir -p "$RUN"
rm -f "$RUN/envoy.pid"

ANVIL_PORT=${X402_ANVIL_PORT:-8545}
SETTLER_PORT=8402     # fixed in envoy/envoy.yaml
ENVOY_PORT=10000
UPSTREAM_PORT=8080
RPC=http://127.0.0.1:$ANVIL_PORT
NETWORK=eip155:31337
# anvil dev accounts: 0 = settler wallet (spender), 1 = payer, 9 = the API owner (pay_to).
SETTLER_KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80
SETTLER_ADDR=0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266
PAYER_KEY=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d
PAYER_ADDR=0x70997970C51812dc3A010C7d01b50e0d17dc79C8
PAY_TO=0xa0Ee7A142d267C1f36714E4a8F75612F20a79720
URL=http://127.0.0.1:$ENVOY_PORT/api/weather

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}

for port in $ANVIL_PORT $SETTLER_PORT $ENVOY_PORT $UPSTREAM_PORT 9901; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "port $port on 127.0.0.1 is in use (a previous 'make run'? stop it first)" >&2
    exit 1
  fi
done
[ "$mode" = demo ] && trap stop_all EXIT

wait_http() { # url, name
  for _ in $(seq 1 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "$2 did not come up; log: $RUN/$2.log" >&2; tail -n 20 "$RUN/$2.log" >&2; exit 1
}

say "anvil on $RPC"
tools/bin/anvil --port "$ANVIL_PORT" --host 127.0.0.1 --silent >"$RUN/anvil.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  curl -fsS -X POST -H 'content-type: application/json' \
    --data '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}' "$RPC" >/dev/null 2>&1 && break
  sleep 0.1
done

say "deploy test USDC, fund the payer with 10 USDC"
TOKEN=$("$BIN/x402-devchain" --rpc "$RPC" deploy --mint "$PAYER_ADDR=10")
echo "token $TOKEN"
# The batch settlement contract (many payments per transaction; the EIP-2612 spender).
SETTLEMENT=$("$BIN/x402-devchain" --rpc "$RPC" deploy-settlement --operator "$SETTLER_ADDR")
echo "settlement contract $SETTLEMENT"

say "settler on 127.0.0.1:$SETTLER_PORT (SQLite $RUN/settler.db)"
rm -f "$RUN"/settler.db*
KEYINFO=$("$BIN/x402-settler" token-key --token-key-file "$RUN/token.key")
# The gateway secret (settler --api-secret-file; Envoy reads it from X402_SETTLER_SECRET) and
# the settler's terms: the test token (EIP-712 "USDC" v2), paid to PAY_TO only.
( umask 077; python3 -c 'import secrets; print(secrets.token_hex(32))' >"$RUN/api.secret" )
cat >"$RUN/terms.json" <<EOT
{"assets": [{"network": "$NETWORK", "address": "$TOKEN", "name": "USDC", "version": "2",
             "decimals": 6, "pay_to": ["$PAY_TO"], "min_price": "0.001",
             "max_token_ttl_secs": 3600, "max_unsettled_per_payer": "1",
             "max_unsettled_total": "1000"}]}
EOT
export X402_KID=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["kid"])' <<<"$KEYINFO")
export X402_PUBLIC_KEY=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["public_key"])' <<<"$KEYINFO")
EVM_PRIVATE_KEY=$SETTLER_KEY RUST_LOG=${RUST_LOG:-info} "$BIN/x402-settler" \
  --listen 127.0.0.1:$SETTLER_PORT --database-url "sqlite://$RUN/settler.db?mode=rwc" \
  --rpc "$NETWORK=$RPC" --token-key-file "$RUN/token.key" \
  --settlement-contract "$NETWORK=$SETTLEMENT" \
  --api-secret-file "$RUN/api.secret" --terms-file "$RUN/terms.json" >"$RUN/settler.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$SETTLER_PORT/healthz" settler

say "demo API on 127.0.0.1:$UPSTREAM_PORT, Envoy with the x402 filter on 127.0.0.1:$ENVOY_PORT"
python3 tools/demo_upstream.py $UPSTREAM_PORT >"$RUN/upstream.log" 2>&1 &
pids+=($!)
export X402_TOKEN_ADDRESS=$TOKEN X402_PAY_TO=$PAY_TO X402_SPENDER=$SETTLEMENT
python3 tools/render.py envoy/envoy.yaml >"$RUN/envoy.yaml"
X402_SETTLER_SECRET=$(cat "$RUN/api.secret")
export X402_SETTLER_SECRET
# Envoy stops when its parent process exits (it gets SIGTERM), so a small subshell that
# outlives this script stays its parent.
( tools/bin/envoy -c "$RUN/envoy.yaml" --concurrency 1 --use-dynamic-base-id --log-level warn \
    >"$RUN/envoy.log" 2>&1 &
  echo $! >"$RUN/envoy.pid"; wait ) &
for _ in $(seq 1 50); do [ -s "$RUN/envoy.pid" ] && break; sleep 0.1; done
pids+=($(cat "$RUN/envoy.pid"))
for _ in $(seq 1 100); do curl -fsS -o /dev/null http://127.0.0.1:9901/ready 2>/dev/null && break; sleep 0.1; done
wait_http "http://127.0.0.1:9901/ready" envoy

rm -f "$RUN/tokens.json"
# The test token is not a known USDC: allow it and state its decimals (x402-pay never takes
# decimals from the server).
PAY=("$BIN/x402-pay" --max 0.5 --network "$NETWORK" --asset "$TOKEN" --asset-decimals "$TOKEN=6" --rpc "$NETWORK=$RPC" --cache-file "$RUN/tokens.json")
if [ "$mode" = run ]; then
  trap - EXIT
  printf '%s\n' "${pids[@]}" >"$RUN/pids"
  cat <<EOT

The stack is running (logs in .run/). Pay for the API with:

  X402_PRIVATE_KEY=$PAYER_KEY ${PAY[*]} --verbose $URL

Unpaid, it answers 402:   curl -i $URL
Stop everything:           kill \$(cat .run/pids)
EOT
  exit 0
fi

say "unpaid request"
curl -s -o /dev/null -w 'GET /api/weather -> %{http_code}\n' "$URL"

say "balances before"
"$BIN/x402-devchain" --rpc "$RPC" balances --token "$TOKEN" "$PAYER_ADDR" "$PAY_TO"

say "x402-pay $URL"
X402_PRIVATE_KEY=$PAYER_KEY "${PAY[@]}" --verbose "$URL" 2> >(tee "$RUN/pay.log" >&2)
echo
sleep 0.2
SETTLEMENT=$(sed -n 's/.*x402-pay status \([^ ]*\) .*/\1/p' "$RUN/pay.log" | head -n1)
[ -n "$SETTLEMENT" ] || { echo "no settlement id in x402-pay's output" >&2; exit 1; }

say "second request: the cached token pays nothing"
X402_PRIVATE_KEY=$PAYER_KEY "${PAY[@]}" --verbose "$URL"
echo

say "settlement $SETTLEMENT"
"$BIN/x402-pay" status --origin "http://127.0.0.1:$ENVOY_PORT" "$SETTLEMENT"

say "balances after"
"$BIN/x402-devchain" --rpc "$RPC" balances --token "$TOKEN" "$PAYER_ADDR" "$PAY_TO"
say "done: stopping anvil, settler, Envoy and the demo API"
