"""Flat keys and suggestions for unknown keys."""
from omegaconf import OmegaConf

from capsrun.config.keys import flat_keys, suggest_key
from capsrun.config.schema import Config


def test_unknown_keys_get_the_closest_suggestion():
    keys = flat_keys(OmegaConf.structured(Config))
    assert suggest_key("loss.recon_weigth", keys).endswith("did you mean 'loss.recon_weight'?")
    assert "did you mean 'trainer.max_grad_norm'" in suggest_key("max_grad_norm", keys)
