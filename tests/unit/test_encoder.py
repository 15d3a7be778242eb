"""The shared observation encoder and the one table of model kinds (issue 14, item 3)."""
import importlib

import pytest
import torch

from prevla_models import kinds
from prevla_models.encoder import LEGACY_NAMES, ObservationEncoder
from prevla_models.verifier import Verifier, VerifierConfig
from prevla_models.vla import VLA, VLAConfig

WORDS = ["pick", "up", "the", "bowl"]


def tiny_models():
    torch.manual_seed(0)
    vla = VLA(VLAConfig(image_size=32, horizon=4, d_model=32, n_layers=1, n_heads=2, head_layers=1,
                        vocab=WORDS, max_words=6, flow_steps=2))
    ver = Verifier(VerifierConfig(image_size=32, horizon=4, d_model=32, n_layers=1, n_heads=2,
                                  vocab=WORDS, max_words=6))
    return vla, ver


def obs(b=2):
    g = torch.Generator().manual_seed(1)
    return (torch.randint(0, 256, (b, 2, 64, 64, 3), dtype=torch.uint8, generator=g),
            torch.randn(b, 8, generator=g), ["pick up the bowl", "pick the zebra"][:b])


def test_vla_and_verifier_tokenize_observations_with_the_one_shared_encoder():
    vla, ver = tiny_models()
    calls = []
    for m in (vla, ver):
        assert type(m.observation) is ObservationEncoder
        m.observation.register_forward_hook(lambda mod, i, o: calls.append(type(mod).__name__))
        assert not any(hasattr(m, name) for name in LEGACY_NAMES)  # no second copy on the model
    images, proprio, instr = obs()
    vla.sample(images, proprio, instr, k=2)
    ver(images, proprio, instr, torch.zeros(2, 3, 4, 7))
    assert calls == ["ObservationEncoder", "ObservationEncoder"]
    assert torch.equal(vla.tokenize(instr), ver.tokenize(instr))


def test_checkpoints_from_before_the_encoder_load_into_the_same_numbers():
    for model in tiny_models():
        model.observation.set_normalization(torch.arange(8.0), torch.full((8,), 2.0))
        new = model.state_dict()
        old = {k.removeprefix("observation."): v for k, v in new.items()}  # the pre-encoder layout
        assert "image_encoder.0.weight" in old and "proprio_std" in old
        torch.manual_seed(123)
        fresh = type(model)(model.cfg)
        fresh.load_state_dict(old)  # strict: every old key lands on its new place
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in new.items())
        fresh.load_state_dict(new)  # files written since load as they are


def test_every_model_kind_is_one_row_of_the_kind_table():
    assert kinds.RUNNABLE == ("vla", "verifier") and set(kinds.KINDS) == {"vla", "verifier", "world_model"}
    for name, row in kinds.KINDS.items():
        module = importlib.import_module(row.module)
        assert module.CHECKPOINT_KIND == name
        assert callable(module.load_checkpoint) and callable(module.save_checkpoint)
        if name in kinds.RUNNABLE:
            assert row.graph_class().__module__ == "prevla_models.graphs" and row.inputs and row.outputs
        else:
            with pytest.raises(ValueError, match="no inference graph"):
                row.graph_class()
    with pytest.raises(ValueError, match="unknown model kind 'critic'"):
        kinds.get("critic")
    with pytest.raises(ValueError, match="unknown model kind 'world_model'"):
        kinds.get("world_model", runnable=True)
