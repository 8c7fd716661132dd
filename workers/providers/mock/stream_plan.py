"""What a mock stream sends, as the Anthropic and Gemini dialects plan it. Pure.

The dialect modules decide the events (plain dicts); the server frames them as
server-sent events and paces them (``MockSettings.stream_chunk_interval_ms``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """A streamed answer.

    Attributes:
        events: the JSON objects to send, in order, one server-sent event each.
        lead: how many of them go out together first (up to the first word, so the
            model's latency is the time to first token); the rest go one per interval.
    """

    events: list[dict[str, object]]
    lead: int
