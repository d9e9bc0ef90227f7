#!/usr/bin/env python3
"""A Verifone SCA terminal in WebSocket mode, written the way seed 000 describes it.

PROTOCOL.md §2a: the terminal carries no client secret and never registers. It presents
a TLS client certificate, opens one WebSocket to the URL it was configured with (often
`/`), offers the subprotocol `sci`, sends `x-vfi-pinpad-id`, "and waits for POS
requests": every `<TRANSACTION>` it receives is answered with an SCA `<RESPONSE>`,
anything else is echoed.

One JSON line on stdout per event, for the black-box tests to read:
  {"event": "open", "subprotocol": "sci"}
  {"event": "message", "data": "..."}            (what the POS sent)
  {"event": "close", "code": 1001, "reason": "..."}
  {"event": "refused", "status": 403}            (the upgrade was refused)
  {"event": "failed", "error": "..."}            (TLS refused, or closed before an answer)
It stops by itself after --seconds. Needs `websockets` (pinned in .ci/run).

  seed000_sca_terminal.py --url wss://127.0.0.1:8443/ --cert terminal.pem \
      --key terminal-key.pem --ca relay.pem --pinpad-id 1
"""

import argparse
import asyncio
import json
import re
import ssl
import sys

import websockets
from websockets.asyncio.client import connect


def emit(**event):
    print(json.dumps(event), flush=True)


def sca_response(request: str) -> str:
    """The answer SCA gives to a POS request (seed 000's sample)."""
    command = re.search(r"<COMMAND>\s*([^<]*?)\s*</COMMAND>", request)
    text = "Session Started" if command and command.group(1) == "START" else "Approved"
    return (
        f"<RESPONSE> <RESPONSE_TEXT>{text}</RESPONSE_TEXT> <RESULT>OK</RESULT> "
        "<RESULT_CODE>-1</RESULT_CODE> <TERMINATION_STATUS>SUCCESS</TERMINATION_STATUS> "
        "<TRAINING_MODE>OFF</TRAINING_MODE> </RESPONSE>"
    )


async def terminal(args) -> int:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=args.ca)
    context.load_cert_chain(args.cert, args.key)
    try:
        async with connect(
            args.url,
            ssl=context,
            subprotocols=["sci"],
            additional_headers={"x-vfi-pinpad-id": args.pinpad_id},
            open_timeout=10,
        ) as ws:
            emit(event="open", subprotocol=ws.subprotocol)
            try:
                # "SCA will keep listening on this connection for any POS request."
                async for message in ws:
                    if isinstance(message, bytes):
                        emit(event="message", binary=message.hex())
                        await ws.send(message)
                        continue
                    emit(event="message", data=message)
                    if "<TRANSACTION>" in message:
                        await ws.send(sca_response(message))
                    else:
                        await ws.send(message)
            except websockets.exceptions.ConnectionClosed:
                pass
            emit(event="close", code=ws.close_code, reason=ws.close_reason)
            return 0
    except websockets.exceptions.InvalidStatus as refused:
        emit(event="refused", status=refused.response.status_code)
        return 0
    except (websockets.exceptions.InvalidHandshake, OSError, EOFError) as error:
        # With TLS 1.3 the relay refuses a client certificate after the client has sent
        # its last handshake flight: the client then sees the connection end instead of
        # an HTTP answer.
        emit(event="failed", error=f"{type(error).__name__}: {error}")
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="wss:// URL the terminal is configured with")
    parser.add_argument("--cert", required=True, help="PEM client certificate")
    parser.add_argument("--key", required=True, help="PEM private key of the certificate")
    parser.add_argument("--ca", required=True, help="PEM certificate(s) to trust for the relay")
    parser.add_argument("--pinpad-id", default="1", help="x-vfi-pinpad-id header value")
    parser.add_argument("--seconds", type=float, default=60, help="stop after this long")
    args = parser.parse_args()
    try:
        return asyncio.run(asyncio.wait_for(terminal(args), args.seconds))
    except asyncio.TimeoutError:
        emit(event="timeout")
        return 0


if __name__ == "__main__":
    sys.exit(main())
