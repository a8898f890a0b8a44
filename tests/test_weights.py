"""Where weights come from (tca.weights): checkpoints through open_clip.load_checkpoint behind a
weights-only check, the Hugging Face cache and offline mode; and load_model's seeded random
init, which leaves the caller's global RNG alone."""

from __future__ import annotations

import pickle

import open_clip
import pytest
import torch
from safetensors.torch import save_file

import tca
from tca import weights
from tca.errors import WeightsUnavailableError

from .conftest import TINY

PLAIN = "it must be a .safetensors file or a PyTorch state dict saved with plain tensors"


def _state(clip) -> dict[str, torch.Tensor]:
    return {k: v.clone().contiguous() for k, v in clip.model.state_dict().items()}


class _LegacyTensorState:
    """Pickles as a tensor with a legacy 3-tuple state: Tensor.__setstate__ accepts it, while the
    weights-only unpickler's BUILD calls ``set_(*state)``, which raises TypeError."""

    def __reduce__(self):
        return (torch.Tensor, (), (False, None, None))


class _CreatesFile:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
def test_a_pickle_that_open_clip_would_run_is_refused(tmp_path, monkeypatch):
    """open_clip.load_state_dict retries a torch.load that raised TypeError without
    weights_only; where that default is a full unpickle (torch < 2.6, or this variable) a
    crafted file runs code. tca reads it weights-only first and refuses it."""
    ran = tmp_path / "ran"
    path = tmp_path / "crafted.pt"
    with open(path, "wb") as f:  # a plain pickle: torch.load's legacy format path
        pickle.dump({"a": _LegacyTensorState(), "b": _CreatesFile(ran)}, f, protocol=2)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(WeightsUnavailableError) as info:
        tca.load_model(TINY, checkpoint=path)
    assert not ran.exists()
    message = str(info.value)
    assert message.startswith(f"cannot read checkpoint {str(path)!r} (TypeError: set_() ")
    assert message.endswith(f"); {PLAIN}")
    # the premise: open_clip alone runs the file's code (if this fails, open_clip no longer
    # retries without weights_only and weights._check_plain_tensors can go)
    with pytest.raises(RuntimeError, match="magic number"):
        open_clip.load_checkpoint(open_clip.create_model(TINY), str(path), weights_only=True)
    assert ran.exists()


@pytest.mark.parametrize(
    "content, why",
    [
        (b"not a checkpoint", "refused by a weights-only load, which unpickles tensors only: "),
        ([1, 2, 3], "AttributeError: 'list' object has no attribute 'items'"),
    ],
)
def test_unreadable_checkpoints_say_what_a_checkpoint_must_be(tmp_path, content, why):
    path = tmp_path / "w.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(WeightsUnavailableError) as info:
        tca.load_model(TINY, checkpoint=path)
    message = str(info.value)
    assert message.startswith(f"cannot read checkpoint {str(path)!r} ({why}")
    assert message.endswith(f"); {PLAIN}")


def test_a_corrupt_safetensors_file_is_unreadable(tmp_path, tiny_clip):
    path = tmp_path / "w.safetensors"
    save_file(_state(tiny_clip), str(path))
    path.write_bytes(path.read_bytes()[:1000])  # cut short
    with pytest.raises(WeightsUnavailableError) as info:
        tca.load_model(TINY, checkpoint=path)
    assert str(info.value).startswith(f"cannot read checkpoint {str(path)!r} (SafetensorError: ")
    assert str(info.value).endswith(f"); {PLAIN}")


def test_open_clip_adapts_checkpoints_of_other_versions(tmp_path, tiny_clip):
    """open_clip.load_checkpoint reshapes a 1-d logit_scale (older open_clip saves) to the
    model's 0-d one: a strict key and shape comparison of our own refused such files."""
    state = _state(tiny_clip)
    assert state["logit_scale"].shape == ()
    state["logit_scale"] = state["logit_scale"].reshape(1) + 1.0
    save_file(state, str(tmp_path / "old.safetensors"))
    clip = tca.load_model(TINY, checkpoint=tmp_path / "old.safetensors")
    assert clip.model.logit_scale.shape == ()
    assert clip.model.logit_scale.item() == state["logit_scale"].item()


def test_describe_mismatch_names_the_first_keys_sorted():
    keys = [f"k{i}" for i in (6, 2, 5, 1, 4, 3)]
    assert weights.describe_mismatch(keys, ["z"], ["s (checkpoint (2,), model (3,))"]) == (
        "6 missing key(s): k1, k2, k3, k4, k5, ...; 1 unexpected key(s): z; "
        "1 shape mismatch(es): s (checkpoint (2,), model (3,))"
    )
    assert weights.describe_mismatch([], [], []) == ""


def test_offline_mode_is_huggingface_hub_s(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert weights.hub_offline() is False
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert weights.hub_offline() is True


def test_nothing_cached_is_none(tmp_path):
    assert (
        weights.cached_file("tca-test/absent", ("open_clip_model.safetensors",), tmp_path) is None
    )
    assert weights.cached_weights({"hf_hub": "tca-test/absent/"}, tmp_path) is None
    assert weights.cached_weights({"url": "https://example.org/w.pt"}, tmp_path) is None
    assert not weights.tokenizer_cached("tca-test/absent", tmp_path)


def test_load_model_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a = tca.load_model(TINY, pretrained="none", seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    save_file(_state(a), str(tmp_path / "w.safetensors"))
    tca.load_model(TINY, checkpoint=tmp_path / "w.safetensors", seed=6)
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(17)  # wherever the global RNG stands, the seed alone decides the weights
    b = tca.load_model(TINY, pretrained="none", seed=5)
    # ... and they are open_clip's own initialisation under that seed
    torch.manual_seed(5)
    reference = open_clip.create_model(TINY)
    for key, value in reference.state_dict().items():
        assert torch.equal(a.model.state_dict()[key], value), key
        assert torch.equal(b.model.state_dict()[key], value), key
