"""Weights packed into one array per dtype for the wire, and read back exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedmed.common.models import build_model
from fedmed.common import packed_arrays
from fedmed.common.packed_arrays import (INLINE_PREFIX, LAYOUT_KEY, PackingError, has_weights, largest_object_bytes,
                                          pack, put, take, unpack_in_place)


def _state():
    state = build_model("cnn", 2, 28).state_dict()
    state["counter"] = torch.tensor(7, dtype=torch.int64)  # a buffer of another dtype, 0-d
    return state


def test_a_model_packs_into_one_array_per_dtype_and_unpacks_exactly():
    state = _state()
    packed, layout = pack(ArrayRecord(state))
    assert sorted(packed.keys()) == sorted({np.dtype("float32").str, np.dtype("int64").str})
    content = RecordDict({"arrays": packed, LAYOUT_KEY: layout})
    back = take(content, "arrays").to_torch_state_dict()
    assert list(back) == list(state)
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor)
    unpack_in_place(content, "arrays")
    assert LAYOUT_KEY not in content and list(content["arrays"].keys()) == list(state)


def test_a_small_model_rides_inline_in_a_record_the_message_carries_anyway():
    """No ArrayRecord, no Array, no chunk: three objects fewer for every message with weights."""
    state = _state()
    content = RecordDict({"site": ConfigRecord({"name": "A"})})
    put(content, "arrays", ArrayRecord(state), carrier="site")
    assert list(content.config_records) == ["site"] and LAYOUT_KEY in content["site"]
    assert not content.array_records and has_weights(content, "arrays", carrier="site")
    assert sorted(n for n in content["site"].keys() if n.startswith(INLINE_PREFIX)) == \
        sorted(INLINE_PREFIX + np.dtype(d).str for d in ("float32", "int64"))
    unpack_in_place(content, "arrays", carrier="site")
    assert dict(content["site"]) == {"name": "A"}
    back = content["arrays"].to_torch_state_dict()
    assert all(torch.equal(back[name], tensor) for name, tensor in state.items())


def test_an_unpacked_record_is_taken_as_it_is():
    record = ArrayRecord(_state())
    assert take(RecordDict({"arrays": record}), "arrays") is record


@pytest.mark.parametrize("tamper", ["short-array", "bad-json", "duplicate-name", "extra-dtype", "negative-shape"])
def test_a_packed_record_that_does_not_add_up_is_refused(tamper):
    packed, layout = pack(ArrayRecord(_state()))
    entries = json.loads(layout["layout"])
    f32 = np.dtype("float32").str
    if tamper == "short-array":
        packed[f32] = Array(packed[f32].numpy()[:-1].copy())
    elif tamper == "bad-json":
        layout = ConfigRecord({"layout": "[not json"})
    elif tamper == "duplicate-name":
        entries[1][0] = entries[0][0]
        layout = ConfigRecord({"layout": json.dumps(entries)})
    elif tamper == "extra-dtype":
        packed["<f8"] = Array(np.zeros(3))
    else:
        entries[0][2] = [-1, 2]
        layout = ConfigRecord({"layout": json.dumps(entries)})
    with pytest.raises(PackingError):
        take(RecordDict({"arrays": packed, LAYOUT_KEY: layout}), "arrays")


def test_the_coordinator_packs_each_round_model_once_for_all_sites(monkeypatch):
    """Flower's FedAvg hands every site's message the same RecordDict: packing it once per
    message would pack the packed record."""
    from flwr.supercore.task_identity import TaskIdentity

    from fedmed.common.federation import FederationConfig
    from fedmed.common.settings import ImageSettings
    from fedmed.server.app import initial_arrays
    from fedmed.server.strategy.registry import build_strategy

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)

    class Grid:
        def get_node_ids(self):
            return [1, 2, 3]

        def get_nodes(self):
            return []

    config = FederationConfig(rounds=1, model="cnn", image=ImageSettings(size=28), min_sites=1)
    strategy = build_strategy(config, on_event=lambda *a, **k: None)
    arrays = initial_arrays(config)
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({"x": 1}), Grid()))
    assert len(messages) == 3
    for msg in messages:
        assert LAYOUT_KEY not in msg.content.config_records  # a field of "config": one object fewer
        assert not msg.content.array_records  # the weights too: inline in "config"
        got = take(msg.content, "arrays", carrier="config").to_torch_state_dict()
        assert list(got) == list(arrays.keys())
        build_model("cnn", 2, 28).load_state_dict(got)


def test_a_model_too_large_for_one_object_travels_as_one_array_per_dtype(monkeypatch):
    monkeypatch.setattr(packed_arrays, "INLINE_MAX_BYTES", 1024)
    state = _state()
    content = RecordDict({"site": ConfigRecord({"name": "A"})})
    put(content, "arrays", ArrayRecord(state), carrier="site")
    assert sorted(content["arrays"].keys()) == sorted({np.dtype("float32").str, np.dtype("int64").str})
    assert not [n for n in content["site"].keys() if n.startswith(INLINE_PREFIX)]
    back = take(content, "arrays", carrier="site").to_torch_state_dict()
    assert all(torch.equal(back[name], tensor) for name, tensor in state.items())


def test_the_largest_object_on_the_wire_is_the_inline_weights_or_one_chunk():
    chunk = packed_arrays.FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE
    assert largest_object_bytes({"<f4": 1000, "<i8": 8}) == 1008
    assert largest_object_bytes({"<f4": 10 * chunk, "<i8": 8}) == chunk
    assert largest_object_bytes({"<f4": chunk, "<i8": 8}) == chunk  # not inline: one chunk


@pytest.mark.parametrize("tamper", ["short-bytes", "not-bytes", "missing-dtype", "extra-dtype", "also-an-array",
                                    "object-dtype"])
def test_inline_weights_that_do_not_add_up_are_refused(tamper):
    content = RecordDict({"site": ConfigRecord({"name": "A"})})
    put(content, "arrays", ArrayRecord(_state()), carrier="site")
    fields = content["site"]
    f32 = INLINE_PREFIX + np.dtype("float32").str
    if tamper == "short-bytes":
        fields[f32] = fields[f32][:-4]
    elif tamper == "not-bytes":
        fields[f32] = "text"
    elif tamper == "missing-dtype":
        del fields[INLINE_PREFIX + np.dtype("int64").str]
    elif tamper == "extra-dtype":
        fields[INLINE_PREFIX + "<f8"] = np.zeros(3).tobytes()
    elif tamper == "also-an-array":
        content["arrays"] = ArrayRecord(_state())
    else:
        entries = json.loads(fields[LAYOUT_KEY])
        entries[0][1] = "|O"
        fields[LAYOUT_KEY] = json.dumps(entries)
    with pytest.raises(PackingError):
        take(content, "arrays", carrier="site")


def test_a_layout_without_weights_is_refused():
    content = RecordDict({"site": ConfigRecord({"name": "A"})})
    put(content, "arrays", ArrayRecord(_state()), carrier="site")
    for name in [n for n in content["site"].keys() if n.startswith(INLINE_PREFIX)]:
        del content["site"][name]
    assert not has_weights(content, "arrays", carrier="site")
    with pytest.raises(PackingError):
        take(content, "arrays", carrier="site")
