"""The msgpack codec under every stored record: motion records, latent records, text-cache entries.

A record is a msgpack map (no pickle) whose first key is `schema`, the record kind's version;
the caller builds the map in a fixed key order, so equal records give equal bytes. A numpy
array is stored as the map `{dtype, shape, data}`: an explicit little-endian dtype string
("<f4", "<i8", ...), the shape as a list and the raw C-order bytes. Reading checks the schema,
that the expected fields are present, and each array's dtype and value count, raising the
record kind's own error type (a `ValueError` subclass) with a message naming the field.
"""
from __future__ import annotations

from typing import Iterable

import msgpack
import numpy as np

ARRAY_FIELDS = ("dtype", "shape", "data")


def pack_array(value, dtype: str) -> dict | None:
    """`value` as `{dtype, shape, data}` in `dtype` (None stays None)."""
    if value is None:
        return None
    arr = np.ascontiguousarray(np.asarray(value).astype(dtype, copy=False))
    return {"dtype": dtype, "shape": list(arr.shape), "data": arr.tobytes()}


def unpack_array(label: str, packed, dtypes: Iterable[str], error: type[ValueError]
                 ) -> np.ndarray | None:
    """The array of a `{dtype, shape, data}` map (a read-only view of its bytes; None stays
    None); raises `error` naming `label` unless its dtype is one of `dtypes` and its bytes fill
    its shape."""
    if packed is None:
        return None
    if not isinstance(packed, dict) or set(packed) != set(ARRAY_FIELDS):
        raise error(f"{label} is not an encoded array")
    dtypes = tuple(dtypes)
    if packed["dtype"] not in dtypes:
        raise error(f"{label} has dtype {packed['dtype']}, expected {' or '.join(dtypes)}")
    shape = tuple(int(s) for s in packed["shape"])
    arr = np.frombuffer(packed["data"], dtype=np.dtype(packed["dtype"]))
    if arr.size != int(np.prod(shape)):
        raise error(f"{label} holds {arr.size} values, shape {list(shape)} needs "
                    f"{int(np.prod(shape))}")
    return arr.reshape(shape)


def pack_record(fields: dict) -> bytes:
    """The msgpack bytes of a record map (keys in the order given)."""
    return msgpack.packb(fields, use_bin_type=True)


def unpack_record(data: bytes, schema, fields: Iterable[str], error: type[ValueError], *,
                  what: str = "record", hint: str = "") -> dict:
    """The record map in `data`; raises `error` unless it is msgpack, its `schema` equals
    `schema` and it holds every name in `fields`. `hint` ends the schema-mismatch message (how
    to rebuild)."""
    try:
        raw = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise error(f"not a msgpack {what} ({e})") from None
    if not isinstance(raw, dict) or "schema" not in raw:
        raise error(f"not a {what} (no schema version)")
    if raw["schema"] != schema:
        raise error(f"{what} schema version {raw['schema']!r}, this reader knows {schema!r}"
                    + hint)
    missing = sorted(set(fields) - set(raw))
    if missing:
        raise error(f"{what} lacks fields {missing}")
    return raw
