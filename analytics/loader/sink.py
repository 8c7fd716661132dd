"""Where the loader writes rows: the `Sink` contract and an in-memory fake.

`write(table, rows, token)` stores the rows whose key is new and returns how many it
stored; it is idempotent twice over: a repeated `token` stores nothing, and a key
already stored is never stored again (the first row per key wins). It raises
`SinkUnavailable` when the store cannot be reached or refused the write; the loader
then retries the same batch, with the same token, until it succeeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from analytics.loader.rows import Row, Table, first_per_key


class SinkUnavailable(Exception):
    """The write did not happen, or it is unknown whether it did: retry it."""

    retriable = True


class Sink(Protocol):
    def write(self, table: Table, rows: Sequence[Row], token: str) -> int: ...


class MemorySink:
    """A `Sink` in a dict, with the same idempotence; `fail_next` simulates an outage."""

    def __init__(self) -> None:
        self.tables: dict[str, list[Row]] = {}
        self.tokens: set[str] = set()
        self.fail_next = 0

    def write(self, table: Table, rows: Sequence[Row], token: str) -> int:
        if self.fail_next > 0:
            self.fail_next -= 1
            raise SinkUnavailable("simulated outage")
        if token in self.tokens:
            return 0
        self.tokens.add(token)
        stored = self.tables.setdefault(table.name, [])
        known = first_per_key(table, stored)
        fresh = [row for key, row in first_per_key(table, rows).items() if key not in known]
        stored.extend(fresh)
        return len(fresh)
