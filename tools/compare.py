"""Every model on the same data with the same seed, side by side; and the speed benchmark.

    python tools/compare.py --data synthetic                  # all four, seed 2018 -> results/compare_synthetic/comparison.md
    python tools/compare.py --data qvh --models trdetr,flashvtg --seed 2017
    python tools/compare.py --benchmark                       # QVHighlights-sized synthetic set, 1 epoch each

Each model trains in its own process (`python train.py ...`, so each gets its own peak-memory
figure), with its own recipe except the seed, and writes timing.json beside its metrics; this
script then writes one markdown table: parameters, seconds per epoch and the part of it spent
waiting for batches, inference ms per query, peak memory, and the best evaluation's metrics (each
model's own selection criterion). The same command again reuses finished runs and resumes
interrupted ones. --benchmark generates (once) a synthetic set of QVHighlights' size and feature
dims in the QVHighlights layout and compares the models on it with their QVH configs: the metrics
of one epoch mean nothing there, the speed does.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))          # the repository root: train.py, data.py, ...

import data      # noqa: E402
import metrics   # noqa: E402
import train     # noqa: E402

SEED = 2018      # Moment-DETR's default seed, when --seed is not given
KEYS = ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP@0.5", "MR-full-mAP@0.75", "MR-full-mAP",
        "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1", "MR-full-R1@0.3", "MR-full-mIoU", "mAP")
PASSED = ("feat_root", "anno_dir", "domain", "epochs", "device", "eval_every", "batch_size")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["qvh", "charades", "tvsum", "synthetic"], default="synthetic")
    p.add_argument("--models", metavar="A,B", help="which models (default: all)")
    p.add_argument("--seed", type=int, default=None, help=f"one seed for all (default {SEED})")
    p.add_argument("--benchmark", action="store_true",
                   help="compare on a QVHighlights-sized synthetic set (7,218 train / 1,550 val "
                        "queries, real dims; generated once in features/synthetic_qvh, ~3.5 GB, "
                        "or --feat-root), read as qvh; --epochs defaults to 1")
    p.add_argument("--benchmark-queries", type=int, nargs=2, metavar=("TRAIN", "VAL"),
                   help="with --benchmark: a smaller set at the real dims (default: QVHighlights' "
                        "7218 1550); seconds per epoch scale with the train queries")
    p.add_argument("--results-dir", help="default: results/compare_<data> (benchmark: "
                                         "results/benchmark_qvh)")
    for flag in PASSED:
        p.add_argument("--" + flag.replace("_", "-"), type=int if flag in (
            "epochs", "eval_every", "batch_size") else str, help="passed to train.py")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="passed to train.py (repeatable)")
    for flag in ("amp", "tf32", "deterministic", "compile"):
        p.add_argument("--" + flag, action="store_true", help="passed to train.py")
    p.add_argument("--no-progress", action="store_true", help="passed to train.py")
    return p.parse_args(argv)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def table(rows, data_name, seed):
    """Markdown, one row per model: (name, timing.json, metrics.json, config) each."""
    keys = [k for k in KEYS if all(k in best["brief"] for _, _, best, _ in rows)]
    head = (["model", "params", "epochs", "best epoch", "train s/epoch", "of which loading",
             "infer ms/query", "peak MiB"]
            + [k.replace("MR-full-", "MR ").replace("HL-min-VeryGood-", "HD ") for k in keys])
    first = rows[0][1]
    device = first["device"] + (f" = {first['device_name']}" if first.get("device_name") else "")
    lines = [f"Data: {data_name}, seed {seed}, device {device} ({first['threads']} "
             f"thread{'s' if first['threads'] != 1 else ''}"
             + (", --amp: bfloat16 autocast" if first.get("amp") else "") + "). Peak memory: " +
             ("torch's peak GPU allocation." if first["device"].startswith("cuda") else
              "the process's peak resident set, features in memory included."), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, timing, best, config in rows:
        def fmt(value, spec):
            return "-" if value is None else format(value, spec)
        cells = [name, f"{timing['trainable_parameters']:,}", str(config["epochs"]), str(best["epoch"]),
                 fmt(timing["train_seconds_per_epoch"], ".1f"),
                 fmt(timing.get("load_seconds_per_epoch"), ".2f"),
                 fmt(timing["inference_ms_per_query"], ".2f"), f"{timing['peak_memory_mib']:.0f}"]
        lines.append("| " + " | ".join(cells + [f"{best['brief'][k]:.2f}" for k in keys]) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    label = args.data
    if args.benchmark:
        if args.data != "synthetic":
            raise SystemExit("--benchmark generates its own QVHighlights-sized set: it takes no --data")
        sizes = dict(data.QVH_SIZED)
        if args.benchmark_queries:
            sizes["n_train"], sizes["n_val"] = args.benchmark_queries
        args.feat_root = args.feat_root or os.path.join(
            "features", "synthetic_qvh" + ("_{}_{}".format(*args.benchmark_queries)
                                           if args.benchmark_queries else ""))
        data.ensure_synthetic(args.feat_root, progress=not args.no_progress, **sizes)
        args.data, args.epochs = "qvh", args.epochs or 1
        args.results_dir = args.results_dir or os.path.join("results", "benchmark_qvh")
        label = (f"QVHighlights-sized synthetic set in {args.feat_root} ({sizes['n_train']:,} "
                 f"train / {sizes['n_val']:,} val queries, real dims), read as qvh")
    names = args.models.split(",") if args.models else sorted(train.MODELS)
    unknown = [n for n in names if n not in train.MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; choose from {', '.join(sorted(train.MODELS))}")
    if args.data == "tvsum" and not args.domain:
        raise SystemExit("comparing on TVSum needs one --domain (each domain is its own run)")
    root = args.results_dir or os.path.join("results", f"compare_{args.data}")
    seed = args.seed if args.seed is not None else SEED
    rows = []
    for name in names:
        run_dir = os.path.join(root, name)
        cmd = [sys.executable, os.path.join(os.path.dirname(HERE), "train.py"), "--model", name,
               "--data", args.data, "--seed", str(seed), "--results-dir", run_dir]
        for flag in PASSED:
            if getattr(args, flag) is not None:
                cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
        cmd += [x for item in args.overrides for x in ("--set", item)]
        cmd += [f"--{f}" for f in ("no-progress", "amp", "tf32", "deterministic", "compile")
                if getattr(args, f.replace("-", "_"))]
        if os.path.isfile(os.path.join(run_dir, "timing.json")):
            print(f"{name}: finished run found in {run_dir}, reused")
        else:
            if os.path.isfile(os.path.join(run_dir, "last.ckpt")):
                cmd += ["--resume", os.path.join(run_dir, "last.ckpt")]
            print(f"{name}: " + " ".join(cmd[1:]))
            if subprocess.run(cmd).returncode != 0:
                raise SystemExit(f"the {name} run failed; fix it and run the same command again "
                                 f"(finished runs are reused)")
        timing, best, config = (read_json(os.path.join(run_dir, f))
                                for f in ("timing.json", "metrics.json", "config.json"))
        rows.append((name, timing, best, config["config"]))
    text = table(rows, label, seed)
    metrics.write_text_atomic(os.path.join(root, "comparison.md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
