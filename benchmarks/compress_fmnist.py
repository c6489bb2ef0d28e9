"""The compress job with its default settings on the Fashion-MNIST baseline at 40% and 60%
fewer MACs.

For each budget: ``vitprune.compress`` with its defaults into ``--runs/b<budget>``; the runs are
resumable, so re-running this command continues them. Then, on quiet cores, CPU latency (batch 1)
and throughput (batch 64) of the dense and every compressed model, measured interleaved in one
process so the ratios compare like with like.

    python benchmarks/compress_fmnist.py --budgets 0.6 0.4 --out docs/compress

The compress runs can also be made separately (e.g. in parallel, one thread each), with
``vitprune compress --model vitprune/assets/fmnist_vit_d12 --data fashion-mnist --budget B
--threads 1 --out runs/compress/bB``; this script then only reads them and measures speed.
The page is :func:`page` of docs/compress.json; its hand-written reading is kept between the
page's reading markers when the page is regenerated.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pages  # noqa: E402

import vitprune  # noqa: E402
from vitprune.compression import read_run  # noqa: E402
from vitprune.config import CompressConfig  # noqa: E402
from vitprune.speed import THOROUGH, compare, timing  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "vitprune" / "assets" / "fmnist_vit_d12"
# the settings of `vitprune compress` the page states (the runs use its defaults)
DEFAULTS = ("criterion", "score_images", "method", "trials", "init", "calib_images", "max_ratio",
            "epochs", "lr", "augment", "kd_alpha", "kd_temperature")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budgets", nargs="+", default=["0.6", "0.4"])
    ap.add_argument("--runs", type=Path, default=Path("runs/compress"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for b in args.budgets:
        t0 = time.perf_counter()
        res = vitprune.compress(str(BASELINE), "fashion-mnist", b, args.runs / f"b{b}")
        results[b] = (res, time.perf_counter() - t0)
    models = {"dense": vitprune.load(BASELINE)}
    models.update({b: r.model for b, (r, _) in results.items()})
    speed = {b: {k: r["latency_ms"] / 1e3 for k, r in
                 compare(models, (1, 28, 28), b, **timing(b, THOROUGH)).items()}
             for b in (1, 64)}
    rows = []
    for b, (res, _) in results.items():
        m, hist = res.metrics.rows, res.metrics.finetune_history
        trials = [t.to_record() for t in read_run(res.out).trials]
        rows.append({
            "budget": b, "macs_kept": res.metrics.macs_kept,
            "mmacs": m["finetuned"].macs / 1e6, "params_m": m["finetuned"].params / 1e6,
            "dense_top1": m["dense"].test_top1, "pruned_top1": m["pruned"].test_top1,
            "finetuned_top1": m["finetuned"].test_top1,
            "search_calib_top1": max(t["value"] for t in trials),
            "latency_speedup_b1": speed[1]["dense"] / speed[1][b],
            "throughput_speedup_b64": speed[64]["dense"] / speed[64][b],
            "latency_ms_b1": 1e3 * speed[1][b], "throughput_b64": 64 / speed[64][b],
            "search_s": sum(t["wall_s"] + t["propose_s"] for t in trials),
            "finetune_s": sum(h.seconds for h in hist), "epochs": len(hist),
            "finetune_calib_top1": [h.calib_top1 for h in hist],
        })
    dense = {"mmacs": results[args.budgets[0]][0].metrics.rows["dense"].macs / 1e6,
             "latency_ms_b1": 1e3 * speed[1]["dense"], "throughput_b64": 64 / speed[64]["dense"]}
    cfg = CompressConfig().flat()  # the runs use vitprune's defaults
    record = {"command": "python " + " ".join(sys.argv), "threads": args.threads,
              "defaults": {k: cfg[k] for k in DEFAULTS}, "dense": dense, "rows": rows}
    print(pages.publish(args.out, record, page))
    return 0


def page(record: dict) -> str:
    """The page's generated text, from ``docs/compress.json`` alone."""
    cfg, dense, rows = record["defaults"], record["dense"], record["rows"]
    lines = ["# Compress on the Fashion-MNIST baseline", "",
             f"Command: `{record['command']}`  ",
             f"Defaults of `vitprune compress`: {cfg['criterion']} scores ({cfg['score_images']} "
             f"calibration images), {cfg['method']} search ({cfg['trials']} evaluations, "
             f"{cfg['init']} random first, {cfg['calib_images']:,} calibration images each, prune "
             f"ratios up to {cfg['max_ratio']:g}), physical pruning, "
             f"{cfg['epochs']} epochs of fine-tuning (AdamW {cfg['lr']:g}, cosine, "
             f"{'shift/flip augmentation' if cfg['augment'] else 'no augmentation'}, "
             f"{1 - cfg['kd_alpha']:g} CE + {cfg['kd_alpha']:g} T^2 KL with T = "
             f"{cfg['kd_temperature']:g} from the dense model). Test split: 10,000 images. "
             f"CPU speed: {record['threads']} threads, dense and compressed models timed in turn "
             "in one process (median), quiet cores.", "",
             "| MACs kept | MMACs | params (M) | test top-1 dense | pruned, no fine-tuning | "
             "fine-tuned | change | latency b1 speed-up | throughput b64 speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['macs_kept']:.1%} | {r['mmacs']:.1f} | {r['params_m']:.3f} | {r['dense_top1']:.2f} | "
            f"{r['pruned_top1']:.2f} | **{r['finetuned_top1']:.2f}** | "
            f"{r['finetuned_top1'] - r['dense_top1']:+.2f} | {r['latency_speedup_b1']:.2f}x | "
            f"{r['throughput_speedup_b64']:.2f}x |")
    lines += ["", f"Dense: {dense['mmacs']:.1f} MMACs, {dense['latency_ms_b1']:.2f} ms at batch 1, "
                  f"{dense['throughput_b64']:.0f} images/s at batch 64.", "",
              "| budget | search wall (s) | fine-tune wall (s) | epochs | calibration top-1 per epoch |",
              "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['budget']} | {r['search_s']:.0f} | {r['finetune_s']:.0f} | {r['epochs']} | "
                     + ", ".join(f"{v:.2f}" for v in r["finetune_calib_top1"]) + " |")
    return "\n".join([*lines, "", "## Reading"])


if __name__ == "__main__":
    sys.exit(main())
