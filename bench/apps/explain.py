"""``xaibench-explain``: explain one image or one text with any configured model and method.

::

    xaibench-explain photo.jpg --model vit_base --method attn_gradcam --target 243 --out out/photo
    xaibench-explain review.txt --model bert_small --method rollout
    xaibench-explain "a gripping , moving film" --model bert_small --method attn_gradcam
    xaibench-explain photo.jpg --model probe --method rollout model.probe=probes/dino/probe.json

``--model`` and ``--method`` are config names of ``conf/model`` and ``conf/method`` (composed with Hydra's
compose API, so everything ``xaibench`` runs works here); further arguments are Hydra overrides
(``model.checkpoint_path=...``, ``method.discard_ratio=0.9``). The command prints the top predicted
classes (names from the model, or timm's ImageNet-1k names for a 1000-class model, else indices) and
writes, for an image, ``PATH.png`` (the heatmap over the image, at the image's own size) and, for a
text, ``PATH.html`` (each word highlighted by its score) plus a highlighted copy on the terminal; and
in both cases ``PATH.npy``, the method's raw map (``[gh, gw]`` patch tokens, ``[H, W]`` pixels at the
model's input size, or ``[T]`` word-pieces).

The image is resized to the model's input size by squashing (the reference's ``Resize((224, 224))``),
so the token map covers the whole image and is upsampled back onto it bilinearly, min-max scaled as
the segmentation protocol does (REFERENCE §3.1).
"""

from __future__ import annotations

import argparse
import html
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xaibench.core.heatmaps import pixel_heatmaps
from xaibench.core.types import Attribution, AttributionMethod, Batch, ModelAdapter, Sample

log = logging.getLogger(__name__)


# -- building ---------------------------------------------------------------------------------------
def build(model: str, method: str, overrides: Sequence[str] = ()) -> tuple[ModelAdapter, AttributionMethod]:
    """Instantiate the model and method configs ``model`` and ``method`` (with Hydra ``overrides``)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from xaibench.core.config import compose_config

    bad = [o for o in overrides if not o.lstrip("+~").startswith(("model.", "method."))]
    if bad:
        raise ValueError(f"overrides must start with model. or method.; got {bad}")
    cfg = compose_config([f"model={model}", f"method={method}", *overrides])
    try:
        adapter = instantiate(cfg.model)
        attribution = instantiate(cfg.method)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, (ValueError, TypeError, FileNotFoundError)):
            raise cause from None
        raise
    if adapter.modality not in attribution.modalities:
        raise ValueError(
            f"method {method} supports {sorted(attribution.modalities)} models; {model} is a {adapter.modality} model"
        )
    return adapter, attribution


def class_names_of(model: ModelAdapter) -> list[str] | None:
    """The model's class names; timm's ImageNet-1k names for an unnamed 1000-class model; else ``None``."""
    names = model.class_names()
    if names is not None:
        return [str(n) for n in names]
    if int(getattr(model, "num_classes", 0)) == 1000:
        try:
            from timm.data import ImageNetInfo

            return list(ImageNetInfo("imagenet-1k").label_descriptions())
        except Exception:  # names are a convenience
            return None
    return None


def parse_target(target: str | None, names: Sequence[str] | None, num_classes: int) -> int | None:
    """``--target``: a class index, or a class name (case-insensitive; an ImageNet description matches by
    any of its comma-separated synonyms); ``None`` explains the predicted class."""
    if target is None:
        return None
    if target.lstrip("-").isdigit():
        index = int(target)
        if not 0 <= index < num_classes:
            raise ValueError(f"--target {index} is out of range for a model with {num_classes} classes")
        return index
    if not names:
        raise ValueError(f"--target {target!r} is not a class index and the model has no class names")
    wanted = target.strip().lower()
    exact = [i for i, n in enumerate(names) if n.lower() == wanted]
    if not exact:
        exact = [i for i, n in enumerate(names) if wanted in (s.strip().lower() for s in n.split(","))]
    if len(exact) == 1:
        return exact[0]
    partial = [i for i, n in enumerate(names) if wanted in n.lower()]
    if len(partial) == 1:
        return partial[0]
    options = exact or partial
    if options:
        shown = ", ".join(f"{i}: {names[i]}" for i in options[:8])
        raise ValueError(f"--target {target!r} matches several classes ({shown}); give the index")
    raise ValueError(f"--target {target!r} matches no class name (e.g. {', '.join(names[:5])})")


# -- outputs ------------------------------------------------------------------------------------------
def heatmap_at(attribution: Attribution, size: tuple[int, int]) -> np.ndarray:
    """The first sample's map as a ``[H, W]`` float32 heatmap in ``[0, 1]`` at ``size`` (bilinear, min-max)."""
    maps = attribution.maps[:1].detach().float().cpu()
    if torch.isnan(maps).any():
        log.warning("the map has NaN entries (a constant map with constant_map=nan?); drawn as 0")
        maps = torch.nan_to_num(maps, nan=0.0)
    if attribution.level == "pixels" and tuple(maps.shape[-2:]) != tuple(size):
        # pixel maps are at the model's input size (the image was resized to it): back to the picture's size
        maps = torch.nn.functional.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    first = Attribution(maps, attribution.targets[:1], attribution.logits[:1], attribution.level)
    return pixel_heatmaps(first, size)[0].numpy().astype(np.float32)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a colour-mapped heatmap ``[H, W]`` in ``[0, 1]`` over an RGB ``uint8`` image ``[H, W, 3]``."""
    from matplotlib import colormaps

    if cmap not in colormaps:
        raise ValueError(f"unknown colour map {cmap!r} (e.g. jet, inferno, viridis)")
    colour = colormaps[cmap](heat)[..., :3]
    mixed = (1 - alpha) * image.astype(np.float32) / 255 + alpha * colour
    return (np.clip(mixed, 0, 1) * 255 + 0.5).astype(np.uint8)


def _word_scores(model: ModelAdapter, attribution: Attribution, batch: Batch) -> np.ndarray:
    scores = model.word_scores(attribution.maps.detach().float().cpu(), batch)[0].numpy()
    return scores[: len(batch.extras["words"][0])]


def _scaled(scores: np.ndarray) -> np.ndarray:
    """Min-max over the scored words; NaN (words outside the model window) stays NaN."""
    finite = np.isfinite(scores)
    out = np.full_like(scores, np.nan, dtype=np.float64)
    if finite.any():
        lo, hi = scores[finite].min(), scores[finite].max()
        out[finite] = (scores[finite] - lo) / (hi - lo) if hi > lo else 0.0
    return out


def text_html(words: Sequence[str], scores: np.ndarray, title: str, lines: Sequence[str]) -> str:
    """A standalone HTML page with each word's background red in proportion to its (scaled) score."""
    spans = []
    for word, s in zip(words, _scaled(scores), strict=True):
        if np.isfinite(s):
            spans.append(
                f'<span title="{s:.3f}" style="background-color: rgba(220, 30, 30, {s:.3f})">{html.escape(word)}</span>'
            )
        else:
            spans.append(f'<span title="no score" style="color: #888">{html.escape(word)}</span>')
    info = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>"
        + html.escape(title)
        + "</title></head>\n<body style='font-family: sans-serif; max-width: 60em'>\n<h3>"
        + html.escape(title)
        + f"</h3>\n<ul>{info}</ul>\n<p style='line-height: 1.8'>"
        + " ".join(spans)
        + "</p>\n</body></html>\n"
    )


def text_terminal(words: Sequence[str], scores: np.ndarray, color: bool) -> str:
    """The text with each word highlighted: 24-bit ANSI background colours, or ``[[word]]`` for the words
    scoring at least 0.5 (scaled) when ``color`` is off."""
    parts = []
    for word, s in zip(words, _scaled(scores), strict=True):
        if not np.isfinite(s):
            parts.append(word)
        elif color:
            level = int(round(255 * (1 - s)))
            parts.append(f"\x1b[48;2;255;{level};{level}m\x1b[38;2;0;0;0m{word}\x1b[0m")
        else:
            parts.append(f"[[{word}]]" if s >= 0.5 else word)
    return " ".join(parts)


def _top_classes(
    logits: torch.Tensor, names: Sequence[str] | None, k: int, multi_label: bool = False
) -> list[tuple[int, float, str]]:
    # a multi-label model scores each class on its own (sigmoid), a single-label one over all classes
    probs = (logits.detach().float().sigmoid() if multi_label else logits.detach().float().softmax(dim=-1))[0]
    values, indices = probs.topk(min(k, probs.numel()))
    return [
        (int(i), float(p), names[int(i)] if names and int(i) < len(names) else f"class {int(i)}")
        for p, i in zip(values, indices, strict=True)
    ]


# -- the command ----------------------------------------------------------------------------------------
def explain(
    source: str,
    model: ModelAdapter,
    method: AttributionMethod,
    target: int | None = None,
    out: str | Path | None = None,
    top: int = 5,
    device: str = "cpu",
    alpha: float = 0.5,
    cmap: str = "jet",
    color: bool = False,
    label: str = "",
) -> dict[str, Any]:
    """Explain one image file or one text and write the outputs (see the module docstring).

    Args:
        source: an image file (image models), or a text file or the text itself (text models).
        target: class to explain; ``None``: the predicted class.
        out: output path without suffix; default ``<input stem>.<model>.<method>`` in the working folder.

    Returns:
        ``{"top": [(index, probability, name), ...], "target": (index, name), "files": [...],
        "terminal": str}``.
    """
    from PIL import Image

    from xaibench.core.io import resolve_device

    model.to(device=resolve_device(device))
    names = class_names_of(model)
    path = Path(source).expanduser()
    if model.modality == "image":
        if not path.is_file():
            raise FileNotFoundError(f"image {path} not found")
        from xaibench.datasets.image_folder import load_rgb, open_rgb

        # the dataset loader's decoding (16-bit images scaled, CMYK and palettes converted) for the overlay too
        original = np.asarray(open_rgb(path), dtype=np.uint8).copy()
        sample = Sample(id=path.stem, image=load_rgb(path, model.image_size, "squash"))
        stem = path.stem
    else:
        text = path.read_text(encoding="utf-8") if path.is_file() else source
        words = tuple(text.split())
        if not words:
            raise ValueError("the text is empty")
        sample = Sample(id=path.stem if path.is_file() else "text", words=words)
        stem = path.stem if path.is_file() else "text"
    batch = model.batch_to(model.collate([sample]))
    wanted = None if target is None else torch.tensor([target], device=model.device)
    attribution = method(model, batch, wanted)
    explained = int(attribution.targets[0])
    out_stem = Path(out) if out is not None else Path.cwd() / f"{stem}.{label or model.name}.{method.name}"
    out_stem = out_stem.with_suffix("") if out_stem.suffix in (".png", ".html", ".npy") else out_stem
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    files = []
    raw = out_stem.with_name(out_stem.name + ".npy")
    np.save(raw, attribution.maps[0].detach().float().cpu().numpy())
    files.append(raw)
    top_k = _top_classes(attribution.logits, names, top, model.multi_label)
    target_name = names[explained] if names and explained < len(names) else f"class {explained}"
    terminal = ""
    if model.modality == "image":
        height, width = original.shape[:2]
        picture = overlay(original, heatmap_at(attribution, (height, width)), alpha=alpha, cmap=cmap)
        png = out_stem.with_name(out_stem.name + ".png")
        Image.fromarray(picture).save(png)
        files.insert(0, png)
    else:
        scores = _word_scores(model, attribution, batch)
        lines = [f"model {model.name}, method {method.name}", f"explained class: {explained} ({target_name})"]
        lines += [f"p={p:.4f}  {i}: {n}" for i, p, n in top_k]
        page = out_stem.with_name(out_stem.name + ".html")
        page.write_text(text_html(sample.words, scores, f"{method.name} on {stem}", lines), encoding="utf-8")
        files.insert(0, page)
        terminal = text_terminal(sample.words, scores, color)
    return {"top": top_k, "target": (explained, target_name), "files": files, "terminal": terminal}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xaibench-explain",
        description="Explain one image or one text: heatmap PNG (or HTML for text) plus the raw map as .npy.",
    )
    parser.add_argument("input", help="an image file (image models), or a text file or the text itself (text models)")
    parser.add_argument("--model", required=True, help="model config name (conf/model), e.g. vit_base, bert_small")
    parser.add_argument("--method", required=True, help="method config name (conf/method), e.g. rollout")
    parser.add_argument("--target", default=None, help="class to explain (index or name); default: the prediction")
    parser.add_argument("--out", default=None, help="output path without suffix (default: <input>.<model>.<method>)")
    parser.add_argument("--top", type=int, default=5, help="how many predicted classes to print")
    parser.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto")
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity over the image")
    parser.add_argument("--cmap", default="jet", help="matplotlib colour map of the heatmap")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto", help="terminal colours")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides: model.* and method.* (e.g. model.probe=...)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``xaibench-explain``; returns the exit status (0 on success)."""
    args = build_parser().parse_intermixed_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    try:
        if not 0 <= args.alpha <= 1:
            raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
        model, method = build(args.model, args.method, args.overrides)
        target = parse_target(args.target, class_names_of(model), int(getattr(model, "num_classes", 0) or 0))
        result = explain(
            args.input,
            model,
            method,
            target=target,
            out=args.out,
            top=args.top,
            device=args.device,
            alpha=args.alpha,
            cmap=args.cmap,
            color=color,
            label=args.model,
        )
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"xaibench-explain: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.model} predicts:")
    for index, prob, name in result["top"]:
        print(f"  {prob:7.2%}  {index:>5}  {name}")
    index, name = result["target"]
    print(f"{args.method} explains class {index} ({name})")
    if result["terminal"]:
        print()
        print(result["terminal"])
        print()
    for f in result["files"]:
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
