"""`tollway batch ...` and `tollway batches-worker`.

    tollway batch submit FILE.jsonl [--wait]   upload, create, optionally follow to the end
    tollway batch status|cancel ID
    tollway batch download ID [--dir DIR]      output and error files
    tollway batches-worker                     run a batch worker (TOLLWAY_BATCHES_*)

The client commands talk to an ingress over HTTP (`--url`, default `$TOLLWAY_URL` or
http://127.0.0.1:8000) exactly as the OpenAI SDK would.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from workers.batches.progress import Sample, progress_line

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def _client(args: argparse.Namespace) -> httpx.Client:
    headers = {}
    if key := os.environ.get("TOLLWAY_API_KEY"):
        headers["authorization"] = f"Bearer {key}"
    return httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=600)


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        raise SystemExit(f"error {response.status_code}: {message}")
    return response.json()


def _print(obj: object) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def _submit(args: argparse.Namespace) -> int:
    path = Path(args.file)
    metadata = dict(kv.split("=", 1) for kv in args.metadata)
    with _client(args) as client:
        started = time.monotonic()
        with path.open("rb") as handle:
            uploaded = _check(
                client.post(
                    "/v1/files", files={"file": (path.name, handle)}, data={"purpose": "batch"}
                )
            )
        batch = _check(
            client.post(
                "/v1/batches",
                json={
                    "input_file_id": uploaded["id"],
                    "endpoint": "/v1/chat/completions",
                    "completion_window": args.window,
                    "metadata": metadata or None,
                },
            )
        )
        sys.stderr.write(
            f"uploaded {uploaded['bytes']:,} bytes as {uploaded['id']} "
            f"in {time.monotonic() - started:.1f}s; batch {batch['id']}\n"
        )
        if not args.wait:
            _print(batch)
            return 0
        return _follow(client, batch["id"], args.interval)


def _follow(client: httpx.Client, batch_id: str, interval_s: float) -> int:
    first: Sample | None = None
    tty = sys.stderr.isatty()
    while True:
        batch = _check(client.get(f"/v1/batches/{batch_id}"))
        now = time.monotonic()
        counts = batch.get("request_counts") or {}
        done = int(counts.get("completed", 0)) + int(counts.get("failed", 0))
        if first is None and done > 0:
            first = Sample(now, done)
        line = progress_line(batch, first, now)
        sys.stderr.write(("\r\x1b[K" if tty else "") + line + ("" if tty else "\n"))
        sys.stderr.flush()
        if batch["status"] in TERMINAL:
            sys.stderr.write("\n" if tty else "")
            _print(batch)
            return 0 if batch["status"] == "completed" else 1
        time.sleep(interval_s)


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(_check(client.get(f"/v1/batches/{args.id}")))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print(_check(client.post(f"/v1/batches/{args.id}/cancel")))
    return 0


def _download(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    with _client(args) as client:
        batch = _check(client.get(f"/v1/batches/{args.id}"))
        for kind in ("output", "error"):
            file_id = batch.get(f"{kind}_file_id")
            if not file_id:
                continue
            target = folder / f"{args.id}_{kind}.jsonl"
            with client.stream("GET", f"/v1/files/{file_id}/content") as response:
                if response.status_code >= 400:
                    response.read()
                    _check(response)
                with target.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
            sys.stdout.write(f"{target}\n")
    return 0


def _worker(_: argparse.Namespace) -> int:
    import uvloop

    from schemas.settings import KafkaSettings
    from workers.batches.consumer import serve
    from workers.batches.settings import BatchesSettings

    uvloop.run(serve(KafkaSettings(), BatchesSettings()))
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `batch` and `batches-worker` on the `tollway` parser."""
    batch = sub.add_parser("batch", help="submit and follow batches through an ingress")
    batch.add_argument(
        "--url", default=os.environ.get("TOLLWAY_URL", "http://127.0.0.1:8000"), help="ingress"
    )
    actions = batch.add_subparsers(dest="batch_command", required=True)
    submit = actions.add_parser("submit", help="upload FILE.jsonl and create a batch")
    submit.add_argument("file")
    submit.add_argument("--wait", action="store_true", help="follow it to the end")
    submit.add_argument("--window", default="24h")
    submit.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    submit.set_defaults(func=_submit)
    for name, func, text in (
        ("status", _status, "show a batch"),
        ("cancel", _cancel, "cancel a batch"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("id")
        action.set_defaults(func=func)
    download = actions.add_parser("download", help="write a batch's output and error files")
    download.add_argument("id")
    download.add_argument("--dir", default=".")
    download.set_defaults(func=_download)
    sub.add_parser("batches-worker", help="run a batch worker").set_defaults(func=_worker)
