"""``make bench``'s memory rows: the peak resident memory of a whole segmentation run over a growing
number of synthetic images, each in a fresh process (the runners stream, so the peak should not grow)."""

from __future__ import annotations

import logging

import pandas as pd

log = logging.getLogger("xaibench.apps.bench")

MEMORY_PROBE = """
import json, sys, torch
from xaibench.datasets.synthetic import SyntheticShapes
from xaibench.core.loop import LoopConfig, run_job
from xaibench.methods.attention import Rollout
from xaibench.metrics.segmentation import Segmentation
from xaibench.models.timm_vit import TimmViT
kw = {"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 4}
model = TimmViT(timm_kwargs=kw, init_seed=0, name="vit_micro")
run_job(SyntheticShapes(int(sys.argv[1]), 64), model, Rollout(), {"segmentation": Segmentation()}, sys.argv[2],
        LoopConfig(device="cpu", batch_size=50, save_examples=0))
print(json.dumps({"peak_mib": int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) / 1024}))
"""


def memory_scaling(sizes: tuple[int, ...] = (200, 2000)) -> pd.DataFrame:
    """Peak resident memory of a whole segmentation evaluation over ``sizes`` synthetic images, each in a
    fresh process: the runners stream, so the peak should not grow with the number of images."""
    import json
    import subprocess
    import sys
    import tempfile

    rows = []
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                [sys.executable, "-c", MEMORY_PROBE, str(size), tmp],
                capture_output=True,
                text=True,
                check=True,
                timeout=3600,
            )
        rows.append({"images": size, **json.loads(out.stdout.strip().splitlines()[-1])})
        log.info("segmentation over %d images: peak %.0f MiB", size, rows[-1]["peak_mib"])
    frame = pd.DataFrame(rows)
    frame["ratio_to_smallest"] = frame["peak_mib"] / frame["peak_mib"].iloc[0]
    return frame
