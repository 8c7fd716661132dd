"""Incremental server-sent-events parsing. Pure.

Providers stream `data: <json>` events separated by blank lines, in network
chunks that split lines anywhere. `SSEParser.feed(bytes)` returns the complete
events' data fields seen so far (multi-line data joined with newlines, comment
lines and other fields ignored); the `[DONE]` sentinel is returned like any
other data and interpreted by the caller.

Limit: one event may not exceed `MAX_EVENT_BYTES` (a provider that sends more
without a blank line is broken or hostile); `feed` raises `ValueError`.
"""

from __future__ import annotations

from typing import Final

MAX_EVENT_BYTES: Final = 4 * 1024 * 1024


class SSEParser:
    __slots__ = ("_buffer", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of every event completed by `chunk`, in order."""
        self._buffer += chunk
        events: list[bytes] = []
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                break
            line = self._buffer[:newline].rstrip(b"\r")
            self._buffer = self._buffer[newline + 1 :]
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
                continue
            if line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        pending = len(self._buffer) + sum(len(d) for d in self._data)
        if pending > MAX_EVENT_BYTES:
            raise ValueError(f"an SSE event exceeds {MAX_EVENT_BYTES} bytes")
        return events

    def close(self) -> list[bytes]:
        """Flush an event that the stream ended without a blank line after."""
        tail = self.feed(b"\n\n") if (self._buffer or self._data) else []
        self._buffer = b""
        return tail
