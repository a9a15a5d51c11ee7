"""The one training loop for every model in this repository.

    python train.py --model trdetr --data qvh                     # train with the official defaults
    python train.py --model trdetr --data synthetic               # the quick start, no download
    python train.py --model trdetr --data qvh --summary           # model + parameter count only
    python train.py --model trdetr --data qvh --resume results/trdetr_qvh/last.ckpt       # continue
    python train.py --model trdetr --data qvh --eval-only --resume results/trdetr_qvh/best.ckpt

What one run does, in order:
  1. Build the dataset spec (data.py) and the model's per-dataset Config (the official defaults,
     overridable from the command line), seed everything, pick CUDA when available.
  2. Load the train and eval splits once into memory (data.py), build the model and its loss.
  3. Train with AdamW + StepLR + gradient clipping; every `eval_every` epochs (and at the last
     epoch) predict the eval split, write the official submission format, score it with metrics.py
     and keep the checkpoint that is best by the official criterion (QVH: MR-full-mAP).
  4. After an epoch write `last.ckpt` (model, optimiser, scheduler, every RNG state), so a killed
     run resumed with --resume continues exactly where it stopped: after every epoch when epochs
     are long, at most once a minute when they are short (a TVSum epoch is one step: writing its
     ~70 MB state 2,000 times would cost ~15% of the run), and always after the first and the
     last one.

Every file in the results directory is written atomically (temporary file + rename), so a run killed
at any moment never leaves a half-written checkpoint, prediction or metrics file behind:
  config.json      the full configuration of the run
  log.txt          one line per epoch (losses) and per evaluation (brief metrics)
  last.ckpt        the state after a recent finished epoch (for --resume; see 4.)
  best.ckpt        the weights of the best evaluation so far
  val_preds.jsonl  the best epoch's predictions on the eval split, official submission format
  metrics.json     the best epoch's metrics ("brief" block as the official evaluation prints it)
  running.pid      while a process trains into the folder (another one is refused meanwhile)
  output.txt       TVSum with --jobs: what the domain's child process printed

The model files all follow one contract (see trdetr.py): `Config`, `default_config(dataset)`,
`build(cfg, video_dim, text_dim) -> (model, loss)`, `model(video_feats, video_mask, query_feats,
query_mask, epoch=None) -> outputs`, `loss(outputs, batch, epoch=None) -> (total, terms)` and
`predict(outputs, video_mask) -> (windows, saliency)`; `epoch` is the 0-based training epoch (None
at standalone inference). Optional: `data_settings(dataset)` (DatasetSpec fields the model's
official loader sets differently), `pretrain_config(cfg)` (its pretraining recipe), and the Config
fields `ema_decay`, `nms_thd`, `nms_kind`, `lr_gamma` that this loop reads when present. It knows
nothing else about them.
"""

import argparse
import copy
import dataclasses
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

import common
import data
import flashvtg
import metrics
import taskweave
import trdetr
import videolights

# The models this loop can train: a plain dict of modules that follow the contract above.
MODELS = {"trdetr": trdetr, "taskweave": taskweave, "videolights": videolights,
          "flashvtg": flashvtg}

# The official PostProcessorDETR clamps every predicted window to [0, 150] s (QVHighlights' video
# length) before rounding it to the clip grid; VideoLights and FlashVTG keep the same clamp for
# Charades-STA, whose videos are shorter, so we do too.
MAX_WINDOW_END = 150.0

# The labelled QVHighlights test file (moment_detr, released after the CodaLab server closed).
QVH_TEST_GT = "highlight_test_with_gt.jsonl"

# last.ckpt is written after the first epoch, then rewritten only when this many seconds passed
# since the previous write (and always after the last epoch): a killed run loses at most a minute
# of training, and only one killed during its first epoch has nothing to resume from.
CHECKPOINT_EVERY_S = 60.0

# What the per-evaluation line shows: the papers' headline columns (all of a shorter brief block).
HEADLINE_KEYS = ("MR-full-R1@0.3", "MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mIoU",
                 "MR-full-mAP@0.5", "MR-full-mAP@0.75", "MR-full-mAP",
                 "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1", "mAP")


class TrainingError(Exception):
    """A run that cannot go on (e.g. a non-finite loss); the message says where its last good state is."""


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train and evaluate a moment retrieval + highlight detection model.",
        epilog="examples:\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="trdetr", help="default: trdetr")
    p.add_argument("--data", choices=["qvh", "charades", "tvsum", "synthetic"], default="synthetic",
                   help="dataset (default: synthetic, generated on first use); the others need "
                        "the feature releases (README: Getting the features)")
    p.add_argument("--feat-root", default=None,
                   help="feature root of the dataset (default: features/<data>)")
    p.add_argument("--anno-dir", default=None,
                   help="directory of the annotation files (default: the feature root)")
    p.add_argument("--layout", default=None, choices=data.LAYOUTS,
                   help="feature release layout under --feat-root (default: detected from what "
                        "is on disk; README: Getting the features)")
    p.add_argument("--video-feats", default=None, metavar="A,B",
                   help="video feature streams, concatenated in the official order (default: "
                        "slowfast,clip; TVSum i3d); e.g. slowfast,clip,blip for VideoLights-B")
    p.add_argument("--text-feats", default=None, metavar="A,B",
                   help="text feature streams (default: clip); clip,blip for VideoLights-B")
    p.add_argument("--domain", default=None, choices=data.TVSUM_DOMAINS,
                   help="TVSum only: one domain (e.g. BK); default: all 10, one run each")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="TVSum, all domains: train N domains at once, each in its own process "
                        "with 1/N of the CPU threads, its output in <results>/<domain>/output.txt "
                        "(default: 1, one domain after the other in this process)")
    p.add_argument("--results-dir", default=None,
                   help="where the run writes its files (default: results/<model>_<data>)")
    p.add_argument("--epochs", type=int, default=None, help="override the config's epochs")
    p.add_argument("--batch-size", type=int, default=None, help="override the config's batch size")
    p.add_argument("--lr", type=float, default=None, help="override the config's learning rate")
    p.add_argument("--seed", type=int, default=None, help="override the config's (official) seed")
    p.add_argument("--eval-every", type=int, default=None, help="evaluate every N epochs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any Config field, e.g. --set enc_layers=3 (repeatable)")
    p.add_argument("--resume", default=None, metavar="CKPT",
                   help="continue a run from its last.ckpt, or (with --eval-only) the weights to evaluate")
    p.add_argument("--eval-only", action="store_true",
                   help="only evaluate --resume CKPT on the eval split (and write QVH test predictions)")
    p.add_argument("--eval-split", default=None, metavar="SPLIT",
                   help="with --eval-only: score this split instead of the dataset's eval split, "
                        "e.g. train (how well the checkpoint fits its own training data); "
                        "writes <SPLIT>_preds.jsonl and <SPLIT>_metrics.json")
    p.add_argument("--test-gt", default=None, metavar="JSONL",
                   help="QVH, with --eval-only: the labelled test file (moment_detr's "
                        "highlight_test_with_gt.jsonl) to score test_preds.jsonl with; default: "
                        "that file in the annotation dir, when present")
    p.add_argument("--plot", type=int, default=0, metavar="N",
                   help="with --eval-only: draw the first N eval queries as SVG (results dir plots/)")
    p.add_argument("--plot-qids", type=int, nargs="+", default=None, metavar="QID",
                   help="with --eval-only: draw these queries (by qid) as SVG")
    p.add_argument("--pretrain", default=None, metavar="JSONL",
                   help="pretrain on this corpus (official pretraining jsonl: query + one window "
                        "per line, e.g. VideoLights' pre_train_blip.jsonl) instead of the train "
                        "split, with the model's pretraining recipe; evaluation stays on the "
                        "dataset's eval split. 'synthetic' generates a small corpus in that "
                        "format (with --data synthetic). Then fine-tune with --init")
    p.add_argument("--pretrain-feat-root", default=None, metavar="DIR",
                   help="feature root of the pretraining corpus (default: --feat-root)")
    p.add_argument("--init", default=None, metavar="CKPT",
                   help="start from these weights only (fine-tuning after --pretrain): optimiser, "
                        "epoch and config start fresh")
    p.add_argument("--compare", action="store_true",
                   help="train and evaluate every model (or --models) on --data with one seed, "
                        "each in its own process, and write a markdown table (comparison.md) of "
                        "parameters, seconds per epoch, ms per query, peak memory and metrics; "
                        "finished runs are reused, interrupted ones resumed")
    p.add_argument("--models", default=None, metavar="A,B",
                   help="with --compare or --benchmark: which models (default: all)")
    p.add_argument("--benchmark", action="store_true",
                   help="speed benchmark: --compare on a QVHighlights-sized synthetic set (7,218 "
                        "train / 1,550 val queries, real dims; generated on first use in "
                        "features/synthetic_qvh, ~3.5 GB, or --feat-root) read as --data qvh with "
                        "the QVH configs, for --epochs (default 1); writes "
                        "results/benchmark_qvh/comparison.md (seconds per epoch, peak memory)")
    p.add_argument("--tvsum-summary", nargs="+", default=None, metavar="RUN",
                   help="print mean +- std over seeds per TVSum domain, beside the paper's row, "
                        "from finished all-domain runs (their folders or tvsum_table.json files)")
    p.add_argument("--summary", action="store_true",
                   help="print the model and its trainable parameter count, then exit (no features needed)")
    p.add_argument("--device", default=None, help="e.g. cpu or cuda (default: cuda when available)")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: the training forward runs under bfloat16 autocast "
                        "(GPUs with bfloat16: Ampere or newer; also CPUs with AMX/AVX512-BF16); "
                        "the loss, the optimiser and evaluation stay float32 (README: Speed)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p.parse_args(argv)


def build_config(module, args, saved=None):
    """The run's Config: the saved one when resuming, else the model's official defaults for the
    dataset; then the command-line overrides, each checked against the dataclass fields."""
    if saved is not None:
        cfg = module.Config(**saved)
    else:
        cfg = module.default_config(args.data)
        if args.pretrain and hasattr(module, "pretrain_config"):
            cfg = module.pretrain_config(cfg)     # e.g. VideoLights: batch 256, 50 epochs
    direct = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
              "seed": args.seed, "eval_every": args.eval_every}
    changes = {k: v for k, v in direct.items() if v is not None}
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    for item in args.overrides:
        name, sep, text = item.partition("=")
        if not sep or name not in fields:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(sorted(fields))}")
        current = getattr(cfg, name)
        # Parse the value as the field's current type (bool accepts true/false/1/0).
        if isinstance(current, bool):
            value = text.lower() in ("1", "true", "yes")
        elif isinstance(current, (int, float, str)):
            value = type(current)(text)
        else:
            value = json.loads(text)
        changes[name] = value
    return dataclasses.replace(cfg, **changes)


# ----------------------------------------------------------------------------- small helpers

def seed_everything(seed):
    random.seed(seed)          # data.py draws the random saliency pairs with Python's random
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(loader_gen):
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(), "loader": loader_gen.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state, loader_gen):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    loader_gen.set_state(state["loader"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj, path):
    """torch.save into a temporary file beside `path`, then rename: a kill never leaves half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def to_device(batch, device):
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            out[key] = value.to(device, non_blocking=True)
        elif key == "span_targets":
            out[key] = [t.to(device) for t in value]
        else:
            out[key] = value
    return out


def to_float32(outputs):
    """The model's outputs with every half-precision tensor cast back to float32 (--amp): the
    losses, the Hungarian matcher (scipy) and the saved predictions then see float32 as always."""
    if isinstance(outputs, dict):
        return {k: to_float32(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(to_float32(v) for v in outputs)
    if torch.is_tensor(outputs) and outputs.dtype in (torch.bfloat16, torch.float16):
        return outputs.float()
    return outputs


def check_amp(device):
    """--amp uses bfloat16 (float32's exponent range: no loss scaling, and the models' large
    negative attention-mask fills stay finite, which float16 would overflow)."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SystemExit("--amp: this GPU has no bfloat16 support (it needs Ampere or newer); "
                         "train without --amp")
    if device.type not in ("cuda", "cpu"):
        raise SystemExit(f"--amp: supported on cuda and cpu, not {device.type}")


def count_parameters(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def log_line(results_dir, text):
    with open(os.path.join(results_dir, "log.txt"), "a") as f:
        f.write(text + "\n")


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def predict_split(model, module, dataset, cfg, device, data_name, show_progress=True, epoch=None):
    """Run the model over a split and return its submission lines (official format).

    `epoch` is handed to the model as in training (0-based; None = standalone inference), because
    some models behave differently before a given epoch (TaskWeave's inter-task feedback).

    Windows: normalised [st, ed] x duration -> seconds, clamped to [0, 150] and rounded to the clip
    grid (official PostProcessorDETR), score rounded to 4 decimals, rows sorted by score.
    Saliency: one score per loaded clip, cast to float16 first as the official QVH code does
    (float16 creates ties, and the official HD mAP groups tied scores).
    """
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.eval_batch_size, shuffle=False,
                                         collate_fn=data.collate)
    rows = []
    for batch in tqdm(loader, desc="  predict", leave=False, disable=not show_progress):
        batch = to_device(batch, device)
        outputs = model(batch["video_feats"], batch["video_mask"],
                        batch["query_feats"], batch["query_mask"], epoch=epoch)
        # windows: a (B, N, 3) tensor (DETR models: one row per decoder query) or a list of B
        # (n_i, 3) tensors (FlashVTG: a different number of candidates per video).
        windows, saliency = module.predict(outputs, batch["video_mask"])
        windows = [w.float().cpu() for w in windows]
        saliency = saliency.float().cpu()
        for i, meta in enumerate(batch["meta"]):
            n_clips = meta["n_clips"]
            row = {"qid": meta["qid"], "query": meta["query"], "vid": meta["vid"]}
            if data_name == "tvsum":
                # TVSum is highlight detection only; the official TVSum evaluation ranks raw scores.
                row["pred_saliency_scores"] = saliency[i, :n_clips].tolist()
            else:
                spans = windows[i][:, :2] * meta["duration"]                     # (N, 2) seconds
                spans = common.postprocess_windows(spans, MAX_WINDOW_END, meta["clip_len"])
                scores = windows[i][:, 2]
                order = torch.argsort(scores, descending=True, stable=True)
                row["pred_relevant_windows"] = [
                    [round(float(spans[j, 0]), 4), round(float(spans[j, 1]), 4),
                     round(float(scores[j]), 4)] for j in order.tolist()]
                row["pred_saliency_scores"] = saliency[i, :n_clips].half().float().tolist()
            rows.append(row)
    return rows


def score(rows, dataset, data_name):
    """Official metrics of a split's submission lines against its annotations."""
    if data_name == "tvsum":
        return metrics.evaluate_tvsum(rows, dataset.annotations)
    if data_name == "charades":
        return metrics.evaluate_charades(rows, dataset.annotations)
    return metrics.evaluate_qvh(rows, dataset.annotations)   # qvh and synthetic share the metric


def selection_score(brief, best_metric):
    """The number that picks the best checkpoint: one brief key, or a sum of keys joined by "+"
    (FlashVTG selects Charades-STA epochs on R1@0.5 + R1@0.7)."""
    keys = best_metric.split("+")
    missing = [k for k in keys if k not in brief]
    if missing:
        raise SystemExit(f"best_metric {best_metric!r}: {missing} not among the metrics "
                         f"({', '.join(brief)})")
    return sum(brief[k] for k in keys)


def apply_nms(rows, cfg):
    """The submission lines after non-maximum suppression of their (post-processed) windows.

    Off unless the Config asks for it (nms_thd > 0). nms_kind "remove" is the Moment-DETR lineage's
    NMS (suppressed windows are dropped, at most 10 kept, as its inference defaults); "zero" is
    FlashVTG's (every window stays, suppressed ones get score 0). The plain predictions still select
    the checkpoint, as in the official loops; the NMS ones are written beside them.
    """
    kind = getattr(cfg, "nms_kind", "remove")
    if kind not in ("remove", "zero"):
        raise SystemExit(f"nms_kind {kind!r}: expected 'remove' or 'zero'")
    out = []
    for row in rows:
        windows = row["pred_relevant_windows"]
        if kind == "remove":
            kept = common.temporal_nms(windows[:10], cfg.nms_thd, max_after_nms=10)
        else:
            kept = common.temporal_nms_zero(windows, cfg.nms_thd)
        out.append({**row, "pred_relevant_windows": kept})
    return out


def uses_nms(cfg, data_name):
    return getattr(cfg, "nms_thd", -1.0) > 0 and data_name != "tvsum"


def read_checkpoint(path, flag):
    """One of our checkpoints, read on the CPU; a missing or unreadable file (a truncated copy, or
    not a checkpoint at all) is a clear error that starts with `flag` (the option that named it)."""
    if not os.path.isfile(path):
        raise SystemExit(f"{flag}: no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise SystemExit(f"{flag}: cannot read {path} as a checkpoint "
                         f"({type(err).__name__}: {err})") from None


def load_initial_weights(model, path, model_name):
    """--init: copy the weights of a checkpoint (e.g. a pretraining run's best.ckpt) into a fresh
    model; everything else (optimiser, epoch, RNG) starts anew, as the official fine-tuning does."""
    ckpt = read_checkpoint(path, "--init")
    if ckpt.get("model_name") != model_name:
        raise SystemExit(f"--init: {path} holds a {ckpt.get('model_name')} model, not {model_name}")
    try:
        model.load_state_dict(ckpt.get("ema") or ckpt["model"])
    except RuntimeError as err:
        raise SystemExit(f"--init: {path} does not fit this model (were the feature streams or "
                         f"the model size different?):\n{err}") from None
    print(f"initialised from {path} (epoch {ckpt.get('epoch')})")


def update_ema(ema_model, model, decay):
    """ema = decay * ema + (1 - decay) * model, over parameters and floating-point buffers
    (integer buffers are copied). TaskWeave's official loop calls this once per epoch."""
    with torch.no_grad():
        ema_state = ema_model.state_dict()
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                ema_state[name].mul_(decay).add_(value.detach(), alpha=1.0 - decay)
            else:
                ema_state[name].copy_(value)


# ----------------------------------------------------------------------------- one run

LOCK_FILE = "running.pid"


def pid_alive(pid):
    try:
        os.kill(pid, 0)                              # signal 0: only asks whether pid exists
    except ProcessLookupError:
        return False
    except PermissionError:                          # exists, owned by another user
        return True
    return True


def lock_holder(results_dir):
    """The pid of another live process that holds results_dir/running.pid, else None (no marker,
    an unreadable one, or one left by a process that died)."""
    try:
        with open(os.path.join(results_dir, LOCK_FILE)) as f:
            holder = int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None
    if holder and holder != os.getpid() and pid_alive(holder):
        return holder
    return None


def claim_results_dir(results_dir):
    """Mark results_dir as being trained into by this process (running.pid), or refuse when a live
    process holds it: two processes resuming the same run would interleave its files (this happens
    when TVSum domains are started by hand beside the all-domain command). A marker left by a
    process that died is taken over."""
    os.makedirs(results_dir, exist_ok=True)
    path = os.path.join(results_dir, LOCK_FILE)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = lock_holder(results_dir)
            if holder:
                raise SystemExit(f"{results_dir} is being trained into by process {holder} "
                                 f"({path}); wait for it, or pass another --results-dir")
            os.remove(path)                          # stale marker of a dead process
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return path
    raise SystemExit(f"could not claim {results_dir} ({path} keeps reappearing)")


def run(args, module, cfg, spec, feat_root, results_dir, domain=None, checkpoint=None):
    """Train (or, with --eval-only, evaluate) one model on one dataset (one TVSum domain).
    Returns the brief metrics of the best evaluation. Holds results_dir/running.pid meanwhile."""
    if checkpoint is None and os.path.exists(os.path.join(results_dir, "config.json")):
        # Never overwrite a finished or interrupted run's files.
        last = os.path.join(results_dir, "last.ckpt")
        if not os.path.isfile(last):
            raise SystemExit(f"{results_dir} holds a run that stopped during its first epoch, "
                             f"before any checkpoint: delete that folder to start it again, or "
                             f"pass another --results-dir")
        raise SystemExit(f"{results_dir} already holds a run: continue it with --resume {last}, "
                         f"or pass another --results-dir")
    lock = claim_results_dir(results_dir)
    try:
        return train_one(args, module, cfg, spec, feat_root, results_dir, domain, checkpoint)
    finally:
        if os.path.exists(lock):
            os.remove(lock)


def train_one(args, module, cfg, spec, feat_root, results_dir, domain, checkpoint):
    """run()'s body, once results_dir is this process's."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    show = not args.no_progress
    if args.amp:
        check_amp(device)
    seed_everything(cfg.seed)

    eval_split = args.eval_split if args.eval_only else spec.eval_split
    splits = [eval_split] if args.eval_only else ["train", eval_split]
    datasets = {s: data.load_dataset(spec, feat_root, s, domain=domain, anno_dir=args.anno_dir,
                                     progress=show) for s in splits if s != "train" or not args.pretrain}
    if args.pretrain and not args.eval_only:
        # Pretraining: the corpus replaces the train split; the eval split is the dataset's own.
        datasets["train"] = data.load_pretrain_dataset(
            spec, args.pretrain, args.pretrain_feat_root or feat_root, progress=show)
    some = datasets[eval_split]
    model, criterion = module.build(cfg, some.video_dim, some.text_dim)
    if args.init and checkpoint is None:
        load_initial_weights(model, args.init, args.model)
    model.to(device)
    criterion.to(device)

    if args.eval_only:
        # An EMA run's last.ckpt holds both; the EMA weights are the ones the loop evaluates.
        model.load_state_dict(checkpoint.get("ema") or checkpoint["model"])
        return evaluate_only(args, module, model, cfg, spec, feat_root, datasets[eval_split],
                             results_dir, device, domain)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # The official runs step the scheduler once per epoch; with lr_drop >= epochs it never decays.
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_drop,
                                                gamma=getattr(cfg, "lr_gamma", 0.1))
    # Model EMA (TaskWeave): a copy of the initial weights that follows the model once per epoch.
    # It is what gets evaluated, selected and saved in best.ckpt, as in the official loop.
    ema_decay = getattr(cfg, "ema_decay", 0.0)
    ema_model = copy.deepcopy(model) if ema_decay > 0 else None
    eval_model = ema_model if ema_model is not None else model
    loader_gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = torch.utils.data.DataLoader(datasets["train"], batch_size=cfg.batch_size,
                                               shuffle=True, collate_fn=data.collate,
                                               generator=loader_gen)
    start_epoch, best = 1, {"score": -float("inf"), "epoch": None, "brief": None}
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        set_rng_state(checkpoint["rng"], loader_gen)
        if ema_model is not None:
            ema_model.load_state_dict(checkpoint["ema"])
        start_epoch, best = checkpoint["epoch"] + 1, checkpoint["best"]
        print(f"resumed from epoch {checkpoint['epoch']} (best so far: {best['score']:.2f} "
              f"at epoch {best['epoch']})")
    else:
        metrics.write_json_atomic(os.path.join(results_dir, "config.json"), {
            "model": args.model, "data": args.data, "domain": domain, "feat_root": str(feat_root),
            "pretrain": args.pretrain, "init": args.init, "layout": spec.layout, "amp": args.amp,
            "streams": {"video": args.video_feats, "text": args.text_feats},
            "config": dataclasses.asdict(cfg), "trainable_parameters": count_parameters(model)})
    where = f"{args.data}" + (f"/{domain}" if domain else "")
    print(f"{args.model} on {where}: {len(datasets['train'])} train / {len(some)} {eval_split} "
          f"queries, {count_parameters(model):,} trainable parameters, device {device}")

    # What every checkpoint says about the run it belongs to (--resume, --init and --eval-only read it).
    identity = {"model_name": args.model, "data": args.data, "domain": domain,
                "pretrain": args.pretrain, "amp": args.amp, "config": dataclasses.asdict(cfg),
                "streams": {"video": args.video_feats, "text": args.text_feats}}
    timing = {"train_seconds": [], "load_seconds": [], "predict_seconds": None,
              "predicted_queries": len(some)}
    last_saved = float("-inf")                 # the first epoch this process runs is always saved
    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        sums, steps, t0 = {}, 0, time.time()
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=not show)
        batches = iter(bar)
        loading = 0.0     # seconds spent waiting for batches (collate + host-to-device copy)
        while True:
            t_load = time.time()
            batch = next(batches, None)
            if batch is None:
                break
            batch = to_device(batch, device)
            loading += time.time() - t_load
            # epoch - 1: the models see the official 0-based epoch index (TaskWeave's feedback
            # start, VideoLights' growing hard-loss weight).
            # --amp: the forward's matrix products run in bfloat16; the loss is computed in float32.
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                outputs = model(batch["video_feats"], batch["video_mask"],
                                batch["query_feats"], batch["query_mask"], epoch=epoch - 1)
            outputs = to_float32(outputs) if args.amp else outputs
            loss, terms = criterion(outputs, batch, epoch=epoch - 1)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"non-finite loss at epoch {epoch}, step {steps + 1} ({terms}); the last good "
                    f"state is {os.path.join(results_dir, 'last.ckpt')} (epoch {epoch - 1})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
        scheduler.step()
        if ema_model is not None:
            update_ema(ema_model, model, ema_decay)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timing["train_seconds"].append(time.time() - t0)
        timing["load_seconds"].append(loading)
        means = {k: v / max(steps, 1) for k, v in sums.items()}
        line = (f"epoch {epoch} {time.time() - t0:.1f}s lr {optimizer.param_groups[0]['lr']:.2e} "
                + " ".join(f"{k} {v:.4f}" for k, v in sorted(means.items())))
        log_line(results_dir, line)

        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            t1 = time.time()
            rows = predict_split(eval_model, module, datasets[eval_split], cfg, device, args.data,
                                 show, epoch=epoch - 1)
            timing["predict_seconds"] = time.time() - t1
            result = score(rows, datasets[eval_split], args.data)
            value = selection_score(result["brief"], cfg.best_metric)
            log_line(results_dir, f"eval epoch {epoch} " + json.dumps(result["brief"]))
            if uses_nms(cfg, args.data):
                nms_rows = apply_nms(rows, cfg)
                nms_result = score(nms_rows, datasets[eval_split], args.data)
                log_line(results_dir, f"eval epoch {epoch} nms {cfg.nms_thd} "
                         + json.dumps(nms_result["brief"]))
            is_best = value > best["score"]
            if is_best:
                best = {"score": value, "epoch": epoch, "brief": result["brief"]}
                save_atomic({"model": eval_model.state_dict(), "epoch": epoch, **identity},
                            os.path.join(results_dir, "best.ckpt"))
                metrics.write_jsonl_atomic(os.path.join(results_dir, "val_preds.jsonl"), rows)
                metrics.write_json_atomic(os.path.join(results_dir, "metrics.json"), {
                    "model": args.model, "data": args.data, "domain": domain, "split": eval_split,
                    "epoch": epoch, "best_metric": cfg.best_metric, "brief": result["brief"]})
                if uses_nms(cfg, args.data):
                    metrics.write_jsonl_atomic(os.path.join(results_dir, "val_preds_nms.jsonl"),
                                               nms_rows)
                    metrics.write_json_atomic(os.path.join(results_dir, "metrics_nms.json"), {
                        "model": args.model, "data": args.data, "split": eval_split,
                        "epoch": epoch, "nms_thd": cfg.nms_thd, "brief": nms_result["brief"]})
            shown = ", ".join(f"{k} {v}" for k, v in result["brief"].items()
                              if k in HEADLINE_KEYS or len(result["brief"]) <= len(HEADLINE_KEYS))
            tqdm.write(f"epoch {epoch}: {shown}" + ("  (best)" if is_best else ""))
        else:
            tqdm.write(line)

        # The resumable state is written last, after the epoch's evaluation and best.ckpt.
        if epoch < cfg.epochs and time.time() - last_saved < CHECKPOINT_EVERY_S:
            continue
        last_saved = time.time()
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "rng": rng_state(loader_gen),
                     "ema": ema_model.state_dict() if ema_model is not None else None,
                     "epoch": epoch, "best": best, **identity},
                    os.path.join(results_dir, "last.ckpt"))

    write_timing(results_dir, timing, device, args.model, count_parameters(model), args.amp)
    print(f"best {cfg.best_metric} {best['score']} at epoch {best['epoch']}; files in {results_dir}")
    return best["brief"]


def peak_memory_mib(device):
    """CUDA: the most memory torch allocated on the GPU; CPU: the process's peak resident set
    (features in memory included, so it is an upper bound on what the model needs)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # Linux reports KiB


def write_timing(results_dir, timing, device, model_name, n_params, amp=False):
    """timing.json: what the comparison table reads (this process's epochs only)."""
    epochs = timing["train_seconds"]
    per_query = (1000 * timing["predict_seconds"] / timing["predicted_queries"]
                 if timing["predict_seconds"] is not None else None)
    metrics.write_json_atomic(os.path.join(results_dir, "timing.json"), {
        "model": model_name, "trainable_parameters": n_params, "device": str(device),
        "threads": torch.get_num_threads(), "amp": amp, "epochs_timed": len(epochs),
        "train_seconds_per_epoch": sum(epochs) / len(epochs) if epochs else None,
        # Of which: waiting for the loader (features are in memory: collate + device copy).
        "load_seconds_per_epoch": (sum(timing["load_seconds"]) / len(epochs)
                                   if epochs else None),
        "inference_ms_per_query": per_query,
        "peak_memory_mib": peak_memory_mib(device)})


def evaluate_only(args, module, model, cfg, spec, feat_root, dataset, results_dir, device, domain):
    """--eval-only: predictions and metrics of one checkpoint; QVH also gets test predictions.
    With --eval-split another (labelled) split is scored instead, into files named after it."""
    show = not args.no_progress
    split = args.eval_split
    # The eval split keeps the names training writes (val_preds.jsonl, metrics.json); another split
    # gets its own, so a train-split check never reads as the reported numbers.
    other = split != spec.eval_split
    preds_name, metrics_name = ((f"{split}_preds", f"{split}_metrics") if other
                                else ("val_preds", "metrics"))
    rows = predict_split(model, module, dataset, cfg, device, args.data, show)
    result = score(rows, dataset, args.data)
    metrics.write_jsonl_atomic(os.path.join(results_dir, f"{preds_name}.jsonl"), rows)
    metrics.write_json_atomic(os.path.join(results_dir, f"{metrics_name}.json"), {
        "model": args.model, "data": args.data, "domain": domain, "split": split,
        "checkpoint": os.path.abspath(args.resume), "brief": result["brief"]})
    print(f"{split} split:\n" + json.dumps(result["brief"], indent=4))
    if uses_nms(cfg, args.data):
        nms_rows = apply_nms(rows, cfg)
        nms_result = score(nms_rows, dataset, args.data)
        metrics.write_jsonl_atomic(os.path.join(results_dir, f"{preds_name}_nms.jsonl"), nms_rows)
        metrics.write_json_atomic(os.path.join(results_dir, f"{metrics_name}_nms.json"), {
            "model": args.model, "data": args.data, "split": split,
            "checkpoint": os.path.abspath(args.resume), "nms_thd": cfg.nms_thd,
            "brief": nms_result["brief"]})
        print(f"with NMS {cfg.nms_thd}:\n" + json.dumps(nms_result["brief"], indent=4))
    if args.data == "qvh" and not other:
        # The QVHighlights test split: the submission file the (former) CodaLab server took.
        test = data.load_dataset(spec, feat_root, "test", anno_dir=args.anno_dir, progress=show)
        test_rows = predict_split(model, module, test, cfg, device, args.data, show)
        if uses_nms(cfg, args.data):
            # The server took one file: the NMS predictions when the model's recipe uses NMS.
            test_rows = apply_nms(test_rows, cfg)
        metrics.write_jsonl_atomic(os.path.join(results_dir, "test_preds.jsonl"), test_rows)
        print(f"test predictions: {os.path.join(results_dir, 'test_preds.jsonl')}")
        # The test labels were released after the CodaLab server closed: score locally when we have them.
        test_gt = args.test_gt or os.path.join(args.anno_dir or feat_root, QVH_TEST_GT)
        if os.path.isfile(test_gt):
            test_result = metrics.evaluate_qvh(test_rows, metrics.read_jsonl(test_gt))
            metrics.write_json_atomic(os.path.join(results_dir, "test_metrics.json"), {
                "model": args.model, "data": args.data, "split": "test", "gt": os.path.abspath(test_gt),
                "checkpoint": os.path.abspath(args.resume), "brief": test_result["brief"]})
            print("test metrics:\n" + json.dumps(test_result["brief"], indent=4))
        elif args.test_gt:
            raise SystemExit(f"--test-gt: no file at {args.test_gt}")
    if args.plot or args.plot_qids:
        write_plots(rows, dataset, args, results_dir, spec.clip_len)
    return result["brief"]


# ----------------------------------------------------------------------------- prediction plots

def write_plots(rows, dataset, args, results_dir, clip_len):
    """One standalone SVG per chosen query: plots/<qid>.svg."""
    gt_by_qid = {a["qid"]: a for a in dataset.annotations}
    if args.plot_qids:
        missing = [q for q in args.plot_qids if q not in gt_by_qid]
        if missing:
            raise SystemExit(f"--plot-qids: {missing} not in the {args.data} eval split")
        wanted = set(args.plot_qids)
        chosen = [r for r in rows if r["qid"] in wanted]
    else:
        chosen = rows[:args.plot]
    os.makedirs(os.path.join(results_dir, "plots"), exist_ok=True)
    for row in chosen:
        path = os.path.join(results_dir, "plots", f"{row['qid']}.svg")
        metrics.write_text_atomic(path, prediction_svg(row, gt_by_qid[row["qid"]], clip_len))
    print(f"{len(chosen)} plots in {os.path.join(results_dir, 'plots')}")


def _xml(text):
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def prediction_svg(row, gt, clip_len, top_k=3, width=900):
    """A picture of one query's prediction against its ground truth, as a standalone SVG string.

    Top panel, over the video's time axis: the ground-truth windows as green bands, the annotators'
    mean saliency per clip as grey bars (0..4 for QVHighlights, 1..5 for TVSum; Charades-STA has
    none), and the predicted saliency as a blue curve (min-max scaled to the panel, since only its
    ranking matters to the metrics). Below it: the top-k predicted windows as orange bars with
    their scores, the best first. No plotting library: a few SVG primitives are all it takes.
    """
    saliency = row.get("pred_saliency_scores") or []
    n_clips = len(saliency)
    duration = float(gt.get("duration") or n_clips * clip_len)
    if "label" in gt:                                  # TVSum: "duration" counts shots, not seconds
        duration = n_clips * clip_len
    windows = (row.get("pred_relevant_windows") or [])[:top_k]
    left, right, top, panel_h = 60, 20, 50, 160
    lane_h = 22
    height = top + panel_h + 30 + lane_h * len(windows) + 30
    plot_w = width - left - right

    def x(seconds):
        return left + plot_w * min(max(seconds / duration, 0.0), 1.0)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="20" font-size="14" font-weight="bold">{_xml(gt.get("query", ""))}</text>',
           f'<text x="{left}" y="38" fill="#555">qid {_xml(row["qid"])} · vid {_xml(row.get("vid", ""))} · '
           f'{duration:g} s, {n_clips} clips</text>',
           f'<text x="{left}" y="{height - 10}" fill="#555">'
           f'<tspan fill="#2ca02c">■</tspan> GT windows  <tspan fill="#999">■</tspan> annotators\' mean '
           f'score  <tspan fill="#1f77b4">━</tspan> predicted saliency  <tspan fill="#ff7f0e">■</tspan> '
           f'top-{top_k} predicted windows</text>']
    # ground-truth windows (green bands)
    for st, ed in gt.get("relevant_windows") or []:
        out.append(f'<rect class="gt-window" x="{x(st):.1f}" y="{top}" width="{x(ed) - x(st):.1f}" '
                   f'height="{panel_h}" fill="#2ca02c" fill-opacity="0.18"/>')
    # annotators' mean score per clip (grey bars)
    gt_scores, max_score = {}, 4.0
    if gt.get("saliency_scores"):
        gt_scores = {c: sum(s) / len(s) for c, s in zip(gt["relevant_clip_ids"], gt["saliency_scores"])}
    elif "label" in gt:
        gt_scores = {c: sum(s) / len(s) for c, s in enumerate(gt["label"])}
        max_score = 5.0
    for c, value in sorted(gt_scores.items()):
        h = panel_h * value / max_score
        out.append(f'<rect class="gt-saliency" x="{x(c * clip_len):.1f}" y="{top + panel_h - h:.1f}" '
                   f'width="{max(x((c + 1) * clip_len) - x(c * clip_len) - 1, 0.5):.1f}" '
                   f'height="{h:.1f}" fill="#999" fill-opacity="0.6"/>')
    # predicted saliency (blue curve through the clip centres)
    if n_clips:
        lo, hi = min(saliency), max(saliency)
        span = (hi - lo) or 1.0
        points = " ".join(f"{x((i + 0.5) * clip_len):.1f},{top + panel_h * (1 - (v - lo) / span):.1f}"
                          for i, v in enumerate(saliency))
        out.append(f'<polyline class="pred-saliency" points="{points}" fill="none" '
                   f'stroke="#1f77b4" stroke-width="2"/>')
    # panel frame and time ticks
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{panel_h}" fill="none" stroke="#333"/>')
    step = next(s for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600) if duration / s <= 10)
    t = 0.0
    while t <= duration + 1e-9:
        out.append(f'<text x="{x(t):.1f}" y="{top + panel_h + 15}" text-anchor="middle" '
                   f'fill="#333">{t:g}</text>')
        t += step
    out.append(f'<text x="{left - 8}" y="{top + 12}" text-anchor="end" fill="#1f77b4">pred</text>')
    out.append(f'<text x="{left - 8}" y="{top + panel_h}" text-anchor="end" fill="#777">GT</text>')
    # top-k predicted windows (orange bars, best first)
    for k, (st, ed, s) in enumerate(windows):
        y = top + panel_h + 30 + k * lane_h
        out.append(f'<rect class="pred-window" x="{x(st):.1f}" y="{y}" width="{max(x(ed) - x(st), 1):.1f}" '
                   f'height="{lane_h - 6}" fill="#ff7f0e"/>')
        out.append(f'<text x="{left - 8}" y="{y + 12}" text-anchor="end">#{k + 1} {s:.2f}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- main

def main(argv=None):
    raw_argv = list(sys.argv[1:] if argv is None else argv)     # --jobs hands it to its children
    args = parse_args(argv)
    if args.jobs < 1:
        raise SystemExit("--jobs: at least 1")
    if args.jobs > 1 and (args.data != "tvsum" or args.domain or args.resume or args.eval_only
                          or args.compare or args.benchmark or args.tvsum_summary):
        raise SystemExit("--jobs trains TVSum domains in parallel: it goes with --data tvsum "
                         "without --domain, --resume, --eval-only, --compare or --benchmark")
    if args.tvsum_summary:
        return tvsum_summary(args.tvsum_summary)
    if args.benchmark:
        return benchmark(args)
    if args.compare:
        return compare(args)
    module = MODELS[args.model]

    checkpoint = None
    if args.resume:
        checkpoint = read_checkpoint(args.resume, "--resume")
        if checkpoint.get("model_name") != args.model or checkpoint.get("data") != args.data:
            raise SystemExit(f"--resume: {args.resume} is a {checkpoint.get('model_name')} run on "
                             f"{checkpoint.get('data')}, not {args.model} on {args.data}")
        # A resumed run goes on with its pretraining corpus and its feature streams.
        args.pretrain = args.pretrain or checkpoint.get("pretrain")
        args.amp = args.amp or bool(checkpoint.get("amp"))       # a resumed run keeps its precision
        streams = checkpoint.get("streams") or {}
        args.video_feats = args.video_feats or streams.get("video")
        args.text_feats = args.text_feats or streams.get("text")
    elif args.eval_only:
        raise SystemExit("--eval-only needs --resume CKPT (the weights to evaluate)")
    if (args.plot or args.plot_qids or args.test_gt or args.eval_split) and not args.eval_only:
        raise SystemExit("--plot, --plot-qids, --test-gt and --eval-split go with --eval-only "
                         "--resume CKPT")
    if args.init and (args.resume or args.eval_only):
        raise SystemExit("--init starts a new run from a checkpoint's weights; it does not go "
                         "with --resume or --eval-only")
    if args.pretrain and args.data == "tvsum":
        raise SystemExit("--pretrain: the pretraining corpora are QVHighlights / Charades-STA style")
    cfg = build_config(module, args, checkpoint["config"] if checkpoint else None)

    feat_root = args.feat_root or os.path.join("features", args.data)
    try:
        # --summary reads no file, so it does not look for the layout either.
        spec = data.dataset_spec(args.data, None if args.summary else feat_root, args.layout,
                                 args.video_feats, args.text_feats)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if hasattr(module, "data_settings"):
        # The model's official loader preprocesses this dataset differently (e.g. VideoLights cuts
        # Charades-STA videos at 75 clips): same files, other cuts/normalisation.
        spec = dataclasses.replace(spec, **module.data_settings(args.data))
    if args.eval_split and (args.eval_split not in spec.splits
                            or args.eval_split in spec.unlabelled_splits):
        labelled = [s for s in spec.splits if s not in spec.unlabelled_splits]
        raise SystemExit(f"--eval-split: {args.data} has the labelled splits "
                         f"{', '.join(labelled)}, not {args.eval_split!r}")
    if args.test_gt and args.eval_split not in (None, spec.eval_split):
        raise SystemExit(f"--test-gt scores the QVH test submission, which --eval-only writes "
                         f"with the eval split only, not with --eval-split {args.eval_split}")
    if args.eval_only:
        args.eval_split = args.eval_split or spec.eval_split    # the split --eval-only scores
    args.video_feats = ",".join(s.name for s in spec.video_streams)     # recorded in checkpoints
    args.text_feats = ",".join(s.name for s in spec.text_streams)

    if args.summary:
        video_dim, text_dim = spec.video_dim, spec.text_dim     # from the spec alone: no file read
        model, _ = module.build(cfg, video_dim, text_dim)
        print(model)
        print(f"input dims: video {video_dim}, text {text_dim}")
        print(f"trainable parameters: {count_parameters(model)}")
        return 0

    blip = any(s.name == "blip" for s in spec.video_streams + spec.text_streams)
    if args.data == "synthetic" and (args.feat_root is None or not os.path.isfile(
            os.path.join(feat_root, data.SYNTHETIC_MARKER))):
        # Generated on first use (seconds). A set you generated yourself under --feat-root (e.g.
        # `python data.py synthetic --out DIR` with other sizes) is used as it is.
        data.ensure_synthetic(feat_root, progress=not args.no_progress, blip=blip)
    if args.pretrain == "synthetic":
        if args.data != "synthetic":
            raise SystemExit("--pretrain synthetic goes with --data synthetic")
        args.pretrain = data.ensure_synthetic_pretrain(feat_root, blip=blip,
                                                       progress=not args.no_progress)

    if args.results_dir:
        results_dir = args.results_dir
    elif args.resume and args.eval_only:
        stem = os.path.splitext(os.path.basename(args.resume))[0]
        results_dir = os.path.join(os.path.dirname(os.path.abspath(args.resume)), f"eval_{stem}")
    elif args.resume:
        results_dir = os.path.dirname(os.path.abspath(args.resume))
    else:
        results_dir = os.path.join("results", f"{args.model}_{args.data}"
                                   + ("_pretrain" if args.pretrain else ""))
    if args.data == "tvsum":
        domains = [args.domain] if args.domain else (
            [checkpoint["domain"]] if checkpoint and checkpoint.get("domain") else data.TVSUM_DOMAINS)
        if len(domains) == 1:
            run(args, module, cfg, spec, feat_root, results_dir, domains[0], checkpoint)
            return 0
        # All ten domains, one run each in <results>/<domain>/: hours on a CPU, so the same
        # command again reuses the finished domains and resumes an interrupted one. With --jobs
        # the child processes train them first, and this loop then finds them all finished.
        if args.jobs > 1:
            train_domains_in_parallel(args, raw_argv, cfg, results_dir, domains)
        table = {}
        for domain in domains:
            sub = os.path.join(results_dir, domain)
            table[domain] = run_or_reuse_domain(args, module, cfg, spec, feat_root, sub, domain)
        reference = metrics.tvsum_reference(
            data.load_annotations(spec, "val", args.anno_dir or feat_root))
        print_tvsum_table(table, results_dir, args.model, cfg, reference)
        return 0
    run(args, module, cfg, spec, feat_root, results_dir, None, checkpoint)
    return 0


# ----------------------------------------------------------------------------- --compare

COMPARE_SEED = 2018      # Moment-DETR's default seed, when --seed is not given
COMPARE_KEYS = ("MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mAP@0.5", "MR-full-mAP@0.75",
                "MR-full-mAP", "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1",
                "MR-full-R1@0.3", "MR-full-mIoU", "mAP")


def benchmark(args):
    """--benchmark: how fast each model trains at QVHighlights' scale. The set is the synthetic
    generator at the release's sizes and dims, in its file layout, so the children read it with the
    real QVH loader and the models' QVH configs; the metrics of one epoch mean nothing here."""
    if args.data != "synthetic" or args.compare:
        raise SystemExit("--benchmark generates its own QVHighlights-sized set and compares the "
                         "models on it: it takes no --data and no --compare")
    root = args.feat_root or os.path.join("features", "synthetic_qvh")
    data.ensure_synthetic(root, progress=not args.no_progress, **data.QVH_SIZED)
    args.data, args.feat_root = "qvh", root
    args.epochs = args.epochs or 1
    args.results_dir = args.results_dir or os.path.join("results", "benchmark_qvh")
    sizes = data.QVH_SIZED
    return compare(args, label=(f"QVHighlights-sized synthetic set in {root} ({sizes['n_train']:,} "
                                f"train / {sizes['n_val']:,} val queries, real dims), read as qvh"))


def compare(args, label=None):
    """--compare: one child process per model (so each gets its own peak-memory figure), the same
    data and seed, each model's own recipe otherwise; then one table."""
    names = args.models.split(",") if args.models else sorted(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; choose from {', '.join(sorted(MODELS))}")
    if args.data == "tvsum" and not args.domain:
        raise SystemExit("--compare on TVSum needs one --domain (each domain is its own run)")
    root = args.results_dir or os.path.join("results", f"compare_{args.data}")
    seed = args.seed if args.seed is not None else COMPARE_SEED
    passed = [("--feat-root", args.feat_root), ("--anno-dir", args.anno_dir),
              ("--domain", args.domain), ("--epochs", args.epochs), ("--device", args.device),
              ("--eval-every", args.eval_every), ("--batch-size", args.batch_size)]
    rows = []
    for name in names:
        run_dir = os.path.join(root, name)
        cmd = [sys.executable, os.path.abspath(__file__), "--model", name, "--data", args.data,
               "--seed", str(seed), "--results-dir", run_dir]
        cmd += [str(x) for flag, value in passed if value is not None for x in (flag, value)]
        cmd += [x for item in args.overrides for x in ("--set", item)]
        cmd += ["--no-progress"] if args.no_progress else []
        cmd += ["--amp"] if args.amp else []
        done = os.path.isfile(os.path.join(run_dir, "timing.json"))
        if not done and os.path.isfile(os.path.join(run_dir, "last.ckpt")):
            cmd += ["--resume", os.path.join(run_dir, "last.ckpt")]
        if done:
            print(f"{name}: finished run found in {run_dir}, reused")
        else:
            print(f"{name}: " + " ".join(cmd[1:]))
            if subprocess.run(cmd).returncode != 0:
                raise SystemExit(f"--compare: the {name} run failed; fix it and run the same "
                                 f"command again (finished runs are reused)")
        with open(os.path.join(run_dir, "timing.json")) as f:
            timing = json.load(f)
        with open(os.path.join(run_dir, "metrics.json")) as f:
            best = json.load(f)
        with open(os.path.join(run_dir, "config.json")) as f:
            config = json.load(f)["config"]
        rows.append((name, timing, best, config))
    text = comparison_table(rows, label or args.data, seed)
    metrics.write_text_atomic(os.path.join(root, "comparison.md"), text)
    print(text)
    return 0


def comparison_table(rows, data_name, seed):
    """Markdown: one row per model. Metrics are the best evaluation's (each model's own official
    selection criterion); timings are from the run's own process."""
    keys = [k for k in COMPARE_KEYS if all(k in best["brief"] for _, _, best, _ in rows)]
    head = (["model", "params", "epochs", "best epoch", "train s/epoch", "of which loading",
             "infer ms/query", "peak MiB"]
            + [k.replace("MR-full-", "MR ").replace("HL-min-VeryGood-", "HD ") for k in keys])
    lines = [f"Data: {data_name}, seed {seed}, device {rows[0][1]['device']} "
             f"({rows[0][1]['threads']} thread{'s' if rows[0][1]['threads'] != 1 else ''}"
             + (", --amp: bfloat16 autocast" if rows[0][1].get("amp") else "") + "). Peak memory: " +
             ("torch's peak GPU allocation." if rows[0][1]["device"].startswith("cuda") else
              "the process's peak resident set, features in memory included."), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, timing, best, config in rows:
        per_epoch, per_query = timing["train_seconds_per_epoch"], timing["inference_ms_per_query"]
        loading = timing.get("load_seconds_per_epoch")
        cells = [name, f"{timing['trainable_parameters']:,}", str(config["epochs"]),
                 str(best["epoch"]), "-" if per_epoch is None else f"{per_epoch:.1f}",
                 "-" if loading is None else f"{loading:.2f}",
                 "-" if per_query is None else f"{per_query:.2f}",
                 f"{timing['peak_memory_mib']:.0f}"] + [f"{best['brief'][k]:.2f}" for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- TVSum, all domains

# The papers' TVSum rows (top-5 mAP x 100, domains in TVSUM_DOMAINS order, then the average),
# printed beside ours. TR-DETR, TaskWeave and VideoLights used the I3D features of data.py's TVSum
# release; FlashVTG's paper used SlowFast + CLIP, which this repository does not load for TVSum.
TVSUM_PAPER = {
    "trdetr": ("paper, Table 3 (I3D)",
               [89.3, 93.0, 94.3, 85.1, 88.0, 88.6, 80.4, 91.3, 89.5, 81.6, 88.1]),
    "taskweave": ("paper, Table 1 (I3D)",
                  [88.2, 90.8, 93.3, 87.5, 87.0, 82.0, 80.9, 92.9, 89.5, 81.2, 87.3]),
    "videolights": ("paper, Table III (I3D)",
                    [89.8, 88.7, 95.0, 88.0, 83.6, 90.1, 79.4, 94.2, 88.6, 81.2, 87.9]),
    "flashvtg": ("paper, Table 5 (SlowFast + CLIP: other features, not comparable)",
                 [88.32, 94.33, 91.5, 87.7, 87.08, 91.12, 74.7, 93.4, 90.3, 81.7, 88.0]),
}


def domain_state(args, cfg, sub):
    """Where one domain of the all-domain TVSum command stands: "new", "running" (another live
    process, e.g. a --domain command started by hand, holds its running.pid), "interrupted"
    (resumable from its last.ckpt), "killed in its first epoch" (no checkpoint yet: started over,
    which loses less than one epoch) or "finished" (timing.json is written last). A folder that
    holds a run with another configuration is refused, never mixed into the table."""
    config_path = os.path.join(sub, "config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            saved = json.load(f)
        if saved.get("model") != args.model or saved.get("config") != json.loads(
                json.dumps(dataclasses.asdict(cfg))):
            raise SystemExit(f"{sub} holds a {saved.get('model')} run with another configuration "
                             f"than this command's; pass another --results-dir")
    if lock_holder(sub):
        return "running"          # before the checks below: its files are still being written
    if not os.path.isfile(config_path):
        return "new"
    if os.path.isfile(os.path.join(sub, "timing.json")):
        return "finished"
    if not os.path.isfile(os.path.join(sub, "last.ckpt")):
        return "killed in its first epoch"
    return "interrupted"


def start_domain_again(sub, domain):
    """Empty the folder of a domain run killed during its first epoch (before its first last.ckpt,
    e.g. by Ctrl-C on the all-domain command just after it started that domain), so it can be
    trained from the start. At most one epoch's log is lost; nothing could resume from it."""
    print(f"{domain}: the run in {sub} was stopped during its first epoch, before any "
          f"checkpoint; starting it again")
    shutil.rmtree(sub)


def run_or_reuse_domain(args, module, cfg, spec, feat_root, sub, domain):
    """One domain of the all-domain TVSum command: reuse a finished run, resume an interrupted one
    from its last.ckpt, or train it; returns its best top-5 mAP."""
    state = domain_state(args, cfg, sub)
    if state == "running":
        raise SystemExit(f"{domain}: {sub} is being trained into by process {lock_holder(sub)} "
                         f"(another command); run this command again once it has ended (the "
                         f"domains done so far are reused), or add --jobs 2, which waits for it")
    if state == "finished":
        with open(os.path.join(sub, "metrics.json")) as f:
            best = json.load(f)
        print(f"{domain}: finished run found in {sub}, reused")
        return best["brief"]["mAP"]
    if state == "interrupted":
        print(f"{domain}: resuming the interrupted run in {sub}")
        checkpoint = read_checkpoint(os.path.join(sub, "last.ckpt"), domain)
        return run(args, module, cfg, spec, feat_root, sub, domain, checkpoint)["mAP"]
    if state == "killed in its first epoch":
        start_domain_again(sub, domain)
    return run(args, module, cfg, spec, feat_root, sub, domain)["mAP"]


JOBS_POLL_S = 1.0      # --jobs: how often the parent looks for finished children


def train_domains_in_parallel(args, raw_argv, cfg, results_dir, domains):
    """--jobs N: train the domains that are not finished, N at a time. Each is a child process of
    this same command line restricted to one domain (--domain D --results-dir <results>/D, plus
    --resume for an interrupted one), with 1/N of this process's threads (OMP_NUM_THREADS), so N
    runs share the cores instead of fighting over them. A child's output goes to
    <results>/D/output.txt; its running.pid keeps a second command from training the same domain.
    A domain's state is looked at again when its turn comes, since a command started by hand beside
    this one (to use an idle core) may have finished it meanwhile, or may be training it: then this
    command waits for that process and reuses its run, or resumes it if the process died.
    A failed domain does not stop the others: the failures are reported once all have ended."""
    threads = max(1, torch.get_num_threads() // args.jobs)
    todo = [d for d in domains
            if domain_state(args, cfg, os.path.join(results_dir, d)) != "finished"]
    if not todo:
        return                              # the table pass below says "reused"
    total = len(todo)
    print(f"--jobs {args.jobs}: training {total} domain(s) ({' '.join(todo)}), "
          f"{args.jobs} at a time, {threads} thread(s) each; output in <domain>/output.txt")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    running, waiting, failed, ended = {}, [], [], 0
    try:
        while todo or running or waiting:
            # A domain another process was training comes back into the queue once it has ended.
            for domain in [d for d in waiting if not lock_holder(os.path.join(results_dir, d))]:
                waiting.remove(domain)
                todo.insert(0, domain)
            while todo and len(running) < args.jobs:
                domain = todo.pop(0)
                sub = os.path.join(results_dir, domain)
                state = domain_state(args, cfg, sub)
                if state == "finished":
                    ended += 1
                    print(f"{domain}: finished meanwhile by another command, reused "
                          f"({ended} of {total})")
                    continue
                if state == "running":
                    waiting.append(domain)
                    print(f"{domain}: being trained into by process {lock_holder(sub)} (another "
                          f"command); waiting for it to end")
                    continue
                if state == "killed in its first epoch":
                    start_domain_again(sub, domain)
                # Flags given later win in argparse, so the appended ones override the user's.
                cmd = [sys.executable, os.path.abspath(__file__), *raw_argv, "--jobs", "1",
                       "--no-progress", "--domain", domain, "--results-dir", sub]
                if state == "interrupted":
                    cmd += ["--resume", os.path.join(sub, "last.ckpt")]
                os.makedirs(sub, exist_ok=True)
                out = open(os.path.join(sub, "output.txt"), "a")
                running[domain] = (subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                                    env=env), out, sub)
                print(f"{domain}: started ({'resuming' if state == 'interrupted' else 'new run'}, "
                      f"pid {running[domain][0].pid})")
            time.sleep(JOBS_POLL_S)
            for domain in [d for d, (proc, _, _) in running.items() if proc.poll() is not None]:
                proc, out, sub = running.pop(domain)
                out.close()
                ended += 1
                if proc.returncode == 0:
                    with open(os.path.join(sub, "metrics.json")) as f:
                        best = json.load(f)
                    print(f"{domain}: finished, best mAP {best['brief']['mAP']} at epoch "
                          f"{best['epoch']} ({ended} of {total})")
                else:
                    failed.append(domain)
                    print(f"{domain}: FAILED (exit code {proc.returncode}; {ended} of {total}); "
                          f"see {os.path.join(sub, 'output.txt')}")
    finally:
        # Ctrl-C or an error in this process: stop the children too. Their last.ckpt stays, so the
        # same command resumes them.
        for proc, out, _ in running.values():
            proc.terminate()
            proc.wait()
            out.close()
    if failed:
        raise SystemExit(f"--jobs: the {', '.join(failed)} run(s) failed (the end of their "
                         f"output.txt says why); the other domains are done. Fix it and run the "
                         f"same command again: finished domains are reused")


def eval_history(results_dir):
    """{epoch: brief metrics} of every evaluation a run logged in its log.txt. A resumed run
    re-does the epochs after its last checkpoint, so an epoch may appear twice: the later wins."""
    history = {}
    path = os.path.join(results_dir, "log.txt")
    if not os.path.isfile(path):
        return history
    with open(path) as f:
        for line in f:
            parts = line.split(" ", 3)                     # "eval epoch N {json}" (not "... nms")
            if len(parts) == 4 and parts[:2] == ["eval", "epoch"] and parts[3].startswith("{"):
                history[int(parts[2])] = json.loads(parts[3])
    return history


def print_tvsum_table(table, results_dir, model_name, cfg, reference=None):
    """Top-5 mAP per TVSum domain (x100, the papers' format) and the average, as markdown, beside
    the paper's row; tvsum_table.json keeps ours with the run's model, seed, epochs and config.

    A second row gives each domain's mean over ALL its evaluations (every eval_every epochs): the
    best-epoch row picks the maximum of a few hundred evaluations of one video, so the distance
    between the two rows is how much that selection adds (see the README's TVSum section).
    `reference` (metrics.tvsum_reference) adds a random ranking's and the annotators' consensus
    ranking's scores on the same val videos."""
    best_epoch, mean_evals, n_evals = {}, {}, {}
    for domain in table:
        sub = os.path.join(results_dir, domain)
        with open(os.path.join(sub, "metrics.json")) as f:
            best_epoch[domain] = json.load(f)["epoch"]
        values = [brief["mAP"] for brief in eval_history(sub).values()]
        mean_evals[domain] = sum(values) / len(values) if values else float("nan")
        n_evals[domain] = len(values)
    avg = sum(table.values()) / len(table)
    avg_evals = sum(mean_evals.values()) / len(mean_evals)
    lines = ["| | " + " | ".join(table) + " | Avg |", "|---|" + "---|" * (len(table) + 1),
             f"| {model_name}, seed {cfg.seed}, {cfg.epochs} epochs | "
             + " | ".join(f"{100 * v:.1f}" for v in table.values()) + f" | {100 * avg:.1f} |",
             f"| the same, mean of all evaluations | "
             + " | ".join(f"{100 * v:.1f}" for v in mean_evals.values())
             + f" | {100 * avg_evals:.1f} |"]
    if model_name in TVSUM_PAPER and list(table) == data.TVSUM_DOMAINS:
        source, row = TVSUM_PAPER[model_name]
        lines.append(f"| {source} | " + " | ".join(f"{v:g}" for v in row) + " |")
    names = {"random": "a random ranking (mean of 1,000)",
             "annotator_mean": "the annotators' mean score as ranking"}
    for key, values in (reference or {}).items():
        row = [values[d] for d in table]
        lines.append(f"| {names[key]} | " + " | ".join(f"{100 * v:.1f}" for v in row)
                     + f" | {100 * sum(row) / len(row):.1f} |")
    print("\n".join(lines))
    print("(the official protocol selects each domain's epoch on the same val video it reports)")
    metrics.write_json_atomic(os.path.join(results_dir, "tvsum_table.json"), {
        "model": model_name, "seed": cfg.seed, "epochs": cfg.epochs, "mAP": table, "Avg": avg,
        "best_epoch": best_epoch, "mean_of_evaluations": mean_evals, "evaluations": n_evals,
        "reference": reference, "config": dataclasses.asdict(cfg)})


def tvsum_summary(paths):
    """--tvsum-summary: the runs' tvsum_table.json files (or the folders holding them) -> per model,
    mean +- sample standard deviation over seeds per domain, beside the paper's row (markdown).
    Runs of one model must share their configuration apart from the seed."""
    runs = {}
    for path in paths:
        file = os.path.join(path, "tvsum_table.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise SystemExit(f"--tvsum-summary: no tvsum_table.json at {path} (an all-domain "
                             f"TVSum run writes it in its results folder when all 10 domains "
                             f"have finished)")
        with open(file) as f:
            run_table = json.load(f)
        runs.setdefault(run_table["model"], []).append((file, run_table))
    lines = ["| | " + " | ".join(data.TVSUM_DOMAINS) + " | Avg |",
             "|---|" + "---|" * (len(data.TVSUM_DOMAINS) + 1)]
    def without_seed(t):
        return {k: v for k, v in (t.get("config") or {}).items() if k != "seed"}

    for model_name, group in runs.items():
        first_file, first = group[0]
        for file, t in group[1:]:
            if (t["epochs"], without_seed(t)) != (first["epochs"], without_seed(first)):
                raise SystemExit(f"--tvsum-summary: {file} and {first_file} are {model_name} runs "
                                 f"with different configurations; summarise them separately")
        seeds = [t["seed"] for _, t in group]
        if len(set(seeds)) != len(seeds):
            raise SystemExit(f"--tvsum-summary: {model_name} seed given twice ({seeds})")
        columns = [[t["mAP"][d] for _, t in group] for d in data.TVSUM_DOMAINS]
        columns.append([t["Avg"] for _, t in group])
        cells = []
        for values in columns:
            mean = 100 * float(np.mean(values))
            spread = 100 * float(np.std(values, ddof=1)) if len(values) > 1 else None
            cells.append(f"{mean:.1f}" + (f" ± {spread:.1f}" if spread is not None else ""))
        lines.append(f"| {model_name}, seeds {', '.join(map(str, seeds))} (mean ± std) | "
                     + " | ".join(cells) + " |")
        if model_name in TVSUM_PAPER:
            source, row = TVSUM_PAPER[model_name]
            lines.append(f"| {model_name} {source} | " + " | ".join(f"{v:g}" for v in row) + " |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (data.FeatureError, TrainingError) as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:
        sys.exit("interrupted: resume with --resume <results dir>/last.ckpt")
