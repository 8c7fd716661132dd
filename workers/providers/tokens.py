"""Token counts read from provider answers. Pure.

Every adapter, streaming or not, reads the provider's counts through `token_count`,
so one rule holds for all of them: a count is a non-negative integer that fits the
Avro `long` the records carry (`transport.py` re-exports it for the adapters that
import it from there).
"""

from __future__ import annotations

from typing import Any, Final

MAX_TOKEN_COUNT: Final = 2**63
"""Token counts travel as Avro `long`s: anything at or above this is a broken answer."""


def token_count(value: Any) -> int:
    """A token count (null/absent is 0); ValueError/TypeError unless it fits an Avro `long`."""
    count = int(value or 0)
    if not 0 <= count < MAX_TOKEN_COUNT:
        raise ValueError(f"token count {count} out of range")
    return count
