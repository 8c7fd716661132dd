"""`tollway callbacks` (the dispatcher) and `tollway webhooks replay`."""

from __future__ import annotations

import argparse
import asyncio
import sys


def _dispatcher(_: argparse.Namespace) -> int:
    import uvloop

    from schemas.settings import KafkaSettings
    from workers.callbacks.dispatcher import serve
    from workers.callbacks.settings import CallbacksSettings

    uvloop.run(serve(KafkaSettings(), CallbacksSettings()))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from schemas.settings import KafkaSettings
    from workers.callbacks.dispatcher import replay

    count = asyncio.run(
        replay(
            KafkaSettings(),
            webhook_ids=frozenset(args.id),
            endpoint_key=args.endpoint,
            since_ms=args.since_ms,
            enable=args.enable,
        )
    )
    sys.stdout.write(f"replayed {count} dead-lettered deliveries\n")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `callbacks` and `webhooks` on the `tollway` parser."""
    sub.add_parser("callbacks", help="run the webhook dispatcher").set_defaults(func=_dispatcher)
    webhooks = sub.add_parser("webhooks", help="manage webhook deliveries")
    actions = webhooks.add_subparsers(dest="webhooks_command", required=True)
    again = actions.add_parser("replay", help="send dead-lettered deliveries again")
    again.add_argument("--id", action="append", default=[], help="webhook-id (repeatable)")
    again.add_argument("--endpoint", default=None, help="endpoint key, e.g. default/ops")
    again.add_argument("--since-ms", type=int, default=0, help="dead since (Unix ms)")
    again.add_argument(
        "--enable", action="store_true", help="re-enable the endpoints first (after a 410)"
    )
    again.set_defaults(func=_replay)
