#!/usr/bin/env python3
"""Pay for a priced URL on the gateway with the seed SDK's own client (x402-mock 0.3.x).

Uses ``x402_mock.clients.Http402Client`` unchanged: the payment logic (402 parsing,
component matching, ERC-3009 signing, token exchange, Bearer retry) is the SDK's. This
script only configures it through its public API:

* ``AdapterHub(evm_private_key=...)`` - the payer key. The SDK itself reads env
  ``EVM_PRIVATE_KEY`` (x402_mock/adapters/evm/constants.py ``get_private_key_from_env``)
  when no key is passed; this script reads ``X402_SEED_PRIVATE_KEY`` first, then
  ``EVM_PRIVATE_KEY``.
* ``client.add_payment_method({...})`` - the local cap: payment_type "evm", currency
  "USDC" (selects ERC-3009 in EVMAdapter.signature), caip2, token and ``rpc_url``.
  Passing ``rpc_url`` is what keeps the SDK offline: without it
  EVMRegistry._process_rpc_url looks up Infura/Alchemy templates (GitHub) and
  chainlist.org. Token name/version/decimals are read over that RPC by the SDK
  (EVMRegistry._process_token_info) unless given with --token-name/--token-version/
  --token-decimals. The signature itself uses the server's component (its token_name,
  token_version, token_decimals, caip2, pay_to, amount), never the local one.
* httpx ``event_hooks`` (a public httpx.AsyncClient argument) to count and record the
  token requests; ``trust_env=False`` so no proxy from the environment is used.

Prints one JSON line: {"status", "body", "token_requests", ...}; exit 0 only if the final
status is 200. By default every socket connection to a non-loopback address is refused
(a guard that proves the run is offline; it does not touch the SDK).

Usage:
  X402_SEED_PRIVATE_KEY=0x... tools/.venv/bin/python tests/python/seed_pay.py \
      --url http://127.0.0.1:10000/api/weather --rpc-url http://127.0.0.1:8545 \
      --token 0x5FbDB2315678afecb367f032d93F642f64180aa3 --amount 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import traceback
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from offline_guard import install_offline_guard  # noqa: E402

DEFAULT_CAIP2 = "eip155:31337"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GET a priced URL paying with the seed SDK (x402-mock 0.3.x) Http402Client.")
    p.add_argument("--url", required=True, help="priced URL on the gateway")
    p.add_argument("--rpc-url", required=True, help="JSON-RPC of the local chain, e.g. http://127.0.0.1:8545")
    p.add_argument("--token", required=True, help="test USDC contract address")
    p.add_argument("--amount", required=True, help="spending cap in human units, e.g. 0.5")
    p.add_argument("--caip2", default=DEFAULT_CAIP2, help=f"chain (default {DEFAULT_CAIP2})")
    p.add_argument("--currency", default="USDC", help="currency of the local method; USDC/EURC make the SDK sign ERC-3009 (default USDC)")
    p.add_argument("--token-name", help="skip the SDK's on-chain name() read (local component only; signing uses the server's token_name)")
    p.add_argument("--token-version", help="skip the SDK's on-chain version() read")
    p.add_argument("--token-decimals", type=int, help="skip the SDK's on-chain decimals() read")
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help="extra request header (repeatable)")
    p.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout, seconds (default 30)")
    p.add_argument("--dump-exchanges", metavar="FILE", help="write every HTTP exchange (request and response bodies) as JSON")
    p.add_argument("--allow-non-loopback", action="store_true", help="disable the offline guard")
    return p.parse_args(argv)


def private_key_from_env() -> Optional[str]:
    for var in ("X402_SEED_PRIVATE_KEY", "EVM_PRIVATE_KEY"):
        v = os.environ.get(var, "").strip()
        if v:
            return v
    return None


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


async def run(args: argparse.Namespace) -> Dict[str, Any]:
    import httpx
    from eth_account import Account
    from x402_mock.adapters.adapters_hub import AdapterHub
    from x402_mock.clients.http_client import Http402Client

    key = private_key_from_env()
    if not key:
        raise SystemExit("set X402_SEED_PRIVATE_KEY (or the SDK's own EVM_PRIVATE_KEY) to the payer's private key")

    exchanges: List[Dict[str, Any]] = []

    async def on_request(request: httpx.Request) -> None:
        exchanges.append({
            "method": request.method,
            "url": str(request.url),
            "request_headers": {k: v for k, v in request.headers.items() if k.lower() != "authorization"},
            "authorization": request.headers.get("authorization", "")[:16] + ("..." if request.headers.get("authorization") else ""),
            "request_body": _text(request.content) if request.content else None,
        })

    async def on_response(response: httpx.Response) -> None:
        await response.aread()
        for ex in reversed(exchanges):
            if ex["url"] == str(response.request.url) and "status" not in ex:
                ex["status"] = response.status_code
                ex["response_body"] = _text(response.content)
                break

    headers: Dict[str, str] = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep:
            raise SystemExit(f"--header {h!r}: expected NAME:VALUE")
        headers[name.strip()] = value.strip()

    local_method: Dict[str, Any] = {
        "payment_type": "evm",
        "amount": float(args.amount),
        "currency": args.currency,
        "caip2": args.caip2,
        "token": args.token,
        "rpc_url": args.rpc_url,
    }
    if args.token_name is not None:
        local_method["token_name"] = args.token_name
    if args.token_version is not None:
        local_method["token_version"] = args.token_version
    if args.token_decimals is not None:
        local_method["token_decimals"] = args.token_decimals

    result: Dict[str, Any] = {}
    hub = AdapterHub(evm_private_key=key, request_timeout=int(args.timeout))
    async with Http402Client(
        adapter_hub=hub,
        timeout=args.timeout,
        trust_env=False,
        event_hooks={"request": [on_request], "response": [on_response]},
    ) as client:
        try:
            # Registration resolves token info over rpc_url (offline: 127.0.0.1).
            client.add_payment_method(local_method)
            response = await client.get(args.url, headers=headers or None)
            result = {"status": response.status_code, "body": _text(response.content)}
        except Exception as e:  # the SDK raises on any failed step (e.g. a non-200 token answer)
            # The step that failed: the last exchange (status None if it got no answer).
            last = exchanges[-1] if exchanges else {}
            result = {
                "status": last.get("status"),
                "body": last.get("response_body", ""),
                "error": f"{type(e).__name__}: {e}",
            }
            if os.environ.get("SEED_PAY_TRACEBACK"):
                traceback.print_exc(file=sys.stderr)

    token_posts = [ex for ex in exchanges if ex["method"] == "POST"]
    result["token_requests"] = len(token_posts)
    result["token_statuses"] = [ex.get("status") for ex in token_posts]
    result["requests"] = [f'{ex["method"]} {ex["url"]} -> {ex.get("status")}' for ex in exchanges]
    result["payer"] = Account.from_key(key).address
    if args.dump_exchanges:
        with open(args.dump_exchanges, "w") as f:
            json.dump(exchanges, f, indent=2)
    return result


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if not args.allow_non_loopback:
        install_offline_guard()
    result = asyncio.run(run(args))
    print(json.dumps(result))
    return 0 if result.get("status") == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
