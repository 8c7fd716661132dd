"""schemas/kafka_partitioner.py gives the partitions of Kafka's default partitioner.

aiokafka's pure-Python `DefaultPartitioner` (a port of Java's `Utils.murmur2`) is the
reference: any difference would send records to a partition readers do not expect.
"""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as reference_murmur2
from hypothesis import given
from hypothesis import strategies as st

from schemas.kafka_partitioner import KeyPartitioner, murmur2, partition_for_key

# Known values of Java's org.apache.kafka.common.utils.Utils.murmur2 (Kafka's own tests).
JAVA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_java_client_vectors() -> None:
    for key, signed in JAVA_VECTORS.items():
        assert murmur2(key) == signed & 0xFFFFFFFF, key


@given(st.binary(max_size=200))
def test_same_hash_as_aiokafka(key: bytes) -> None:
    assert murmur2(key) == reference_murmur2(key)


@given(st.binary(max_size=80), st.integers(1, 64))
def test_same_partition_as_aiokafka(key: bytes, count: int) -> None:
    partitions = list(range(count))
    expected = DefaultPartitioner()(key, partitions, partitions)
    assert KeyPartitioner()(key, partitions, partitions) == expected
    assert partition_for_key(key, count) == expected


def test_repeated_and_alternating_keys_keep_their_partitions() -> None:
    partitioner = KeyPartitioner()
    keys = [f"req_{i:040x}".encode() for i in range(50)]
    for topic_partitions in (list(range(12)), list(range(3)), list(range(12))):
        for key in keys + keys[::-1]:
            expected = DefaultPartitioner()(key, topic_partitions, topic_partitions)
            assert partitioner(key, topic_partitions, topic_partitions) == expected


def test_keyless_records_go_to_an_available_partition() -> None:
    partitioner = KeyPartitioner()
    assert {partitioner(None, [0, 1, 2, 3], [2]) for _ in range(20)} == {2}
    assert {partitioner(None, [0, 1], []) for _ in range(50)} <= {0, 1}
