"""The CLI commands register on an argparse parser the way deploy/cli.py builds it."""

from __future__ import annotations

import argparse

from workers.batches.cli import add_commands as add_batch_commands
from workers.callbacks.cli import add_commands as add_callback_commands


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="tollway")
    sub = root.add_subparsers(dest="command", required=True)
    add_batch_commands(sub)
    add_callback_commands(sub)
    return root


def test_batch_commands_parse() -> None:
    args = parser().parse_args(["batch", "--url", "http://x:1", "submit", "in.jsonl", "--wait"])
    assert (args.file, args.wait, args.url) == ("in.jsonl", True, "http://x:1")
    for action in ("status", "cancel", "download"):
        assert parser().parse_args(["batch", action, "batch_1"]).id == "batch_1"
    assert callable(parser().parse_args(["batches-worker"]).func)


def test_webhook_commands_parse() -> None:
    args = parser().parse_args(
        ["webhooks", "replay", "--id", "msg_1", "--id", "msg_2", "--endpoint", "t/ops", "--enable"]
    )
    assert (args.id, args.endpoint, args.enable) == (["msg_1", "msg_2"], "t/ops", True)
    assert callable(parser().parse_args(["callbacks"]).func)
