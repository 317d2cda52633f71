"""The lxt side of the AttnLRP / CP-LRP parity test, run in a subprocess (lxt patches classes globally).

    python lxt_oracle.py GOLDEN_DIR OUT.npz

For every golden BERT (``bert_*``) and ViT (``vit_*``) stem, every input and class mode found in its
golden file, and both variants, writes ``{stem}__{input}__{mode}__{variant}__relevance`` (the input
relevance summed over the embedding / colour dimension: ``[n]`` word-pieces, ``[H, W]`` pixels),
``{stem}__{input}__{mode}__{variant}__logits`` and, for ViTs, ``{stem}__{input}__torchvision_logits``
(the stock torchvision model's logits before any patch, to check the weight mapping).

lxt 2.1 under transformers 5 (facts checked here): ``import lxt.efficient`` fails (its bundled BERT copy
imports ``transformers.modeling_attn_mask_utils``), so ``efficient/rules.py`` and ``efficient/patches.py``
are loaded by file path. Its ``patch_attention`` turns the ``AttentionInterface`` registry into a plain
dict, so for BERT the module-level ``eager_attention_forward`` is wrapped with lxt's own
``wrap_attention_forward`` (AttnLRP) or ``cp_wrap_attention_forward`` (CP-LRP), with ``nn.LayerNorm``
patched by ``layer_norm_forward`` and transformers' GELU and the pooler's ``nn.Tanh`` by
``non_linear_forward``, as lxt's BERT map does. For torchvision's ViT: lxt's ``vit_torch`` map (GELU by
``non_linear_forward``, LayerNorm by ``layer_norm_forward``, ``nn.MultiheadAttention`` by
``cp_multi_head_attention_forward``) is CP-LRP; AttnLRP wraps ``nn.MultiheadAttention.forward`` with
``wrap_attention_forward`` instead. Every patch is undone before the next variant.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


def load_lxt() -> types.ModuleType:
    """``lxt.efficient.patches`` (with its ``rules``) loaded by file path, without ``lxt.efficient/__init__``."""
    root = Path(importlib.util.find_spec("lxt").origin).parent / "efficient"
    package = types.ModuleType("lxt.efficient")
    package.__path__ = [str(root)]
    sys.modules["lxt.efficient"] = package
    for name in ("rules", "patches"):
        spec = importlib.util.spec_from_file_location(f"lxt.efficient.{name}", root / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["lxt.efficient.patches"]


@contextmanager
def restored(*owners: tuple[object, str]):
    """Put back the given class / module attributes on exit (lxt's patches replace them)."""
    saved = [(owner, name, vars(owner).get(name, None), name in vars(owner)) for owner, name in owners]
    try:
        yield
    finally:
        for owner, name, value, had in saved:
            if had:
                setattr(owner, name, value)
            elif hasattr(owner, name):
                delattr(owner, name)


def cases(golden: dict) -> list[tuple[str, str]]:
    return sorted({tuple(k.split("__")[:2]) for k in golden if k.count("__") == 2})


def target_of(mode: str, logits: torch.Tensor) -> int:
    return int(logits.argmax()) if mode == "top" else int(re.fullmatch(r"cls(\d+)", mode).group(1))


def bert_stem(patches, golden_dir: Path, stem: str, out: dict) -> None:
    import transformers.models.bert.modeling_bert as mb
    from transformers import BertConfig, BertForSequenceClassification
    from transformers.activations import GELUActivation

    config = BertConfig(**json.loads((golden_dir / f"{stem}_config.json").read_text())["bert_config"])
    config._attn_implementation = "eager"
    model = BertForSequenceClassification(config)
    state = torch.load(golden_dir / f"{stem}_state_dict.pt", weights_only=True)
    state.pop("bert.embeddings.position_ids", None)
    model.load_state_dict(state)
    model.eval().double()
    golden = dict(np.load(golden_dir / f"{stem}_golden.npz"))
    wraps = {"attnlrp": patches.wrap_attention_forward, "cp_lrp": patches.cp_wrap_attention_forward}
    owners = [(mb, "eager_attention_forward"), (torch.nn.LayerNorm, "forward")]
    owners += [(c, a) for c in (GELUActivation, torch.nn.Tanh) for a in ("forward", "original_forward")]
    for variant, wrap in wraps.items():
        with restored(*owners):
            mb.eager_attention_forward = wrap(mb.eager_attention_forward)
            patches.patch_method(patches.layer_norm_forward, torch.nn.LayerNorm)
            patches.patch_method(patches.non_linear_forward, GELUActivation, keep_original=True)
            patches.patch_method(patches.non_linear_forward, torch.nn.Tanh, keep_original=True)
            for inp, mode in cases(golden):
                ids = torch.from_numpy(golden[f"{inp}__input_ids"])
                mask = torch.from_numpy(golden[f"{inp}__attention_mask"])
                embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
                logits = model(inputs_embeds=embeds, attention_mask=mask).logits
                logits[0, target_of(mode, logits)].backward()
                key = f"{stem}__{inp}__{mode}__{variant}"
                out[f"{key}__relevance"] = (embeds * embeds.grad).sum(-1)[0].detach().numpy()
                out[f"{key}__logits"] = logits[0].detach().numpy()


def timm_to_torchvision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The golden timm ViT's state dict under torchvision ``VisionTransformer`` key names, key by key."""
    top = {
        "cls_token": "class_token",
        "pos_embed": "encoder.pos_embedding",
        "patch_embed.proj.weight": "conv_proj.weight",
        "patch_embed.proj.bias": "conv_proj.bias",
        "norm.weight": "encoder.ln.weight",
        "norm.bias": "encoder.ln.bias",
        "head.weight": "heads.head.weight",
        "head.bias": "heads.head.bias",
    }
    block = {
        "norm1.": "ln_1.",
        "attn.qkv.weight": "self_attention.in_proj_weight",
        "attn.qkv.bias": "self_attention.in_proj_bias",
        "attn.proj.": "self_attention.out_proj.",
        "norm2.": "ln_2.",
        "mlp.fc1.": "mlp.0.",
        "mlp.fc2.": "mlp.3.",
    }
    mapped = {}
    for key, value in state.items():
        if key in top:
            mapped[top[key]] = value
            continue
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
        rest = m.group(2)
        prefix = next(p for p in block if rest.startswith(p))
        mapped[f"encoder.layers.encoder_layer_{m.group(1)}.{block[prefix]}{rest[len(prefix) :]}"] = value
    return mapped


def vit_stem(patches, golden_dir: Path, stem: str, out: dict) -> None:
    from torchvision.models import vision_transformer as tv

    kw = json.loads((golden_dir / f"{stem}_config.json").read_text())["timm_kwargs"]
    model = tv.VisionTransformer(
        image_size=kw["img_size"],
        patch_size=kw["patch_size"],
        num_layers=kw["depth"],
        num_heads=kw["num_heads"],
        hidden_dim=kw["embed_dim"],
        mlp_dim=int(kw["embed_dim"] * kw.get("mlp_ratio", 4.0)),
        num_classes=kw["num_classes"],
    )
    model.load_state_dict(timm_to_torchvision(torch.load(golden_dir / f"{stem}_state_dict.pt", weights_only=True)))
    model.eval().double()
    golden = dict(np.load(golden_dir / f"{stem}_golden.npz"))
    inputs = sorted({k.split("__")[0] for k in golden if k.endswith("__input")})
    with torch.no_grad():
        for inp in inputs:
            out[f"{stem}__{inp}__torchvision_logits"] = model(torch.from_numpy(golden[f"{inp}__input"]))[0].numpy()
    mha = tv.nn.MultiheadAttention
    owners = [(c, a) for c in (tv.nn.GELU, mha) for a in ("forward", "original_forward")]
    owners.append((tv.nn.LayerNorm, "forward"))
    for variant in ("attnlrp", "cp_lrp"):
        with restored(*owners):
            patches.patch_method(patches.non_linear_forward, tv.nn.GELU, keep_original=True)
            patches.patch_method(patches.layer_norm_forward, tv.nn.LayerNorm)
            if variant == "cp_lrp":
                patches.patch_method(patches.cp_multi_head_attention_forward, mha, keep_original=True)
            else:
                mha.forward = patches.wrap_attention_forward(mha.forward)
            for inp, mode in cases(golden):
                x = torch.from_numpy(golden[f"{inp}__input"]).requires_grad_(True)
                logits = model(x)
                logits[0, target_of(mode, logits)].backward()
                key = f"{stem}__{inp}__{mode}__{variant}"
                out[f"{key}__relevance"] = (x * x.grad).sum(1)[0].detach().numpy()
                out[f"{key}__logits"] = logits[0].detach().numpy()


def main(golden_dir: str, out_path: str) -> None:
    golden = Path(golden_dir)
    patches = load_lxt()
    out: dict[str, np.ndarray] = {}
    for path in sorted(golden.glob("bert_*_golden.npz")):
        bert_stem(patches, golden, path.name.removesuffix("_golden.npz"), out)
    for path in sorted(golden.glob("vit_*_golden.npz")):
        vit_stem(patches, golden, path.name.removesuffix("_golden.npz"), out)
    np.savez(out_path, **out)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:3])
