"""Chapter 6: training checkpoints (minclip/checkpoint.py).

A checkpoint must give back exactly what was saved (a resumed run is bit for
bit the run that never stopped), and must never be left half-written.
"""
import json
import os

import numpy as np
import pytest

import minclip
import minclip.safetensors_io
from minclip import Tensor, backend, nn
from minclip.checkpoint import WeightsFileError, load_checkpoint, read_tensors, save_checkpoint
from minclip.optim import AdamW
from support.compare import array_equal


def small_model():
    return nn.Sequential(nn.Linear(3, 8), nn.GELU(), nn.LayerNorm(8), nn.Linear(8, 2))


def train_steps(model, optimizer, steps):
    """A few AdamW steps on random data drawn from minclip's generator."""
    for _ in range(steps):
        x = Tensor(backend.rng().standard_normal((4, 3)).astype("float32"))
        optimizer.zero_grad()
        (model(x) ** 2).mean().backward()
        optimizer.step()


def test_resuming_from_a_checkpoint_is_bit_identical(tmp_path):
    path = tmp_path / "latest.safetensors"
    model = small_model()
    optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    train_steps(model, optimizer, 3)
    save_checkpoint(path, model, optimizer, {"step": 3, "rng": backend.get_rng_state()})
    train_steps(model, optimizer, 3)                      # the run that never stopped

    backend.seed(123)                                     # a fresh process: other weights, other RNG state
    resumed = small_model()
    resumed_optimizer = AdamW(resumed.parameters(), lr=1.0)
    meta = load_checkpoint(path, resumed, resumed_optimizer)
    backend.set_rng_state(meta["rng"])
    train_steps(resumed, resumed_optimizer, 3)

    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert array_equal(a, b), (f"{name} differs after resuming (max diff {np.abs(a - b).max():.3g}): "
                                      "the model, the optimizer's moments and step, its lr and the RNG "
                                      "state must all round-trip exactly")
    assert meta["step"] == 3


def test_the_optimizer_state_round_trips_exactly(tmp_path):
    model = small_model()
    optimizer = AdamW(model.parameters(), lr=3e-3, betas=(0.8, 0.95), weight_decay=0.2)
    train_steps(model, optimizer, 2)
    save_checkpoint(tmp_path / "c.safetensors", model, optimizer)
    restored = AdamW(small_model().parameters(), lr=1.0)
    load_checkpoint(tmp_path / "c.safetensors", optimizer=restored)
    saved, loaded = optimizer.state_dict(), restored.state_dict()
    assert loaded["param_groups"][0]["lr"] == 3e-3 and list(loaded["param_groups"][0]["betas"]) == [0.8, 0.95]
    assert saved["state"].keys() == loaded["state"].keys()
    for index, state in saved["state"].items():
        for name, value in state.items():
            got = loaded["state"][index][name]
            assert array_equal(value, got) and np.asarray(value).dtype == np.asarray(got).dtype, (
                f"optimizer state {index}.{name} changed on the way: saved {value!r}, loaded {got!r}")


def test_a_clip_checkpoint_round_trips(tmp_path):
    from minclip.model import CLIP, CLIPConfig
    config = CLIPConfig.preset("tiny-vit", loss="siglip")     # 0-d logit_scale and logit_bias, and their moments
    model = CLIP(config)
    optimizer = AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = backend.rng().standard_normal(p.shape).astype(p.dtype)
    optimizer.step()
    save_checkpoint(tmp_path / "c.safetensors", model, optimizer, {"config": config.to_dict()})
    backend.seed(1)
    resumed = CLIP(config)
    resumed_optimizer = AdamW(resumed.parameters(), lr=1e-3)
    meta = load_checkpoint(tmp_path / "c.safetensors", resumed, resumed_optimizer)
    assert CLIPConfig.from_dict(meta["config"]) == config
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert array_equal(a, b) and a.shape == b.shape, f"{name}: {a.shape} saved, {b.shape} loaded"
    moments = resumed_optimizer.state_dict()["state"]
    scale_index = [i for i, p in enumerate(resumed.parameters()) if p is resumed.logit_scale][0]
    assert moments[scale_index]["exp_avg"].shape == (), "a 0-d parameter keeps 0-d moments"


def test_evaluation_gets_the_model_and_its_trained_tokenizer(tmp_path):
    from minclip.checkpoint import load_checkpoint_model
    from minclip.model import CLIP, CLIPConfig
    from minclip.tokenizer import CLIPTokenizer
    tokenizer = CLIPTokenizer.train(["a red circle", "a blue square"] * 5, vocab_size=520)
    tokenizer.save(str(tmp_path / "tokenizer.txt"))
    model = CLIP(CLIPConfig.preset("tiny-vit", vocab_size=520))
    save_checkpoint(tmp_path / "latest.safetensors", model, meta={"tokenizer": str(tmp_path / "tokenizer.txt")})
    loaded, loaded_tokenizer = load_checkpoint_model(tmp_path / "latest.safetensors")
    assert loaded.config == model.config
    assert loaded_tokenizer.encode("a red circle") == tokenizer.encode("a red circle")
    os.remove(tmp_path / "tokenizer.txt")
    with pytest.raises(FileNotFoundError, match="tokenizer.txt"):
        load_checkpoint_model(tmp_path / "latest.safetensors")


def test_the_file_layout(tmp_path):
    model = small_model()
    optimizer = AdamW(model.parameters(), lr=1e-3)
    train_steps(model, optimizer, 1)
    save_checkpoint(tmp_path / "c.safetensors", model, optimizer, {"epoch": 2})
    tensors, metadata = read_tensors(tmp_path / "c.safetensors")
    assert set(model.state_dict()) <= set(tensors), "the model's weights are stored under their own keys"
    assert "optimizer.state.0.exp_avg" in tensors and "optimizer.state.3.exp_avg_sq" in tensors, sorted(tensors)
    numbers = json.loads(metadata["optimizer"])
    assert numbers["state"]["0"] == {"step": 1}, "scalars (the step count) live in the JSON metadata"
    assert json.loads(metadata["meta"]) == {"epoch": 2}


def test_the_rng_state_round_trips(tmp_path):
    backend.seed(7)
    backend.rng().random(5)
    save_checkpoint(tmp_path / "c.safetensors", small_model(), meta={"rng": backend.get_rng_state()})
    expected = backend.rng().random(5)
    backend.set_rng_state(load_checkpoint(tmp_path / "c.safetensors")["rng"])
    assert array_equal(backend.rng().random(5), expected), "the same RNG state must give the same draws"


def test_an_interrupted_write_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "latest.safetensors"
    save_checkpoint(path, small_model(), meta={"step": 1})

    def crash_halfway(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")                       # the process dies here
        raise KeyboardInterrupt

    monkeypatch.setattr(minclip.safetensors_io, "save_file", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, small_model(), meta={"step": 2})
    assert load_checkpoint(path) == {"step": 1}, "the previous checkpoint must survive a crash while saving"
    assert os.listdir(tmp_path) == ["latest.safetensors"], f"a temporary file was left behind: {os.listdir(tmp_path)}"


def test_a_missing_checkpoint_names_its_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_checkpoint(tmp_path / "nowhere.safetensors", small_model())


def test_a_model_file_has_no_optimizer_state(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_checkpoint(path, small_model())
    with pytest.raises(WeightsFileError, match="no optimizer state"):
        load_checkpoint(path, optimizer=AdamW(small_model().parameters()))


def test_meta_must_be_json(tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(tmp_path / "c.safetensors", small_model(), meta={"weights": np.zeros(3)})
    assert not os.listdir(tmp_path), "nothing is written when the metadata cannot be"


@pytest.mark.parametrize("direction", ["numpy to active", "active to numpy"])
def test_a_checkpoint_resumes_on_the_other_backend(tmp_path, direction):
    """Weights, optimizer moments and the random state (a seed and a draw count) cross backends.

    In the CuPy pass of CI the active backend is CuPy (the stand-in), so this
    saves on one backend and resumes on the other.
    """
    source, target = ("numpy", backend.get_backend()) if direction == "numpy to active" else (backend.get_backend(), "numpy")
    model = small_model().to(source)
    optimizer = AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    backend.set_backend(source)
    try:
        train_steps(model, optimizer, 2)
        save_checkpoint(tmp_path / "c.safetensors", model, optimizer, {"rng": backend.get_rng_state()})
        saved_rng = backend.get_rng_state()
        backend.set_backend(target)
        backend.seed(123)
        resumed = small_model().to(target)
        resumed_optimizer = AdamW(resumed.parameters(), lr=1.0)
        meta = load_checkpoint(tmp_path / "c.safetensors", resumed, resumed_optimizer)
        backend.set_rng_state(meta["rng"])
        assert backend.get_rng_state() == saved_rng
        for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
            assert array_equal(a, b), f"{name} did not cross from {source}"
        assert {backend.backend_name(p.data) for p in resumed.parameters()} == {target}
        train_steps(resumed, resumed_optimizer, 1)                # the moments are on the target backend too
        assert resumed_optimizer.state_dict()["state"][0]["step"] == 3
    finally:
        backend.set_backend(os.environ.get("MINCLIP_BACKEND") or "numpy")
