"""Avro binary encoders compiled for flat record schemas: the hot path's records, written fast.

Why: every sync request is Avro-encoded three times on its way (the request at
the ingress, its attempt and result at the router). fastavro's
`schemaless_writer` costs 15-20 us per record here, much of it per-call set-up
(schema lookup, a BytesIO); py-spy put `codec.encode` at several percent of the
router's CPU. A record schema whose fields are all primitives, enums, string
maps or `["null", primitive]` unions can be written by a straight-line function
generated once from the schema: 6-13 us for the same records.

Guarantee: for every record fastavro accepts, the generated encoder produces
the same bytes (tests/unit/test_avro_writer.py compares them on random records
of every shipped schema). A field missing from the record takes its default,
as with fastavro. `compile_writer` returns None for any schema shape
it does not handle (arrays, nested records, other unions), and the codec then
keeps using fastavro. Decoding stays with fastavro: it validates hostile input.

Pure: the standard library only; the code is generated from our own schema
files (field names are embedded with `repr`), never from input data.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any, Final

Encoder = Callable[[Mapping[str, Any]], bytes]

_SMALL: Final = tuple(bytes((i,)) for i in range(128))
_LONG_MIN: Final = -(2**63)
_LONG_MAX: Final = 2**63 - 1
_PRIMITIVE_LONG: Final = frozenset({"int", "long"})
_PRIMITIVES: Final = frozenset({"string", "bytes", "int", "long", "double", "float", "boolean"})


def write_long(value: int) -> bytes:
    """Avro `int`/`long`: zig-zag, then a little-endian base-128 varint."""
    n = (value << 1) ^ (value >> 63)
    if 0 <= n < 0x80:
        return _SMALL[n]
    if not _LONG_MIN <= value <= _LONG_MAX:
        raise OverflowError(f"{value} does not fit an Avro long")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class _Unsupported(Exception):
    pass


class _Generator:
    """Emits the body of `encode(record)` one field at a time."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.constants: dict[str, object] = {}
        self.enums: dict[str, tuple[str, ...]] = {}

    def constant(self, value: object) -> str:
        name = f"_c{len(self.constants)}"
        self.constants[name] = value
        return name

    def field(self, field: Mapping[str, Any], namespace: str | None) -> None:
        name = field["name"]
        default = field.get("default")
        branches = field["type"] if isinstance(field["type"], list) else [field["type"]]
        if isinstance(default, str) and "bytes" in branches:
            raise _Unsupported("a bytes default (JSON text to convert)")
        # As fastavro: a missing field takes its default (None without one, which only a
        # nullable field accepts).
        self.lines.append(f"    v = r.get({name!r}, {self.constant(default)})")
        self.value(field["type"], "v", namespace, indent="    ")

    def value(self, schema: Any, var: str, namespace: str | None, indent: str) -> None:
        if isinstance(schema, dict):
            self._complex(schema, var, namespace, indent)
        elif isinstance(schema, list):
            self._nullable(schema, var, namespace, indent)
        else:
            self._named(schema, var, namespace, indent)

    def _complex(
        self, schema: Mapping[str, Any], var: str, namespace: str | None, indent: str
    ) -> None:
        emit = self.lines.append
        kind = schema.get("type")
        if kind == "enum":
            symbols = tuple(schema["symbols"])
            self._register_enum(schema, namespace, symbols)
            self._enum_value(symbols, var, indent)
        elif kind == "map" and schema.get("values") == "string":
            emit(f"{indent}if {var}:")
            emit(f"{indent}    a(_long(len({var})))")
            emit(f"{indent}    for k, x in {var}.items():")
            emit(f"{indent}        b = k.encode()")
            emit(f"{indent}        a(_long(len(b))); a(b)")
            emit(f"{indent}        b = x.encode()")
            emit(f"{indent}        a(_long(len(b))); a(b)")
            emit(f"{indent}a(b'\\x00')")
        elif kind in _PRIMITIVES:
            self._named(kind, var, namespace, indent)  # {"type": "long"} etc.
        else:
            raise _Unsupported(kind)

    def _nullable(self, schema: list[Any], var: str, namespace: str | None, indent: str) -> None:
        if len(schema) != 2 or schema[0] != "null" or not isinstance(schema[1], str):
            raise _Unsupported(schema)
        self.lines.extend(
            [f"{indent}if {var} is None:", f"{indent}    a(b'\\x00')", f"{indent}else:"]
        )
        self.lines.append(f"{indent}    a(b'\\x02')")
        self._named(schema[1], var, namespace, indent + "    ")

    def _named(self, schema: Any, var: str, namespace: str | None, indent: str) -> None:
        emit = self.lines.append
        if schema == "string":
            emit(f"{indent}b = {var}.encode()")
            emit(f"{indent}a(_long(len(b))); a(b)")
        elif schema == "bytes":
            emit(f"{indent}a(_long(len({var}))); a({var})")
        elif schema in _PRIMITIVE_LONG:
            emit(f"{indent}a(_long({var}))")
        elif schema == "double":
            emit(f"{indent}a(_double({var}))")
        elif schema == "float":
            emit(f"{indent}a(_float({var}))")
        elif schema == "boolean":
            emit(f"{indent}a(b'\\x01' if {var} else b'\\x00')")
        else:
            symbols = self._enum(schema, namespace) if isinstance(schema, str) else None
            if symbols is None:
                raise _Unsupported(schema)
            self._enum_value(symbols, var, indent)

    def _enum_value(self, symbols: tuple[str, ...], var: str, indent: str) -> None:
        table = self.constant({s: write_long(i) for i, s in enumerate(symbols)})
        self.lines.append(f"{indent}a({table}[{var}])")

    def _register_enum(
        self, schema: Mapping[str, Any], namespace: str | None, symbols: tuple[str, ...]
    ) -> None:
        name = schema["name"]
        space = schema.get("namespace", namespace)
        self.enums[name] = symbols
        if space and "." not in name:
            self.enums[f"{space}.{name}"] = symbols

    def _enum(self, name: str, namespace: str | None) -> tuple[str, ...] | None:
        if name in self.enums:
            return self.enums[name]
        if namespace:
            return self.enums.get(f"{namespace}.{name}")
        return None


def compile_writer(schema: Mapping[str, Any]) -> Encoder | None:
    """A function writing records of `schema` (Avro binary, no framing), or None when
    the schema has a shape this module does not generate code for."""
    if schema.get("type") != "record":
        return None
    generator = _Generator()
    namespace = schema.get("namespace")
    try:
        for field in schema["fields"]:
            generator.field(field, namespace)
    except _Unsupported:
        return None
    source = "\n".join(
        [
            "def encode(r):",
            "    p = []",
            "    a = p.append",
            *generator.lines,
            "    return b''.join(p)",
        ]
    )
    namespace_vars: dict[str, Any] = {
        "_long": write_long,
        "_double": struct.Struct("<d").pack,
        "_float": struct.Struct("<f").pack,
        **generator.constants,
    }
    code = compile(source, f"<avro writer {schema.get('name', '?')}>", "exec")
    exec(code, namespace_vars)  # noqa: S102 - generated from our own schema files, not from data
    encoder: Encoder = namespace_vars["encode"]
    return encoder
