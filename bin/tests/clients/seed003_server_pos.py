#!/usr/bin/env python3
"""Server-side POS software written like seed 003's sample code (ShieldConex).

PROTOCOL.md §7c: it puts its client credentials on the WebSocket upgrade,
`additional_headers={"Authorization": f"Basic {BASE_64_KEY}"}`, never opens a control
channel, and sends a `traceId` heartbeat every half second (seed 003: "send a heartbeat
message at least once every 5 seconds"), waiting for each answer; then, optionally, one
tokenize request. Point it at §5a's `/cloud-connector/v1/devices/{tsn}/session`, §5's
session URL or §4's pos-listener.

One JSON line on stdout per event, for the black-box tests to read:
  {"event": "open", "subprotocol": null}
  {"event": "reply", "action": "heartbeat", "traceId": "...", "matches": true, "data": "..."}
  {"event": "close", "code": 4002, "reason": "undelivered frames=1 bytes=52"}
  {"event": "refused", "status": 401, "www_authenticate": "Bearer ...", "retry_after": null}
  {"event": "failed", "error": "..."}            (closed before an HTTP answer)
It stops by itself after --seconds. Needs `websockets` (pinned in .ci/run).

  seed003_server_pos.py --url ws://127.0.0.1:8080/cloud-connector/v1/devices/12345678/session \
      --client-id=ID --client-secret=SECRET --heartbeats 6 --tokenize

(`--client-id=ID` in one argument: an id or a secret may start with `-`.)
"""

import argparse
import asyncio
import base64
import json
import secrets
import ssl
import sys
import urllib.parse
import uuid

import websockets
from websockets.asyncio.client import connect


def emit(**event):
    print(json.dumps(event), flush=True)


def generate_hex_reference(length: int = 12) -> str:
    return secrets.token_hex((length + 1) // 2)[:length]


async def exchange(ws, request: dict) -> None:
    """Sends one request and waits for the answer that carries its traceId."""
    await ws.send(json.dumps(request))
    while True:
        message = await ws.recv()
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        try:
            trace = json.loads(text).get("traceId")
        except (ValueError, AttributeError):
            trace = None
        emit(
            event="reply",
            action=request["action"],
            traceId=request["traceId"],
            matches=trace == request["traceId"],
            data=text,
        )
        if trace == request["traceId"]:
            return


async def pos(args) -> int:
    # RFC 6749 §2.3.1: id and secret are form-encoded, then base64 of "id:secret".
    pair = f"{urllib.parse.quote_plus(args.client_id)}:{urllib.parse.quote_plus(args.client_secret)}"
    base_64_key = base64.b64encode(pair.encode()).decode()
    headers = {"Authorization": f"Basic {base_64_key}"}
    context = None
    if args.url.startswith("wss://"):
        context = ssl.create_default_context(cafile=args.ca)
    try:
        async with connect(args.url, additional_headers=headers, ssl=context, open_timeout=10) as ws:
            emit(event="open", subprotocol=ws.subprotocol)
            try:
                for _ in range(args.heartbeats):
                    heartbeat = {"traceId": str(uuid.uuid4()), "action": "heartbeat"}
                    await exchange(ws, heartbeat)
                    await asyncio.sleep(args.interval)
                if args.tokenize:
                    await exchange(
                        ws,
                        {
                            "traceId": str(uuid.uuid4()),
                            "action": "tokenization-tokenize",
                            "payload": {
                                "templateRef": "438ac8afecdd8035a21c126ee1fe6c19",
                                "omit": False,
                                "store": True,
                                "reference": generate_hex_reference(),
                                "values": [
                                    {"name": "card_number", "value": "4444333322221112"},
                                    {"name": "card_exp", "value": "1225"},
                                    {"name": "card_cvv", "value": "1234"},
                                ],
                            },
                        },
                    )
                if args.linger:
                    # Wait for whatever the relay does next (a 4002, a 1001).
                    await ws.wait_closed()
            except websockets.exceptions.ConnectionClosed:
                pass
            else:
                if not args.linger:
                    await ws.close()
            emit(event="close", code=ws.close_code, reason=ws.close_reason)
            return 0
    except websockets.exceptions.InvalidStatus as refused:
        emit(
            event="refused",
            status=refused.response.status_code,
            www_authenticate=refused.response.headers.get("WWW-Authenticate"),
            retry_after=refused.response.headers.get("Retry-After"),
        )
        return 0
    except (websockets.exceptions.InvalidHandshake, OSError, EOFError) as error:
        emit(event="failed", error=f"{type(error).__name__}: {error}")
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--ca", help="PEM certificate(s) to trust for a wss:// relay")
    parser.add_argument("--heartbeats", type=int, default=4)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between heartbeats")
    parser.add_argument("--tokenize", action="store_true", help="then send one tokenize request")
    parser.add_argument("--linger", action="store_true", help="then wait until the relay closes")
    parser.add_argument("--seconds", type=float, default=60, help="stop after this long")
    args = parser.parse_args()
    try:
        return asyncio.run(asyncio.wait_for(pos(args), args.seconds))
    except asyncio.TimeoutError:
        emit(event="timeout")
        return 0


if __name__ == "__main__":
    sys.exit(main())
