#!/usr/bin/env python3
"""Pay for a priced URL on the gateway with the official x402 v2 Python client (PyPI ``x402`` 2.x).

Uses the SDK's httpx integration unchanged: ``x402.http.clients.httpx.x402AsyncTransport``
(via the public ``x402_httpx_transport``) reads the 402's ``PAYMENT-REQUIRED`` header, lets
``x402.x402Client`` select an ``accepts`` entry and ``x402.mechanisms.evm.exact.ExactEvmScheme``
sign the ERC-3009 authorization, and retries the same request with ``PAYMENT-SIGNATURE``. This
script only configures it through its public API:

* ``x402Client().register("eip155:*", ExactEvmScheme(EthAccountSigner(account)))`` - the payer
  key (``eth_account.Account.from_key``); ``EthAccountSigner`` signs locally, no RPC.
* ``client.set_spend_controls({"allowed_assets": [{network, asset, max_amount_per_payment}]})``
  - the SDK's spend controls allow by default only the assets of its built-in table
  (``x402.mechanisms.evm.default_assets.find_default_asset``) below $1
  (``x402/client_base.py`` ``_apply_spend_controls``). Our local test USDC on eip155:31337 is not
  in that table, so it is opted in here with an atomic cap (``--max-amount``, base units).
* ``x402_httpx_transport(client, transport=<recorder>)`` - the SDK's transport wraps our
  recording transport, so every request it sends (the unpaid one and the paid retry) is seen;
  ``httpx.AsyncClient(trust_env=False)`` so no proxy from the environment is used.

Prints one JSON line ``{"status", "body", "payment_response", "requests", "payer", ...}`` where
``payment_response`` is the decoded ``PAYMENT-RESPONSE`` header (null if absent) and
``payment_response_sdk_ok`` says whether the SDK's own parser
(``x402HTTPClient.get_payment_settle_response``) accepts it. Exit 0 only if the final status is
200. By default every socket connection to a non-loopback address is refused (a guard that
proves the run is offline; it does not touch the SDK).

Usage:
  X402_V2_PRIVATE_KEY=0x... tools/.venv/bin/python tests/python/x402_v2_pay.py \
      --url http://127.0.0.1:10000/api/weather \
      --asset 0x5FbDB2315678afecb367f032d93F642f64180aa3 --max-amount 500000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import traceback
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from offline_guard import install_offline_guard  # noqa: E402

DEFAULT_NETWORK = "eip155:31337"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="GET a priced URL paying with the official x402 v2 Python client (httpx).")
    p.add_argument("--url", required=True, help="priced URL on the gateway")
    p.add_argument("--asset", required=True, help="token contract to allow in the SDK's spend controls (the local test USDC)")
    p.add_argument("--max-amount", required=True, help="per-payment cap for that asset in base units, e.g. 500000 (0.5 USDC)")
    p.add_argument("--network", default=DEFAULT_NETWORK, help=f"CAIP-2 network of the allowed asset (default {DEFAULT_NETWORK})")
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE", help="extra request header (repeatable)")
    p.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout, seconds (default 30)")
    p.add_argument("--dump-exchanges", metavar="FILE", help="write every HTTP exchange (headers and bodies) as JSON")
    p.add_argument("--allow-non-loopback", action="store_true", help="disable the offline guard")
    return p.parse_args(argv)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _b64_json(value: Optional[str]) -> Any:
    """Decodes a base64 JSON header value (standard alphabet, padding optional); None if absent."""
    if not value:
        return None
    try:
        raw = value.strip()
        raw += "=" * (-len(raw) % 4)
        return json.loads(base64.b64decode(raw, validate=True))
    except Exception as e:  # report it rather than hide it
        return {"undecodable": value, "error": f"{type(e).__name__}: {e}"}


async def run(args: argparse.Namespace) -> Dict[str, Any]:
    import httpx
    from eth_account import Account
    from x402 import x402Client
    from x402.http import x402HTTPClient
    from x402.http.clients.httpx import x402_httpx_transport
    from x402.mechanisms.evm.exact import ExactEvmScheme
    from x402.mechanisms.evm.signers import EthAccountSigner

    key = os.environ.get("X402_V2_PRIVATE_KEY", "").strip()
    if not key:
        raise SystemExit("set X402_V2_PRIVATE_KEY to the payer's private key")
    account = Account.from_key(key)

    exchanges: List[Dict[str, Any]] = []

    class Recorder(httpx.AsyncBaseTransport):
        """Sits under the SDK's transport: records each request it sends and the answer."""

        def __init__(self) -> None:
            self._inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            ex: Dict[str, Any] = {
                "method": request.method,
                "url": str(request.url),
                "request_headers": dict(request.headers.items()),
                "payment_signature": _b64_json(request.headers.get("payment-signature")),
            }
            exchanges.append(ex)
            response = await self._inner.handle_async_request(request)
            await response.aread()
            ex["status"] = response.status_code
            ex["response_headers"] = dict(response.headers.items())
            ex["response_body"] = _text(response.content)
            ex["payment_required"] = _b64_json(response.headers.get("payment-required"))
            return response

        async def aclose(self) -> None:
            await self._inner.aclose()

    headers: Dict[str, str] = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep:
            raise SystemExit(f"--header {h!r}: expected NAME:VALUE")
        headers[name.strip()] = value.strip()

    client = x402Client()
    client.register("eip155:*", ExactEvmScheme(signer=EthAccountSigner(account)))
    client.set_spend_controls({
        "allowed_assets": [
            {"network": args.network, "asset": args.asset, "max_amount_per_payment": str(args.max_amount)},
        ],
    })
    http_helper = x402HTTPClient(client)

    result: Dict[str, Any] = {}
    async with httpx.AsyncClient(
        transport=x402_httpx_transport(client, transport=Recorder()),
        timeout=args.timeout,
        trust_env=False,
    ) as http:
        try:
            response = await http.get(args.url, headers=headers or None)
            pr_header = response.headers.get("payment-response")
            result = {
                "status": response.status_code,
                "body": _text(response.content),
                "payment_response": _b64_json(pr_header),
            }
            if pr_header:
                try:
                    http_helper.get_payment_settle_response(response.headers.get)
                    result["payment_response_sdk_ok"] = True
                except Exception as e:
                    result["payment_response_sdk_ok"] = False
                    result["payment_response_sdk_error"] = f"{type(e).__name__}: {e}"
        except Exception as e:  # the SDK raises PaymentError on a failed step (e.g. spend controls)
            last = exchanges[-1] if exchanges else {}
            result = {
                "status": last.get("status"),
                "body": last.get("response_body", ""),
                "payment_response": _b64_json((last.get("response_headers") or {}).get("payment-response")),
                "error": f"{type(e).__name__}: {e}",
            }
            if os.environ.get("X402_V2_PAY_TRACEBACK"):
                traceback.print_exc(file=sys.stderr)

    result["requests"] = [
        {
            "method": ex["method"],
            "url": ex["url"],
            "status": ex.get("status"),
            "payment_signature": ex["payment_signature"] is not None,
        }
        for ex in exchanges
    ]
    paid = [ex["payment_signature"] for ex in exchanges if ex["payment_signature"] is not None]
    result["accepted"] = paid[-1].get("accepted") if paid and isinstance(paid[-1], dict) else None
    result["payer"] = account.address
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
