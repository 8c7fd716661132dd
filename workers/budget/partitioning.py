"""Which tollway.usage partition holds a team: Kafka's default partitioner (murmur2).

The cost processor keys usage by team id with the producer's default
partitioner, so this is where that team's scopes live: the budget processor
uses it to find the scopes it owns, enforcement to find the heartbeat that
vouches for a team's state.
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2

from schemas import topics


def usage_partition(team_id: str, partitions: int = topics.USAGE.partitions) -> int:
    digest: int = murmur2(team_id.encode())
    return (digest & 0x7FFFFFFF) % partitions
