"""docs/families.md and its JSON: parameters and MACs of each family's reference models, as
``vitprune cost`` counts them, against the published numbers.

Built on the meta device (no memory, no weights), so it runs in seconds on any machine:

    python benchmarks/families_cost.py --out docs/families

The page also shows the measured speed of ``docs/families_speed.json`` (benchmarks/families_speed.py),
copied into this page's JSON. The page is :func:`page` of docs/families.json; its hand-written
reading is kept between the page's reading markers when the page is regenerated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pages  # noqa: E402

from vitprune.adapters import vit_shape  # noqa: E402
from vitprune.adapters.t2t_vit import T2T_PUBLISHED  # noqa: E402
from vitprune.cost import macs  # noqa: E402
from vitprune.models import build_model  # noqa: E402
from vitprune.surgery import count_params  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# published (params M, GMACs at 224): T2T-ViT authors' README; ViT-B/16 and DeiT-B (distilled)
# as the DeiT paper and timm report them
HF_PUBLISHED = {"ViTForImageClassification": ("ViTConfig", 86.6, 17.6),
                "DeiTForImageClassificationWithTeacher": ("DeiTConfig", 87.3, 17.7)}
TIMM_PUBLISHED = {"vit_base_patch16_224": (86.6, 17.6), "deit_base_distilled_patch16_224": (87.3, 17.7)}
# Swin paper Table 1 (224: 7x7 windows; 384: 12x12); EVA-02 paper Table 2 / timm's model cards
SWIN_PUBLISHED = {"swin_tiny_patch4_window7_224": (28, 4.5), "swin_small_patch4_window7_224": (50, 8.7),
                  "swin_base_patch4_window7_224": (88, 15.4), "swin_base_patch4_window12_384": (88, 47.0)}
EVA_PUBLISHED = {"eva02_tiny_patch14_224": (5.50, 1.7), "eva02_small_patch14_224": (21.62, 6.1)}
SPEED = ROOT / "docs" / "families_speed.json"


def _row(family: str, name: str, model: torch.nn.Module, published: tuple[float, float]) -> dict:
    shape = vit_shape(model)
    p, m = count_params(model) / 1e6, macs(shape).total / 1e9
    return {"family": family, "model": name, "params_m": round(p, 3), "gmacs": round(m, 3),
            "published_params_m": published[0], "published_gmacs": published[1],
            "gmacs_off_pct": round(100 * (m / published[1] - 1), 1),
            "stem_gmacs": round((macs(shape).patch_embed + macs(shape).between) / 1e9, 3)}


def rows() -> list[dict]:
    out = []
    with torch.device("meta"):
        for name, pub in T2T_PUBLISHED.items():
            out.append(_row("t2t", name, build_model(name), pub))
        for name, pub in TIMM_PUBLISHED.items():
            out.append(_row("timm", name, build_model(name), pub))
        for family, table in (("swin", SWIN_PUBLISHED), ("eva", EVA_PUBLISHED)):
            for name, pub in table.items():
                out.append(_row(family, name, build_model(name), pub))
        try:
            import transformers
        except ImportError:
            print("transformers not installed: Hugging Face rows left out", file=sys.stderr)
        else:
            for cls, (cfg, *pub) in HF_PUBLISHED.items():
                model = getattr(transformers, cls)(getattr(transformers, cfg)(num_labels=1000))
                out.append(_row("hf", f"{cls} (config defaults)", model, tuple(pub)))
    return out


def page(record: dict) -> str:
    """The page's generated text, from ``docs/families.json`` alone."""
    lines = [
        "# Model families: parameters and MACs against the published numbers",
        "",
        "Made by `python benchmarks/families_cost.py --out docs/families` (figures in "
        "`docs/families.json`), models built on the meta device. MACs are vitprune's count "
        "(`vitprune cost`): multiply-accumulates of every linear layer and convolution and of the "
        "attention products, patch embedding (or T2T module) and classifier included; norms, GELU "
        "and softmax left out. At 224x224, 1,000 classes.",
        "",
        "| family | model | params (M) | published | GMACs | published | off | stem GMACs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        lines.append(f"| {r['family']} | {r['model']} | {r['params_m']:.2f} | "
                     f"{r['published_params_m']} | {r['gmacs']:.3f} | {r['published_gmacs']} | "
                     f"{r['gmacs_off_pct']:+.1f}% | {r['stem_gmacs']:.3f} |")
    lines += ["", *speed_table(record.get("speed")), "## Reading", *WHAT_IS_PRUNED]
    return "\n".join(lines)


WHAT_IS_PRUNED = [
    "## What is pruned in each family",
    "",
    "| family | heads | MLP neurons | tokens | depth | not pruned, and why |",
    "|---|---|---|---|---|---|",
    "| timm ViT/DeiT | qkv rows, proj columns | fc1 rows, fc2 columns | EViT-style stages | yes "
    "| patch embedding, prefix tokens, classifier (shared by every block) |",
    "| T2T-ViT | as ViT | as ViT | as ViT | yes | the T2T module (a tokenizer, not blocks) |",
    "| Hugging Face ViT/DeiT | q/k/v rows, output dense columns | intermediate rows, output "
    "columns | as ViT | no | embeddings, pooler, classifiers |",
    "| Swin | qkv rows, its relative-position-bias column, proj columns | fc1 rows, fc2 columns "
    "| **no**: windowed attention needs the whole token grid; plans and searches asking for "
    "token stages are refused | yes | stage widths and patch merging (each stage's width is "
    "the residual stream its blocks share) |",
    "| EVA-02 / RoPE ViTs (timm Eva, `EvaAttention` or `AttentionRope`) | qkv rows (or q/k/v) "
    "and the separate q/k/v biases, the "
    "attention's inner norm where present, proj columns; each head keeps its own rotation | a "
    "SwiGLU unit's gate and value rows together (packed or split), the MLP's inner LayerNorm "
    "(sliced; masked search takes its statistics over the kept units), fc2 columns | EViT-style "
    "stages: kept tokens keep their rotary positions (gathered with them); the fused token is "
    "not rotated | yes | grouped-query attention (fewer key/value heads) is refused; mixed-RoPE "
    "models (a rotary table per block) take no token stages |",
    "| SAM image encoder (timm `VisionTransformerSAM`) | qkv rows, proj columns (the relative-"
    "position tables are per head width, shared by the heads) | fc1 rows, fc2 columns | **no**: "
    "windowed blocks and the neck need the whole grid | yes | patch embedding, absolute "
    "positions, the convolutional neck and any head (counted whole) |",
    "",
    "A model without a classifier (`num_classes=0`: DINOv2, CLIP, SigLIP encoders, SAM's) is "
    "searched on the fidelity of its output features and fine-tuned by feature distillation. "
    "The output each family exposes: timm ViT/DeiT, EVA-02, T2T-ViT and Swin hand on their "
    "pooled pre-logits embedding (`forward_head(..., pre_logits=True)`: the class token, the "
    "token average or SigLIP's attention pool, as the model's `global_pool` says), one vector an "
    "image; SAM's encoder its neck's feature map, one vector per position (compared per token "
    "and averaged). Hugging Face classes are classifiers (`num_labels` >= 1) and expose none.",
    "",
]


def speed_table(rec: dict | None) -> list[str]:
    """The measured speed-up table of ``docs/families_speed.json`` (none before it is made)."""
    if not rec:
        return []
    rows = rec["rows"]
    lines = [
        "## Measured CPU speed at 60% of the MACs",
        "",
        f"Made by `{rec['command']}` ({rows[0]['threads']} CPU threads, batch {rows[0]['batch']}, "
        f"eager PyTorch {rec['torch']}, random weights; every model of a family timed in turn "
        f"for {rows[0]['rounds']} rounds; speed-up: median of the rounds' ratios, with their "
        "range). Plans are uniform ratios (the smallest that keeps at most 60% of the MACs).",
        "",
        "| family | model | pruned | ratio | MACs kept | ms / batch | speed-up | range |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["speedup_range"]
        lines.append(f"| {r['family']} | {r['model']} | {r['pruned']} | {r['ratio']} | "
                     f"{r['macs_kept']:.1%} | {r['latency_ms']:.0f} | {r['speedup']:.2f}x | "
                     f"{lo:.2f}-{hi:.2f} |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "families"),
                    help="path stem of the report: writes OUT.md and OUT.json")
    args = ap.parse_args(argv)
    record = {"rows": rows(),
              "speed": json.loads(SPEED.read_text()) if SPEED.exists() else None}
    print(pages.publish(args.out, record, page))
    return 0


if __name__ == "__main__":
    sys.exit(main())
