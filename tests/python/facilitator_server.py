#!/usr/bin/env python3
"""An official x402 resource server (PyPI ``x402`` 2.x FastAPI middleware, unchanged) that
uses our settler as its facilitator.

The app is what an API owner writes from the SDK's own README: ``x402ResourceServer`` over an
``HTTPFacilitatorClient`` pointed at the settler's root (``POST /verify``, ``POST /settle``,
``GET /supported``), the EVM ``exact`` server scheme registered for the network, and
``x402.http.middleware.fastapi.payment_middleware`` guarding one route. The only settings are
the ones an owner of a custom token must give:

* the facilitator credential: ``create_headers`` sends ``Authorization: Bearer <secret>``
  (the secret is read from ``--facilitator-secret-file``, one of the settler's
  ``--facilitator-credentials-file`` entries) on verify, settle and supported;
* the price as an ``AssetAmount`` (``amount`` in base units, ``asset``, ``extra`` with the
  token's EIP-712 ``name``/``version``): the local test token is not in the SDK's default
  asset table, so a ``"$0.01"`` price cannot be converted for ``eip155:31337``.

Routes: ``GET /paid`` (priced; answers ``{"paid": true, "payer": ...}``) and ``GET /free``
(unpriced, used as a readiness probe). Prints ``listening <port>`` on stdout once the socket is
bound, after the middleware has tried ``/supported`` (when the facilitator cannot be reached
the SDK only warns, and tries again on the first priced request). Only loopback connections
are allowed (``offline_guard``).

Usage:
  tools/.venv/bin/python tests/python/facilitator_server.py --port 18801 \
      --facilitator-url http://127.0.0.1:18402 --facilitator-secret-file /tmp/x/shop.secret \
      --network eip155:31337 --asset 0x5FbD...0aa3 --pay-to 0xa0Ee...9720 --amount 10000
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at run time
# (a string "Request" would be taken for a query parameter).
import argparse
import os
import socket
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from offline_guard import install_offline_guard  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="x402 resource server (FastAPI) with a remote facilitator.")
    p.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    p.add_argument("--facilitator-url", required=True, help="the settler's base URL")
    p.add_argument("--facilitator-secret-file", required=True, help="file holding the facilitator credential's secret")
    p.add_argument("--network", required=True, help="CAIP-2 network, e.g. eip155:31337")
    p.add_argument("--asset", required=True, help="token contract")
    p.add_argument("--pay-to", required=True, help="recipient of the payments")
    p.add_argument("--amount", required=True, help="price in the token's base units")
    p.add_argument("--asset-name", default="USDC", help="EIP-712 domain name of the token (default USDC)")
    p.add_argument("--asset-version", default="2", help="EIP-712 domain version of the token (default 2)")
    return p.parse_args(argv)


def build_app(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from fastapi import FastAPI, Request
    from x402 import x402ResourceServer
    from x402.http import HTTPFacilitatorClient
    from x402.http.middleware.fastapi import payment_middleware
    from x402.http.types import PaymentOption, RouteConfig
    from x402.mechanisms.evm.exact import ExactEvmServerScheme

    with open(args.facilitator_secret_file) as f:
        secret = f.read().strip()
    if not secret:
        raise SystemExit(f"{args.facilitator_secret_file}: empty facilitator secret")
    bearer = {"Authorization": f"Bearer {secret}"}
    facilitator = HTTPFacilitatorClient({
        "url": args.facilitator_url,
        "create_headers": lambda: {"verify": bearer, "settle": bearer, "supported": bearer},
    })
    server = x402ResourceServer(facilitator)
    server.register(args.network, ExactEvmServerScheme())

    routes = {
        "GET /paid": RouteConfig(
            accepts=PaymentOption(
                scheme="exact",
                pay_to=args.pay_to,
                price={
                    "amount": str(args.amount),
                    "asset": args.asset,
                    "extra": {"name": args.asset_name, "version": args.asset_version},
                },
                network=args.network,
                max_timeout_seconds=300,
            ),
            description="A paid answer",
            mime_type="application/json",
        ),
    }

    app = FastAPI()
    # Built once: it reads the facilitator's /supported here, not per request.
    x402 = payment_middleware(routes, server)

    @app.middleware("http")
    async def x402_middleware(request: Request, call_next):  # type: ignore[no-untyped-def]
        return await x402(request, call_next)

    @app.get("/paid")
    async def paid(request: Request) -> dict:
        payload = getattr(request.state, "payment_payload", None)
        payer = None
        if payload is not None:
            auth = (payload.payload or {}).get("authorization") or {}
            payer = auth.get("from")
        return {"paid": True, "payer": payer}

    @app.get("/free")
    async def free() -> dict:
        return {"free": True}

    return app


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    install_offline_guard()
    import uvicorn

    app = build_app(args)
    # Bind first, so "listening" is printed only when a client can connect.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)
    print(f"listening {args.port}", flush=True)
    config = uvicorn.Config(app, log_level="info", access_log=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
