"""Safe, checked loading of state dicts (``weights_only=True`` or safetensors; never pickle)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from torch import nn

#: buffers older checkpoints saved that current model classes no longer register
_IGNORABLE_SUFFIXES = ("position_ids",)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found (expected a .pt/.pth state dict or .safetensors; `make data` fetches "
            "the ViT-B/16 weights)"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError, OSError for a truncated or foreign file
            raise ValueError(f"cannot read checkpoint {path}: {exc} (expected a complete .safetensors file)") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"cannot read checkpoint {path}: it holds Python objects other than tensors and plain containers; "
            "arbitrary pickles are refused (expected a state dict saved with torch.save, or .safetensors)"
        ) from None
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        detail = re.sub(r"\x1b\[[0-9;]*m", "", str(exc).splitlines()[0] if str(exc) else "")
        raise ValueError(
            f"cannot read checkpoint {path}: {type(exc).__name__}: {detail} "
            "(expected a state dict saved with torch.save; arbitrary pickles are refused)"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return obj


def load_state_dict_checked(model: nn.Module, path: str | Path) -> None:
    """Load a state dict strictly, naming missing, unexpected and mis-shaped keys in the error."""
    load_state_checked(model, read_state_dict(path), path)


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load an in-memory state dict strictly; errors name the keys and ``source`` (where it came from)."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.endswith(_IGNORABLE_SUFFIXES)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if own[k].shape != state[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append(f"shape mismatches {shapes[:8]}")
        raise ValueError(f"checkpoint {source} does not match the model config: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
