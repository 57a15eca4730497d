"""A model's weights in a message as few objects as possible.

Flower sends an ArrayRecord as a tree of objects, two per tensor (the array and its
chunk), and a deployed receiver pulls each object with its own Fleet API request, which
the SuperLink handles in Python (routing, middleware, a database query or two): for
the 8-tensor `cnn`, about 20 requests per message each way, most of a deployed round's
requests and of the SuperLink's CPU. Packed, the same weights are one flat array per
dtype (one for every fedmed model) and a layout.

Where they go: a model whose packed bytes fit in one of Flower's array chunks (every
fedmed model on 28×28 and 64×64 images but `resnet18`) travels *inline*, each dtype's
bytes a field of a ConfigRecord the message carries anyway (its "carrier": the
coordinator's `config`, a site's status record), so the weights add no object to the
message at all; a larger one travels as an ArrayRecord of one array per dtype, stored
under the caller's key, which Flower chunks. Either way the layout — each tensor's name,
dtype and shape, in order — is the carrier's field `LAYOUT_KEY` (JSON); `pack` alone
gives it as a ConfigRecord of its own, stored under `LAYOUT_KEY`, which `take` reads
too. `take` is the only reader of what a site sends and refuses anything that does not
add up (`PackingError`); the coordinator's update checks then see the same named tensors
as before. A RecordDict without a layout is taken as unpacked, so callers that build
records themselves still work.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.common.constant import FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE

LAYOUT_KEY = "arrays-layout"  # ConfigRecord next to the packed ArrayRecord
INLINE_PREFIX = "arrays-bytes:"  # + dtype: one carrier field per dtype of inline weights
# Inline weights are one object: at most what Flower puts in one array chunk, so the
# largest upload a site makes (and the proxy's limit for it) does not grow.
INLINE_MAX_BYTES = FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
_LAYOUT_FIELD = "layout"
# A layout longer than this is not a fedmed model (resnet18 has about a hundred tensors).
MAX_TENSORS = 10_000
_KINDS = "biuf"  # bool, signed and unsigned integers, floats: what a state dict holds


class PackingError(ValueError):
    """A packed record whose layout and arrays do not match; the text is a fixed code."""


def _flatten(record: ArrayRecord) -> tuple[list, OrderedDict]:
    """`record`'s layout and its tensors as one flat numpy array per dtype."""
    layout, parts = [], OrderedDict()
    for name in record.keys():
        array = record[name].numpy()
        layout.append([name, array.dtype.str, list(array.shape)])
        parts.setdefault(array.dtype.str, []).append(array.reshape(-1))
    flat = OrderedDict((dtype, np.concatenate(p) if len(p) > 1 else np.ascontiguousarray(p[0]))
                       for dtype, p in parts.items())
    return layout, flat


def largest_object_bytes(bytes_per_dtype: dict) -> int:
    """The largest object a model with these packed sizes (bytes of each dtype's flat
    array) makes on the wire: all of them inline, or one array chunk."""
    total = sum(int(n) for n in bytes_per_dtype.values())
    if total <= INLINE_MAX_BYTES:
        return total
    return min(max(int(n) for n in bytes_per_dtype.values()), FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE)


def pack(record: ArrayRecord) -> tuple[ArrayRecord, ConfigRecord]:
    """`record`'s tensors as one flat array per dtype, and their layout."""
    layout, flat = _flatten(record)
    packed = ArrayRecord(array_dict=OrderedDict((dtype, Array(array)) for dtype, array in flat.items()))
    return packed, ConfigRecord({_LAYOUT_FIELD: json.dumps(layout)})


def put(content: RecordDict, key: str, record: ArrayRecord, carrier: str) -> None:
    """Store `record` packed in `content`, its layout as a field of the ConfigRecord
    `content[carrier]`: inline in that record when it fits (`INLINE_MAX_BYTES`), else as
    an ArrayRecord under `key`. Whatever `content[key]` held is replaced."""
    layout, flat = _flatten(record)
    fields = content[carrier]
    fields[LAYOUT_KEY] = json.dumps(layout)
    if sum(array.nbytes for array in flat.values()) <= INLINE_MAX_BYTES:
        for dtype, array in flat.items():
            fields[INLINE_PREFIX + dtype] = array.tobytes()
        if key in content.array_records:
            del content[key]
    else:
        content[key] = ArrayRecord(array_dict=OrderedDict((d, Array(a)) for d, a in flat.items()))


def _carrier_with_layout(content: RecordDict, carrier: str | None) -> ConfigRecord | None:
    if carrier is not None and carrier in content.config_records and LAYOUT_KEY in content[carrier]:
        return content[carrier]
    return None


def _layout_text(content: RecordDict, carrier: str | None) -> str | None:
    """The layout's JSON: a field of `content[carrier]`, else the record `LAYOUT_KEY`;
    None when the arrays are not packed."""
    fields = _carrier_with_layout(content, carrier)
    if fields is not None:
        return str(fields[LAYOUT_KEY])
    if LAYOUT_KEY in content.config_records:
        return str(content[LAYOUT_KEY].get(_LAYOUT_FIELD, ""))
    return None


def _inline(content: RecordDict, carrier: str | None) -> dict:
    """{dtype: bytes} of the weights inline in the carrier (empty when none are)."""
    fields = _carrier_with_layout(content, carrier)
    if fields is None:
        return {}
    return {name[len(INLINE_PREFIX):]: value for name, value in fields.items() if name.startswith(INLINE_PREFIX)}


def has_weights(content: RecordDict, key: str, carrier: str | None = None) -> bool:
    """Whether `content` carries weights at all: under `key`, or inline in `carrier`."""
    return key in content.array_records or bool(_inline(content, carrier))


def _layout(text: str) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    try:
        raw = json.loads(text)
        if not isinstance(raw, list) or len(raw) > MAX_TENSORS:
            raise PackingError("packed-layout-malformed")
        layout = [(str(name), np.dtype(dtype), tuple(int(n) for n in shape)) for name, dtype, shape in raw]
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, PackingError):
            raise
        raise PackingError("packed-layout-malformed") from None
    if len({name for name, _, _ in layout}) != len(layout) or \
            any(n < 0 for _, _, shape in layout for n in shape) or \
            any(dtype.kind not in _KINDS for _, dtype, _ in layout):
        raise PackingError("packed-layout-malformed")
    return layout


def _flat_arrays(content: RecordDict, key: str, carrier: str | None, sizes: dict[str, int]) -> dict:
    """Each dtype's flat array, checked against the layout's sizes."""
    inline = _inline(content, carrier)
    if inline and key in content.array_records:
        raise PackingError("packed-arrays-twice")  # which one would the receiver mean?
    if not inline and key not in content.array_records:
        raise PackingError("packed-arrays-missing")
    if set(sizes) != set(inline or content[key].keys()):
        raise PackingError("packed-arrays-do-not-match-layout")
    flat = {}
    for dtype, size in sizes.items():
        if inline:
            data = inline[dtype]
            if not isinstance(data, bytes) or len(data) != size * np.dtype(dtype).itemsize:
                raise PackingError("packed-arrays-do-not-match-layout")
            array = np.frombuffer(data, dtype=np.dtype(dtype))
        else:
            array = content[key][dtype].numpy()
        if array.dtype.str != dtype or array.ndim != 1 or array.size != size:
            raise PackingError("packed-arrays-do-not-match-layout")
        flat[dtype] = array
    return flat


def take(content: RecordDict, key: str, carrier: str | None = None) -> ArrayRecord:
    """The named tensors `put` stored with `carrier` (inline or under `key`), or the
    plain ArrayRecord under `key`."""
    text = _layout_text(content, carrier)
    if text is None:
        return content[key]
    layout = _layout(text)
    sizes: dict[str, int] = {}
    for _, dtype, shape in layout:
        sizes[dtype.str] = sizes.get(dtype.str, 0) + int(np.prod(shape, dtype=np.int64))
    flat = _flat_arrays(content, key, carrier, sizes)
    offsets = dict.fromkeys(sizes, 0)
    tensors = OrderedDict()
    for name, dtype, shape in layout:
        start = offsets[dtype.str]
        count = int(np.prod(shape, dtype=np.int64))
        tensors[name] = Array(flat[dtype.str][start:start + count].reshape(shape).copy())
        offsets[dtype.str] = start + count
    return ArrayRecord(array_dict=tensors)


def unpack_in_place(content: RecordDict, key: str, carrier: str | None = None) -> None:
    """Replace the packed weights by their named tensors under `key`; drop the layout
    and any inline bytes."""
    if _layout_text(content, carrier) is None:
        return
    record = take(content, key, carrier)
    fields = _carrier_with_layout(content, carrier)
    if fields is not None:
        for name in [n for n in fields.keys() if n == LAYOUT_KEY or n.startswith(INLINE_PREFIX)]:
            del fields[name]
    else:
        del content[LAYOUT_KEY]
    content[key] = record
