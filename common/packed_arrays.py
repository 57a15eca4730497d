"""A model's weights in a message as one array per dtype instead of one per tensor.

Flower sends an ArrayRecord as a tree of objects, two per tensor (the array and its
chunk), and a deployed receiver pulls each object with its own Fleet API request, which
the SuperLink handles in Python (routing, middleware, a database query or two): for
the 8-tensor `cnn`, about 20 requests per message each way, most of a deployed round's
requests and of the SuperLink's CPU. Packed, the same weights are one array per dtype
(one for every fedmed model) and a layout, so a message is a handful of objects.

The layout — each tensor's name, dtype and shape, in order — travels as JSON, as the
field `LAYOUT_KEY` of a ConfigRecord the message carries anyway (its "carrier": the
coordinator's `config`, a site's status record), since every record is one more object and
so one more request each way; `pack` alone gives it as a ConfigRecord of its own, stored
under `LAYOUT_KEY`, which `take` reads too. `unpack` is the only reader of what a
site sends and refuses anything that does not add up (`PackingError`); the coordinator's
update checks then see the same named tensors as before. A RecordDict without a layout
is taken as unpacked, so callers that build records themselves still work.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

LAYOUT_KEY = "arrays-layout"  # ConfigRecord next to the packed ArrayRecord
_LAYOUT_FIELD = "layout"
# A layout longer than this is not a fedmed model (resnet18 has about a hundred tensors).
MAX_TENSORS = 10_000


class PackingError(ValueError):
    """A packed record whose layout and arrays do not match; the text is a fixed code."""


def pack(record: ArrayRecord) -> tuple[ArrayRecord, ConfigRecord]:
    """`record`'s tensors as one flat array per dtype, and their layout."""
    layout, flat = [], OrderedDict()
    for name in record.keys():
        array = record[name].numpy()
        layout.append([name, array.dtype.str, list(array.shape)])
        flat.setdefault(array.dtype.str, []).append(array.reshape(-1))
    packed = ArrayRecord(array_dict=OrderedDict(
        (dtype, Array(np.concatenate(parts) if len(parts) > 1 else np.ascontiguousarray(parts[0])))
        for dtype, parts in flat.items()))
    return packed, ConfigRecord({_LAYOUT_FIELD: json.dumps(layout)})


def put(content: RecordDict, key: str, record: ArrayRecord, carrier: str) -> None:
    """Store `record` packed in `content` under `key`, its layout as a field of the
    ConfigRecord `content[carrier]`."""
    packed, layout = pack(record)
    content[key] = packed
    content[carrier][LAYOUT_KEY] = layout[_LAYOUT_FIELD]


def _layout_text(content: RecordDict, carrier: str | None) -> str | None:
    """The layout's JSON: a field of `content[carrier]`, else the record `LAYOUT_KEY`;
    None when the arrays are not packed."""
    if carrier is not None and carrier in content.config_records and LAYOUT_KEY in content[carrier]:
        return str(content[carrier][LAYOUT_KEY])
    if LAYOUT_KEY in content.config_records:
        return str(content[LAYOUT_KEY].get(_LAYOUT_FIELD, ""))
    return None


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
            any(n < 0 for _, _, shape in layout for n in shape):
        raise PackingError("packed-layout-malformed")
    return layout


def take(content: RecordDict, key: str, carrier: str | None = None) -> ArrayRecord:
    """The named tensors stored under `key` (packed by `put` with `carrier`, or as a
    plain ArrayRecord)."""
    record = content[key]
    text = _layout_text(content, carrier)
    if text is None:
        return record
    layout = _layout(text)
    sizes: dict[str, int] = {}
    for _, dtype, shape in layout:
        sizes[dtype.str] = sizes.get(dtype.str, 0) + int(np.prod(shape, dtype=np.int64))
    if set(sizes) != set(record.keys()):
        raise PackingError("packed-arrays-do-not-match-layout")
    flat = {}
    for dtype, size in sizes.items():
        array = record[dtype].numpy()
        if array.dtype.str != dtype or array.ndim != 1 or array.size != size:
            raise PackingError("packed-arrays-do-not-match-layout")
        flat[dtype] = array
    offsets = dict.fromkeys(sizes, 0)
    tensors = OrderedDict()
    for name, dtype, shape in layout:
        start = offsets[dtype.str]
        count = int(np.prod(shape, dtype=np.int64))
        tensors[name] = Array(flat[dtype.str][start:start + count].reshape(shape).copy())
        offsets[dtype.str] = start + count
    return ArrayRecord(array_dict=tensors)


def unpack_in_place(content: RecordDict, key: str, carrier: str | None = None) -> None:
    """Replace the packed record under `key` by its named tensors and drop the layout."""
    if _layout_text(content, carrier) is not None:
        record = take(content, key, carrier)
        if carrier is not None and carrier in content.config_records and LAYOUT_KEY in content[carrier]:
            del content[carrier][LAYOUT_KEY]
        else:
            del content[LAYOUT_KEY]
        content[key] = record
