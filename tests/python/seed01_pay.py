#!/usr/bin/env python3
"""Pay for a priced URL on the gateway with the seed SDK's own client, x402-mock 0.1.x.

Runs under ``tools/.venv-seed01`` (``make setup`` installs ``x402-mock==0.1.1`` there; 0.3.x
lives in ``tools/.venv``, the two cannot share a venv). Uses
``x402_mock.clients.http_client.Http402Client`` unchanged: the payment logic is the SDK's:

* 402 parsing (``Server402ResponsePayload``: ``access_token_endpoint`` and
  ``payment_scheme.payment_components``);
* component matching (``adapters_hub.match_payment_component``): the FIRST remote component
  whose ``payment_type`` is "evm", whose ``token`` is one of the SDK's built-in tokens for
  the registered chain (``adapters/evm/constants.py``: on eip155:11155111 USDC
  0x1c7D4B196Cb0C7B01d743Fbc6116a902379C7238) and whose ``amount`` is within the local cap;
* EIP-2612 signing (``EVMAdapter.signature``): spender = the component's
  ``metadata.wallet_address``, domain from its ``metadata`` name/version, ``chain_id``, the
  owner's on-chain ``nonces()`` read over the RPC given to ``AdapterHub(rpc_url=...)``;
* the token exchange (POST ``{"version", "permit"}``) and the Bearer retry.

This script only configures it through its public API (``AdapterHub(evm_private_key=...,
rpc_url=...)``, ``client.add_payment_method(chain_id, amount, currency)``) and counts the
exchanges with httpx ``event_hooks``.

Prints one JSON line: {"status", "body", "token_requests", "token_statuses", ...}; exit 0
only if the final status is 200. Connections leaving 127.0.0.1 are refused (offline guard).

Usage:
  X402_SEED_PRIVATE_KEY=0x... tools/.venv-seed01/bin/python tests/python/seed01_pay.py \\
      --url http://127.0.0.1:10000/api/weather --rpc-url http://127.0.0.1:8545 --amount 0.5
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

DEFAULT_CHAIN = "eip155:11155111"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GET a priced URL paying with the seed SDK (x402-mock 0.1.x) Http402Client.")
    p.add_argument("--url", required=True, help="priced URL on the gateway")
    p.add_argument("--rpc-url", required=True, help="JSON-RPC of the local chain")
    p.add_argument("--amount", required=True, help="spending cap in human units, e.g. 0.5")
    p.add_argument("--chain", default=DEFAULT_CHAIN, help=f"CAIP-2 chain registered with the SDK (default {DEFAULT_CHAIN})")
    p.add_argument("--currency", default="USDC")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--allow-non-loopback", action="store_true", help="disable the offline guard")
    return p.parse_args(argv)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


async def run(args: argparse.Namespace) -> Dict[str, Any]:
    import httpx
    from eth_account import Account
    from x402_mock.adapters.adapters_hub import AdapterHub
    from x402_mock.clients.http_client import Http402Client

    key = os.environ.get("X402_SEED_PRIVATE_KEY", "").strip()
    if not key:
        raise SystemExit("set X402_SEED_PRIVATE_KEY to the payer's private key")

    exchanges: List[Dict[str, Any]] = []

    async def on_request(request: httpx.Request) -> None:
        exchanges.append({
            "method": request.method,
            "url": str(request.url),
            "request_body": _text(request.content) if request.content else None,
        })

    async def on_response(response: httpx.Response) -> None:
        await response.aread()
        for ex in reversed(exchanges):
            if ex["url"] == str(response.request.url) and "status" not in ex:
                ex["status"] = response.status_code
                ex["response_body"] = _text(response.content)
                break

    hub = AdapterHub(evm_private_key=key, rpc_url=args.rpc_url, request_timeout=int(args.timeout))
    result: Dict[str, Any] = {}
    async with Http402Client(
        adapter_hub=hub,
        timeout=args.timeout,
        trust_env=False,
        event_hooks={"request": [on_request], "response": [on_response]},
    ) as client:
        try:
            client.add_payment_method(args.chain, float(args.amount), args.currency)
            response = await client.get(args.url)
            result = {"status": response.status_code, "body": _text(response.content)}
        except Exception as e:  # the SDK raises on a non-200 token answer (pydantic)
            last = exchanges[-1] if exchanges else {}
            result = {
                "status": last.get("status"),
                "body": last.get("response_body", ""),
                "error": f"{type(e).__name__}: {e}",
            }
            if os.environ.get("SEED_PAY_TRACEBACK"):
                traceback.print_exc(file=sys.stderr)

    posts = [ex for ex in exchanges if ex["method"] == "POST"]
    result["token_requests"] = len(posts)
    result["token_statuses"] = [ex.get("status") for ex in posts]
    result["permits"] = [json.loads(ex["request_body"])["permit"] for ex in posts if ex.get("request_body")]
    result["requests"] = [f'{ex["method"]} {ex["url"]} -> {ex.get("status")}' for ex in exchanges]
    result["payer"] = Account.from_key(key).address
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
