"""TVSum, all ten domains: the table beside the paper, mean ± std over seeds, parallel training.

    python tools/tvsum.py table results/trdetr_tvsum             # after train.py trained all 10 domains
    python tools/tvsum.py summary RUN_A RUN_B RUN_C               # mean ± std over seeds, beside the paper
    python tools/tvsum.py train --jobs 2 --model trdetr --feat-root features/tvsum --seed 2018

`table` reads the ten domain runs of one all-domain folder and prints, as markdown: each domain's
best evaluation (the papers' protocol: the best of every evaluation of the one val video), the mean
of ALL its evaluations (what that selection adds is the distance between the two rows), the
paper's row, and a random ranking's and the annotators' consensus ranking's scores on the same val
videos; it writes tvsum_table.json (docs/tvsum/*.json are such files). `summary` takes such files
(or their folders) from runs that differ only in the seed. `train` trains the unfinished domains N
at a time, each as `python train.py ... --domain D --results-dir <results>/D` with 1/N of the CPU
threads and its output in <results>/D/output.txt, then writes the table; every other argument goes
to train.py as it is. A domain another command is training is waited for, then reused or resumed.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))          # the repository root: train.py, data.py, ...

import numpy as np  # noqa: E402
import torch        # noqa: E402

import data         # noqa: E402
import metrics      # noqa: E402
import train        # noqa: E402

# The papers' TVSum rows (top-5 mAP x 100, domains in data.TVSUM_DOMAINS order, then the average).
# TR-DETR, TaskWeave and VideoLights used the UMT release's I3D features; FlashVTG's paper used
# SlowFast + CLIP (VideoLights' TVSum archive, `--video-feats slowfast,clip`), which our runs did not have.
PAPER = {
    "trdetr": ("paper, Table 3 (I3D)",
               [89.3, 93.0, 94.3, 85.1, 88.0, 88.6, 80.4, 91.3, 89.5, 81.6, 88.1]),
    "taskweave": ("paper, Table 1 (I3D)",
                  [88.2, 90.8, 93.3, 87.5, 87.0, 82.0, 80.9, 92.9, 89.5, 81.2, 87.3]),
    "videolights": ("paper, Table III (I3D)",
                    [89.8, 88.7, 95.0, 88.0, 83.6, 90.1, 79.4, 94.2, 88.6, 81.2, 87.9]),
    "flashvtg": ("paper, Table 5 (SlowFast + CLIP: other features, not comparable)",
                 [88.32, 94.33, 91.5, 87.7, 87.08, 91.12, 74.7, 93.4, 90.3, 81.7, 88.0]),
}
POLL_S = 1.0       # train --jobs: how often to look for finished children


def read_json(path):
    with open(path) as f:
        return json.load(f)


def eval_history(run_dir):
    """{epoch: brief metrics} of every evaluation in a run's log.txt. A resumed run re-does the
    epochs after its last checkpoint, so an epoch may appear twice: the later line wins."""
    history, path = {}, os.path.join(run_dir, "log.txt")
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                parts = line.split(" ", 3)                 # "eval epoch N {json}" (not "... nms")
                if len(parts) == 4 and parts[:2] == ["eval", "epoch"] and parts[3].startswith("{"):
                    history[int(parts[2])] = json.loads(parts[3])
    return history


def table(results_dir, anno_dir=None):
    """The markdown table of a finished all-domain run (printed) and its tvsum_table.json."""
    missing = [d for d in data.TVSUM_DOMAINS
               if not os.path.isfile(os.path.join(results_dir, d, "timing.json"))]
    if missing:
        raise SystemExit(f"{results_dir}: the domain(s) {' '.join(missing)} have no finished run "
                         f"(train them with the same train.py command, or `tools/tvsum.py train`)")
    config = read_json(os.path.join(results_dir, data.TVSUM_DOMAINS[0], "config.json"))
    model_name, cfg = config["model"], config["config"]
    best, best_epoch, mean_evals, n_evals = {}, {}, {}, {}
    for domain in data.TVSUM_DOMAINS:
        sub = os.path.join(results_dir, domain)
        found = read_json(os.path.join(sub, "metrics.json"))
        best[domain], best_epoch[domain] = found["brief"]["mAP"], found["epoch"]
        values = [brief["mAP"] for brief in eval_history(sub).values()]
        mean_evals[domain] = sum(values) / len(values) if values else float("nan")
        n_evals[domain] = len(values)
    avg, avg_evals = sum(best.values()) / len(best), sum(mean_evals.values()) / len(mean_evals)
    spec = data.dataset_spec("tvsum", config["feat_root"])
    reference = metrics.tvsum_reference(
        data.load_annotations(spec, "val", anno_dir or config["feat_root"]))

    def cells(values):
        return " | ".join(f"{100 * v:.1f}" for v in values)
    lines = ["| | " + " | ".join(data.TVSUM_DOMAINS) + " | Avg |",
             "|---|" + "---|" * (len(data.TVSUM_DOMAINS) + 1),
             f"| {model_name}, seed {cfg['seed']}, {cfg['epochs']} epochs | "
             f"{cells(best.values())} | {100 * avg:.1f} |",
             f"| the same, mean of all evaluations | {cells(mean_evals.values())} | {100 * avg_evals:.1f} |"]
    if model_name in PAPER:
        source, row = PAPER[model_name]
        lines.append(f"| {source} | " + " | ".join(f"{v:g}" for v in row) + " |")
    names = {"random": "a random ranking (mean of 1,000)",
             "annotator_mean": "the annotators' mean score as ranking"}
    for key, values in reference.items():
        row = [values[d] for d in data.TVSUM_DOMAINS]
        lines.append(f"| {names[key]} | {cells(row)} | {100 * sum(row) / len(row):.1f} |")
    print("\n".join(lines))
    print("(the official protocol selects each domain's epoch on the same val video it reports)")
    metrics.write_json_atomic(os.path.join(results_dir, "tvsum_table.json"), {
        "model": model_name, "seed": cfg["seed"], "epochs": cfg["epochs"], "mAP": best,
        "Avg": avg, "best_epoch": best_epoch, "mean_of_evaluations": mean_evals,
        "evaluations": n_evals, "reference": reference, "config": cfg})
    return 0


def summary(paths):
    """Per model: mean ± sample standard deviation over seeds per domain, beside the paper's row.
    Runs of one model must share their configuration apart from the seed."""
    runs = {}
    for path in paths:
        file = os.path.join(path, "tvsum_table.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise SystemExit(f"summary: no tvsum_table.json at {path} (`tools/tvsum.py table "
                             f"RESULTS_DIR` writes it once all 10 domains have finished)")
        found = read_json(file)
        runs.setdefault(found["model"], []).append((file, found))
    lines = ["| | " + " | ".join(data.TVSUM_DOMAINS) + " | Avg |",
             "|---|" + "---|" * (len(data.TVSUM_DOMAINS) + 1)]

    def without_seed(t):
        return t["epochs"], {k: v for k, v in (t.get("config") or {}).items() if k != "seed"}
    for model_name, group in runs.items():
        first_file, first = group[0]
        for file, t in group[1:]:
            if without_seed(t) != without_seed(first):
                raise SystemExit(f"summary: {file} and {first_file} are {model_name} runs with "
                                 f"different configurations; summarise them separately")
        seeds = [t["seed"] for _, t in group]
        if len(set(seeds)) != len(seeds):
            raise SystemExit(f"summary: {model_name} seed given twice ({seeds})")
        columns = [[t["mAP"][d] for _, t in group] for d in data.TVSUM_DOMAINS]
        columns.append([t["Avg"] for _, t in group])
        cells = [f"{100 * float(np.mean(v)):.1f}"
                 + (f" ± {100 * float(np.std(v, ddof=1)):.1f}" if len(v) > 1 else "") for v in columns]
        lines.append(f"| {model_name}, seeds {', '.join(map(str, seeds))} (mean ± std) | "
                     + " | ".join(cells) + " |")
        if model_name in PAPER:
            source, row = PAPER[model_name]
            lines.append(f"| {model_name} {source} | " + " | ".join(f"{v:g}" for v in row) + " |")
    print("\n".join(lines))
    return 0


def train_in_parallel(jobs, train_argv):
    """The unfinished domains, `jobs` at a time, each a child `train.py` process (see the module
    docstring). A failed domain does not stop the others; failures are reported at the end."""
    targs = train.parse_args(train_argv)
    if targs.data != "tvsum" and "--data" in train_argv:
        raise SystemExit("train: this trains TVSum domains (--data tvsum is implied)")
    if targs.domain or targs.resume or targs.eval_only:
        raise SystemExit("train: trains all domains; it takes no --domain, --resume or --eval-only")
    targs.data = "tvsum"
    cfg = train.build_config(train.MODELS[targs.model], targs)
    results_dir = targs.results_dir or os.path.join("results", f"{targs.model}_tvsum")
    todo = [d for d in data.TVSUM_DOMAINS
            if train.domain_state(os.path.join(results_dir, d), targs.model, cfg) != "finished"]
    threads = max(1, torch.get_num_threads() // jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    print(f"training {len(todo)} domain(s) ({' '.join(todo)}), {jobs} at a time, {threads} "
          f"thread(s) each; output in <domain>/output.txt")
    running, waiting, failed = {}, [], []
    try:
        while todo or running or waiting:
            for domain in [d for d in waiting if not train.lock_holder(os.path.join(results_dir, d))]:
                waiting.remove(domain)
                todo.insert(0, domain)         # another command's run ended: look at it again
            while todo and len(running) < jobs:
                domain = todo.pop(0)
                sub = os.path.join(results_dir, domain)
                state = train.domain_state(sub, targs.model, cfg)
                if state == "finished":
                    print(f"{domain}: finished meanwhile by another command, reused")
                    continue
                if state == "running":
                    waiting.append(domain)
                    print(f"{domain}: being trained into by process {train.lock_holder(sub)} (another "
                          f"command); waiting for it to end")
                    continue
                if state == "first epoch":     # nothing to resume: at most one epoch is lost
                    print(f"{domain}: stopped during its first epoch, before any checkpoint; "
                          f"starting it again")
                    shutil.rmtree(sub)
                cmd = [sys.executable, os.path.join(os.path.dirname(HERE), "train.py"), *train_argv,
                       "--data", "tvsum", "--no-progress", "--domain", domain, "--results-dir", sub]
                cmd += ["--resume", os.path.join(sub, "last.ckpt")] if state == "interrupted" else []
                os.makedirs(sub, exist_ok=True)
                out = open(os.path.join(sub, "output.txt"), "a")
                running[domain] = (subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                                    env=env), out, sub)
                print(f"{domain}: started ({'resuming' if state == 'interrupted' else 'new run'}, "
                      f"pid {running[domain][0].pid})")
            time.sleep(POLL_S)
            for domain in [d for d, (proc, _, _) in running.items() if proc.poll() is not None]:
                proc, out, sub = running.pop(domain)
                out.close()
                if proc.returncode == 0:
                    best = read_json(os.path.join(sub, "metrics.json"))
                    print(f"{domain}: finished, best mAP {best['brief']['mAP']} at epoch {best['epoch']}")
                else:
                    failed.append(domain)
                    print(f"{domain}: FAILED (exit code {proc.returncode}); see {sub}/output.txt")
    finally:     # Ctrl-C or an error here stops the children; their last.ckpt stays for a resume
        for proc, out, _ in running.values():
            proc.terminate()
            proc.wait()
            out.close()
    if failed:
        raise SystemExit(f"the {', '.join(failed)} run(s) failed (the end of their output.txt "
                         f"says why); fix it and run the same command again: finished domains "
                         f"are reused")
    return table(results_dir, targs.anno_dir)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table", help="the table of one all-domain run beside the paper")
    t.add_argument("results_dir")
    t.add_argument("--anno-dir", help="TVSum annotations (default: the run's feature folder)")
    s = sub.add_parser("summary", help="mean ± std over seeds of tvsum_table.json files")
    s.add_argument("runs", nargs="+", metavar="RUN", help="tvsum_table.json files or their folders")
    r = sub.add_parser("train", help="train the domains in parallel processes, then the table; "
                                     "other arguments go to train.py")
    r.add_argument("--jobs", type=int, default=2, help="domains at a time (default 2)")
    args, rest = p.parse_known_args(argv)
    if args.command != "train" and rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "table":
        return table(args.results_dir, args.anno_dir)
    if args.command == "summary":
        return summary(args.runs)
    if args.jobs < 1:
        raise SystemExit("--jobs: at least 1")
    return train_in_parallel(args.jobs, rest)


if __name__ == "__main__":
    sys.exit(main())
