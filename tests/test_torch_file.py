"""torch's `.pt` format written and read without torch (`fedmed.common.torch_file`), and
the checkpoints the coordinator writes with it: torch's own loader must read them, with
`weights_only=True`, exactly as it reads a `torch.save` file."""

from __future__ import annotations

import pickle
import zipfile

import numpy as np
import pytest
import torch

from fedmed.common import torch_file
from fedmed.common.checkpoint import load_checkpoint, load_checkpoint_arrays, save_checkpoint
from fedmed.common.federation import FederationConfig

ARRAYS = {
    "w": np.arange(6, dtype=np.float32).reshape(2, 3),
    "scalar": np.array(7, dtype=np.int64),
    "half": np.linspace(0, 1, 4, dtype=np.float16).reshape(2, 2, 1),
    "empty": np.zeros((0, 3), np.float32),
    "mask": np.array([True, False]),
    "transposed": np.arange(6.0).reshape(2, 3).T,
}


def test_torch_reads_what_is_written_without_torch(tmp_path):
    payload = {"format": "x", "round": 3, "ratio": np.float64(0.25), "none": None, "flag": True,
               "names": ["a", "b"], "nested": {"moments": [np.ones(3)]}, "state_dict": ARRAYS}
    path = tmp_path / "m.pt"
    torch_file.write(path, payload)
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert loaded["ratio"] == 0.25 and loaded["names"] == ["a", "b"] and loaded["none"] is None
    for name, array in ARRAYS.items():
        tensor = loaded["state_dict"][name]
        assert isinstance(tensor, torch.Tensor) and tensor.shape == array.shape
        assert np.array_equal(tensor.numpy(), array) and tensor.numpy().dtype == array.dtype
    back = torch_file.read(path)
    for name, array in ARRAYS.items():
        assert np.array_equal(back["state_dict"][name], array) and back["state_dict"][name].dtype == array.dtype
    assert np.array_equal(back["nested"]["moments"][0], np.ones(3))


def test_reads_what_torch_writes(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    path = tmp_path / "t.pt"
    torch.save({"view": base[:, 1:].t(), "shared": [base, base[1]], "n": torch.tensor(2)}, path)
    back = torch_file.read(path)
    assert np.array_equal(back["view"], base[:, 1:].t().numpy())
    assert np.array_equal(back["shared"][1], base[1].numpy()) and back["n"] == 2


def test_refuses_code_in_a_model_file(tmp_path):
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(print, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="print is not allowed"):
        torch_file.read(path)
    with pytest.raises(ValueError, match="not a fedmed model file"):
        load_checkpoint_arrays(path)


def test_checkpoint_written_without_torch_loads_with_torch(tmp_path):
    config = FederationConfig(classes=("a", "b"))
    state = {"conv.weight": np.random.default_rng(0).normal(size=(4, 1, 3, 3)).astype(np.float32)}
    path = save_checkpoint(tmp_path / "model-final.pt", state, config, server_round=2,
                           extra={"threshold": 0.4, "strategy_state": {"moments": {"m_t": {"x": np.zeros(2)}}}})
    with_torch = load_checkpoint(path)
    assert torch.equal(with_torch["state_dict"]["conv.weight"], torch.from_numpy(state["conv.weight"]))
    assert with_torch["round"] == 2 and with_torch["threshold"] == 0.4
    without = load_checkpoint_arrays(path)
    assert np.array_equal(without["state_dict"]["conv.weight"], state["conv.weight"])


def test_refuses_a_tensor_outside_its_storage(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.zeros(4)}, path)
    with zipfile.ZipFile(path) as archive:
        records = {name: archive.read(name) for name in archive.namelist()}
    name = next(n for n in records if n.endswith("/data.pkl"))
    # The tensor's size (4,) becomes (400,): it would read past its 16 bytes.
    records[name] = records[name].replace(b"K\x04\x85", b"M\x90\x01\x85", 1)
    with zipfile.ZipFile(path, "w") as archive:
        for n, data in records.items():
            archive.writestr(n, data)
    with pytest.raises(pickle.UnpicklingError, match="outside its storage"):
        torch_file.read(path)
