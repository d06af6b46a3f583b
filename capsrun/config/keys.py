"""Dotted config keys: flattening, listing and the one "did you mean" suggestion of capsrun."""
import difflib
from typing import Any, Iterable, List, Mapping

from omegaconf import DictConfig, OmegaConf


def flatten_dict(node: Mapping[str, Any], prefix: str = "") -> dict:
    """{dotted key: leaf value} of a nested plain dict (e.g. OmegaConf.to_container's result)."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flatten_dict(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def flat_keys(cfg: DictConfig, prefix: str = "") -> List[str]:
    """All leaf keys of a config as dotted paths; a missing value (`???`) counts as a leaf."""
    keys = []
    for key in cfg:
        value = cfg._get_node(key)
        if OmegaConf.is_dict(value):
            keys.extend(flat_keys(value, f"{prefix}{key}."))
        else:
            keys.append(f"{prefix}{key}")
    return keys


def suggest_key(key: str, known_keys: Iterable[str], command: str = "train") -> str:
    """A one-line message for an unknown key, with the closest valid key when there is one (by
    spelling, else a key with the same last part: `max_grad_norm` -> `trainer.max_grad_norm`)."""
    known_keys = list(known_keys)
    close = difflib.get_close_matches(key, known_keys, n=1, cutoff=0.6)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in known_keys if k.rsplit(".", 1)[-1] == leaf][:1]
    if close:
        hint = f"did you mean '{close[0]}'?"
    elif command == "train":
        hint = "run `capsrun train --cfg job` to list the keys"
    else:
        hint = f"capsrun {command} --help lists the keys"
    where = "config key" if command == "train" else "key"
    return f"unknown {where} '{key}'" + ("" if command == "train" else f" for capsrun {command}") + f"; {hint}"
