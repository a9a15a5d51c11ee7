"""The one training loop for every model in this repository.

    python train.py --model trdetr --data synthetic               # the quick start, no download
    python train.py --model trdetr --data qvh                     # the official recipe
    python train.py --model trdetr --data qvh --summary           # model + parameter count only
    python train.py --model trdetr --data qvh --resume results/trdetr_qvh/last.ckpt       # continue
    python train.py --model trdetr --data qvh --eval-only --resume results/trdetr_qvh/best.ckpt

One run: the model's Config for the dataset (the official script's values; flags override them),
the splits read into memory once (data.py), then epochs of AdamW + StepLR + gradient clipping
(`train_one_epoch`); every `eval_every` epochs and at the last one, the eval split is predicted in
the official submission format and scored with metrics.py (`evaluate`), and the best checkpoint by
the model's official criterion is kept. `last.ckpt` (model, optimiser, scheduler, every RNG state)
is written after the first epoch, then at most once a minute and after the last, so `--resume`
continues a killed run exactly. TVSum trains one run per domain: without --domain, the ten in turn.
A run's folder, every file written atomically: config.json, log.txt, last.ckpt, best.ckpt,
val_preds.jsonl + metrics.json (the best evaluation; with a model's NMS also *_nms.*), timing.json.
tools/ holds what is not the loop: comparison and benchmark, TVSum report, prediction plots.
Read top to bottom: arguments, `main`, one `run`, `train` and its epoch, evaluation; the helpers
they call (argument checks, checkpoints, device, files) come last.

The model contract (see trdetr.py): `Config`, `default_config(dataset)`, `build(cfg, video_dim,
text_dim) -> (model, loss)`, `model(video_feats, video_mask, query_feats, query_mask, epoch=None)`,
`loss(outputs, batch, epoch=None) -> (total, terms)` (terms: detached 0-dim tensors),
`predict(outputs, video_mask) -> (windows, saliency)`; `epoch` is 0-based (None at standalone
inference). Optional: `data_settings(dataset)`, `pretrain_config(cfg)`, `nms(windows, cfg)` (when
cfg.nms_thd > 0), the Config fields `ema_decay` and `lr_gamma`.
"""

import argparse
import copy
import dataclasses
import json
import math
import os
import random
import resource
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

MODELS = {"trdetr": trdetr, "taskweave": taskweave, "videolights": videolights,
          "flashvtg": flashvtg}

# The official post-processing clamps every window to [0, 150] s (QVHighlights' video length)
# before rounding it to the clip grid; VideoLights and FlashVTG keep it for Charades-STA too.
MAX_WINDOW_END = 150.0
QVH_TEST_GT = "highlight_test_with_gt.jsonl"   # moment_detr's labelled test file (released later)
CHECKPOINT_EVERY_S = 60.0                     # last.ckpt: after epoch 1, then at most once a minute
LOCK_FILE = "running.pid"                     # holds the pid of the process training into a folder
# What a run writes into its folder (a run stopped before its first checkpoint is cleared of them).
RUN_FILES = ("config.json", "log.txt", "best.ckpt", "val_preds", "metrics", "timing.json")
# The per-evaluation line shows the papers' headline columns (all of a shorter brief block).
HEADLINE_KEYS = ("MR-full-R1@0.3", "MR-full-R1@0.5", "MR-full-R1@0.7", "MR-full-mIoU",
                 "MR-full-mAP@0.5", "MR-full-mAP@0.75", "MR-full-mAP",
                 "HL-min-VeryGood-mAP", "HL-min-VeryGood-Hit1", "mAP")


class TrainingError(Exception):
    """A run that cannot go on (e.g. a non-finite loss); the message says where its last good state is."""


# ----------------------------------------------------------------------------- arguments and config

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train and evaluate a moment retrieval + highlight "
                                "detection model.", epilog="examples:\n" + __doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--model", choices=sorted(MODELS), default="trdetr", help="default: trdetr")
    a("--data", choices=["qvh", "charades", "tvsum", "synthetic"], default="synthetic",
      help="default: synthetic (generated on first use); the others: README, Getting the features")
    a("--feat-root", help="the dataset's feature folder (default: features/<data>)")
    a("--anno-dir", help="folder of the annotation files (default: --feat-root)")
    a("--layout", choices=data.LAYOUTS, help="feature release layout (default: detected on disk)")
    a("--video-feats", metavar="A,B", help="video streams (default slowfast,clip; TVSum i3d; "
      "VideoLights-B: slowfast,clip,blip)")
    a("--text-feats", metavar="A,B", help="text streams (default clip; VideoLights-B: clip,blip)")
    a("--domain", choices=data.TVSUM_DOMAINS, help="TVSum: this domain only (default: all 10)")
    a("--results-dir", help="where the run writes (default: results/<model>_<data>)")
    a("--epochs", type=positive(int), help="override the config's epochs")
    a("--batch-size", type=positive(int), help="override the config's batch size")
    a("--lr", type=positive(float), help="override the config's learning rate")
    a("--seed", type=int, help="override the config's (official) seed")
    a("--eval-every", type=positive(int), help="evaluate every N epochs")
    a("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
      help="override any Config field, e.g. --set enc_layers=3 (repeatable)")
    a("--resume", metavar="CKPT", help="continue the run of this last.ckpt; with --eval-only: "
      "the weights to evaluate")
    a("--eval-only", action="store_true", help="score --resume CKPT on the eval split (QVH: also "
      "write the test submission)")
    a("--eval-split", metavar="SPLIT", help="with --eval-only: score this labelled split instead "
      "(e.g. train), into <SPLIT>_preds.jsonl and <SPLIT>_metrics.json")
    a("--test-gt", metavar="JSONL", help="QVH, --eval-only: the labelled test file (default: "
      f"{QVH_TEST_GT} in the annotation folder, when present)")
    a("--pretrain", metavar="JSONL", help="train on this pretraining corpus with the model's "
      "pretraining recipe ('synthetic': a generated one); then fine-tune with --init")
    a("--pretrain-feat-root", metavar="DIR", help="the corpus's features (default: --feat-root)")
    a("--init", metavar="CKPT", help="start from these weights only (fine-tuning)")
    a("--summary", action="store_true", help="print the model and its parameter count, then exit")
    a("--device", help="e.g. cpu or cuda (default: cuda when available)")
    a("--amp", action="store_true", help="train the forward under bfloat16 autocast (Ampere+ "
      "GPUs, CPUs with AMX/AVX512-BF16); loss, optimiser and evaluation stay float32")
    a("--tf32", action="store_true", help="let float32 matmuls and convolutions use TF32 on "
      "Ampere+ GPUs (faster, ~1e-3 relative error); default: full float32")
    a("--deterministic", action="store_true", help="deterministic GPU kernels where torch has them "
      "(slower; it warns about any op without one): a resumed GPU run then repeats exactly")
    a("--compile", action="store_true", help="torch.compile the model for training (minutes of "
      "compilation first; a GPU question: slower on a 2-core CPU)")
    a("--keep-on-device", choices=["auto", "on", "off"], default="auto", help="keep the splits' "
      "features in GPU memory, so a step copies no features (auto: on a GPU, when they fit)")
    a("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def build_config(module, args, saved=None):
    """The run's Config: the saved one when resuming, else the model's official defaults for the
    dataset (or its pretraining recipe); then the command-line overrides, checked against the
    fields. A resumed or evaluated checkpoint keeps its settings: only --epochs (to extend a run)
    and eval_batch_size may differ; anything else would not fit its weights or its optimiser."""
    if saved is not None:
        cfg = module.Config(**saved)
    else:
        cfg = module.default_config(args.data)
        if args.pretrain and hasattr(module, "pretrain_config"):
            cfg = module.pretrain_config(cfg)     # e.g. VideoLights: batch 256, 50 epochs
    direct = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
              "seed": args.seed, "eval_every": args.eval_every}
    changes = {k: v for k, v in direct.items() if v is not None}
    fields = {f.name for f in dataclasses.fields(cfg)}
    for item in args.overrides:
        name, sep, text = item.partition("=")
        if not sep or name not in fields:
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(sorted(fields))}")
        changes[name] = parse_field(name, text, getattr(cfg, name))
    for name, value in changes.items():
        if saved is not None and name not in ("epochs", "eval_batch_size") and value != getattr(cfg, name):
            raise SystemExit(f"{'--eval-only' if args.eval_only else '--resume'}: the "
                             f"checkpoint's {name} is {getattr(cfg, name)!r}, this command asks "
                             f"for {value!r}; a checkpoint keeps its settings (start a new run, or "
                             f"fine-tune its weights with --init)")
    cfg = dataclasses.replace(cfg, **changes)
    check_config(cfg)
    return cfg


# ----------------------------------------------------------------------------- main, one run, TVSum

def main(argv=None):
    args = parse_args(argv)
    module = MODELS[args.model]
    checkpoint = check_arguments(args)          # reads --resume; refuses flags that contradict
    cfg = build_config(module, args, checkpoint["config"] if checkpoint else None)

    feat_root = args.feat_root or os.path.join("features", args.data)
    try:     # --summary reads no file, so it does not look for the layout either
        spec = data.dataset_spec(args.data, None if args.summary else feat_root, args.layout,
                                 args.video_feats, args.text_feats)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if hasattr(module, "data_settings"):
        # The model's official loader preprocesses this dataset its own way (e.g. VideoLights cuts
        # Charades-STA videos at 75 clips): same files, other cuts or normalisation.
        spec = dataclasses.replace(spec, **module.data_settings(args.data))
    check_eval_split(args, spec)
    args.video_feats = ",".join(s.name for s in spec.video_streams)     # recorded in checkpoints
    args.text_feats = ",".join(s.name for s in spec.text_streams)
    if args.summary:
        model, _ = module.build(cfg, spec.video_dim, spec.text_dim)     # dims from the spec alone
        print(f"{model}\ninput dims: video {spec.video_dim}, text {spec.text_dim}\n"
              f"trainable parameters: {count_parameters(model)}")
        return 0

    blip = any(s.name == "blip" for s in spec.video_streams + spec.text_streams)
    if args.data == "synthetic" and (args.feat_root is None or not os.path.isfile(
            os.path.join(feat_root, data.SYNTHETIC_MARKER))):
        # Generated on first use (seconds); a set you generated under --feat-root is used as it is.
        data.ensure_synthetic(feat_root, progress=not args.no_progress, blip=blip)
    if args.pretrain == "synthetic":
        args.pretrain = data.ensure_synthetic_pretrain(feat_root, blip=blip, progress=not args.no_progress)

    results_dir = args.results_dir or os.path.join("results", f"{args.model}_{args.data}"
                                                   + ("_pretrain" if args.pretrain else ""))
    if args.resume and not args.results_dir:     # the run's own folder; --eval-only a folder in it
        results_dir = os.path.dirname(os.path.abspath(args.resume))
        if args.eval_only:
            stem = os.path.splitext(os.path.basename(args.resume))[0]
            results_dir = os.path.join(results_dir, f"eval_{stem}")
    domain = args.domain if args.data == "tvsum" else None
    if args.data == "tvsum" and not domain:
        train_all_domains(args, module, cfg, spec, feat_root, results_dir)
    else:
        run(args, module, cfg, spec, feat_root, results_dir, domain, checkpoint)
    return 0


def run(args, module, cfg, spec, feat_root, results_dir, domain=None, checkpoint=None):
    """Train (or with --eval-only evaluate) one model on one dataset or TVSum domain, holding
    results_dir/running.pid meanwhile. Returns the best evaluation's brief metrics."""
    last_path, lock = os.path.join(results_dir, "last.ckpt"), os.path.join(results_dir, LOCK_FILE)
    busy = (f"{results_dir} is being trained into by {{who}} ({lock}); wait for it, or pass "
            f"another --results-dir")
    try:
        with data.hold_lock(lock, busy):
            data.remove_stale_temporaries(results_dir)   # a killed checkpoint write: ~90 MB each
            if checkpoint is None and os.path.exists(os.path.join(results_dir, "config.json")):
                if os.path.isfile(last_path):            # never overwrite a run's files
                    raise SystemExit(f"{results_dir} already holds a run: continue it with "
                                     f"--resume {last_path}, or pass another --results-dir")
                # Stopped during its first epoch, before any checkpoint: nothing to resume from,
                # so the same command starts it again (at most one epoch is lost).
                print(f"{results_dir}: the run there stopped during its first epoch, before any "
                      f"checkpoint; starting it again")
                for name in os.listdir(results_dir):
                    if name.startswith(RUN_FILES):
                        os.remove(os.path.join(results_dir, name))
            return train_or_evaluate(args, module, cfg, spec, feat_root, results_dir, domain,
                                     checkpoint)
    except KeyboardInterrupt:
        raise SystemExit(f"interrupted: continue with --resume {last_path}" if os.path.isfile(
            last_path) else "interrupted before the first checkpoint: run the same command again "
            "to start over") from None


def train_or_evaluate(args, module, cfg, spec, feat_root, results_dir, domain, checkpoint):
    """One run's device, data and model, then `train` (or `evaluate_only`)."""
    device = setup_device(args)
    seed_everything(cfg.seed)
    show = not args.no_progress
    # Data: each split is read into memory once; a pretraining corpus replaces the train split.
    eval_split = args.eval_split if args.eval_only else spec.eval_split
    splits = [eval_split] if args.eval_only or args.pretrain else ["train", eval_split]
    datasets = {s: data.load_dataset(spec, feat_root, s, domain=domain, anno_dir=args.anno_dir,
                                     progress=show) for s in splits}
    if args.pretrain and not args.eval_only:
        datasets["train"] = data.load_pretrain_dataset(
            spec, args.pretrain, args.pretrain_feat_root or feat_root, progress=show)
    evalset = datasets[eval_split]
    if data.keep_on_device(args.keep_on_device, device, datasets.values()):
        for dataset in datasets.values():
            dataset.to(device)
    model, criterion = module.build(cfg, evalset.video_dim, evalset.text_dim)
    if args.init and checkpoint is None:
        load_initial_weights(model, args.init, args.model)
    model.to(device)
    criterion.to(device)
    if args.eval_only:         # an EMA run's checkpoint holds both: the EMA weights are evaluated
        model.load_state_dict(checkpoint.get("ema") or checkpoint["model"])
        return evaluate_only(args, module, model, cfg, spec, feat_root, evalset, results_dir,
                             device, domain)
    return train(args, module, cfg, model, criterion, datasets["train"], evalset, spec,
                 feat_root, results_dir, domain, checkpoint, device)


def train_all_domains(args, module, cfg, spec, feat_root, results_dir):
    """TVSum without --domain: the ten domains in turn, one run each in <results>/<domain>/. Hours
    on a CPU, so the same command again reuses finished domains and resumes an interrupted one
    (run() starts one stopped before its first checkpoint again)."""
    best = {}
    for domain in data.TVSUM_DOMAINS:
        sub, checkpoint = os.path.join(results_dir, domain), None
        state = domain_state(sub, args.model, cfg)
        if state == "running":
            raise SystemExit(f"{domain}: {sub} is being trained into by process {lock_holder(sub)}; "
                             f"run this command again once it has ended (finished domains are reused)")
        if state == "finished":
            with open(os.path.join(sub, "metrics.json")) as f:
                best[domain] = json.load(f)["brief"]["mAP"]
            print(f"{domain}: finished run found in {sub}, reused")
            continue
        if state == "interrupted":
            print(f"{domain}: resuming the interrupted run in {sub}")
            checkpoint = read_checkpoint(os.path.join(sub, "last.ckpt"), domain)
        best[domain] = run(args, module, cfg, spec, feat_root, sub, domain, checkpoint)["mAP"]
    print("TVSum top-5 mAP, best evaluation per domain: "
          + " ".join(f"{d} {100 * v:.1f}" for d, v in best.items())
          + f" | Avg {100 * sum(best.values()) / len(best):.1f}\n"
          f"the table beside the paper: python tools/tvsum.py table {results_dir}")
    return best


def domain_state(sub, model_name, cfg):
    """Where one domain's folder stands: "new", "running" (a live process holds it), "finished"
    (timing.json is written last), "interrupted" (resumable from last.ckpt) or "first epoch"
    (stopped before any checkpoint). A run of another configuration is refused, never mixed in."""
    config_path = os.path.join(sub, "config.json")
    if os.path.isfile(config_path):
        with open(config_path) as f:
            saved = json.load(f)
        if (saved.get("model"), saved.get("config")) != (model_name, json.loads(json.dumps(
                dataclasses.asdict(cfg)))):
            raise SystemExit(f"{sub} holds a {saved.get('model')} run with another configuration "
                             f"than this command's; pass another --results-dir")
    if lock_holder(sub):
        return "running"
    if not os.path.isfile(config_path):
        return "new"
    if os.path.isfile(os.path.join(sub, "timing.json")):
        return "finished"
    return "interrupted" if os.path.isfile(os.path.join(sub, "last.ckpt")) else "first epoch"


# ----------------------------------------------------------------------------- training

def train(args, module, cfg, model, criterion, trainset, evalset, spec, feat_root, results_dir,
          domain, checkpoint, device):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Stepped once per epoch, as the official loops do; lr_drop >= epochs means it never decays.
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_drop,
                                                gamma=getattr(cfg, "lr_gamma", 0.1))
    # Model EMA (TaskWeave): follows the model once per epoch; it is evaluated, selected and saved.
    ema_decay = getattr(cfg, "ema_decay", 0.0)
    ema_model = copy.deepcopy(model) if ema_decay > 0 else None
    eval_model = ema_model if ema_model is not None else model
    loader_gen = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(trainset, batch_size=cfg.batch_size, shuffle=True,
                                         collate_fn=data.collate, generator=loader_gen,
                                         pin_memory=data.pin_memory(trainset, device))
    # --compile: the training forward runs compiled; the weights (and evaluation) are the module's.
    step_model = torch.compile(model) if args.compile else model
    # What every checkpoint says about its run (--resume, --init and --eval-only read it).
    identity = {"model_name": args.model, "data": args.data, "domain": domain,
                "pretrain": args.pretrain, "amp": args.amp, "config": dataclasses.asdict(cfg),
                "streams": {"video": args.video_feats, "text": args.text_feats}}
    n_params = count_parameters(model)
    start_epoch, best = 1, {"score": -float("inf"), "epoch": None, "brief": None}
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        set_rng_state(checkpoint["rng"], loader_gen)
        if ema_model is not None:
            ema_model.load_state_dict(checkpoint["ema"])
        start_epoch, best = checkpoint["epoch"] + 1, checkpoint["best"]
        print(f"resumed from epoch {checkpoint['epoch']} (best so far: {best['score']:.2f} at "
              f"epoch {best['epoch']})")
    else:
        metrics.write_json_atomic(os.path.join(results_dir, "config.json"), {
            "model": args.model, **{k: v for k, v in identity.items() if k != "model_name"},
            "feat_root": str(feat_root), "init": args.init, "layout": spec.layout,
            "trainable_parameters": n_params})
    print(f"{args.model} on {args.data}{'/' + domain if domain else ''}: {len(trainset)} train / "
          f"{len(evalset)} {spec.eval_split} queries, {n_params:,} trainable parameters, device {device}")
    timing = {"train": [], "load": [], "predict": None, "queries": len(evalset)}
    last_saved, show = float("-inf"), not args.no_progress    # the first epoch run here is saved

    for epoch in range(start_epoch, cfg.epochs + 1):
        t0 = time.time()
        try:
            means, loading = train_one_epoch(step_model, criterion, loader, optimizer, cfg, device,
                                             epoch, args.amp, show)
        except TrainingError as err:
            raise TrainingError(f"{err}; the last good state is {results_dir}/last.ckpt") from None
        scheduler.step()
        if ema_model is not None:
            update_ema(ema_model, model, ema_decay)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timing["train"].append(time.time() - t0)
        timing["load"].append(loading)
        line = (f"epoch {epoch} {time.time() - t0:.1f}s lr {optimizer.param_groups[0]['lr']:.2e} "
                + " ".join(f"{k} {v:.4f}" for k, v in sorted(means.items())))
        log_line(results_dir, line)

        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            t1 = time.time()
            evaluated = evaluate(eval_model, module, evalset, cfg, device, args.data, epoch - 1, show)
            timing["predict"] = time.time() - t1
            for suffix, (_, result) in evaluated.items():
                log_line(results_dir, f"eval epoch {epoch}{' nms ' + str(cfg.nms_thd) if suffix else ''} "
                         + json.dumps(result["brief"]))
            brief = evaluated[""][1]["brief"]
            value = selection_score(brief, cfg.best_metric)
            if value > best["score"]:
                best = {"score": value, "epoch": epoch, "brief": brief}
                save_atomic({"model": eval_model.state_dict(), "epoch": epoch, **identity},
                            os.path.join(results_dir, "best.ckpt"))
                write_predictions(results_dir, "val", evaluated, {
                    "model": args.model, "data": args.data, "domain": domain,
                    "split": spec.eval_split, "epoch": epoch, "best_metric": cfg.best_metric}, cfg)
            line = f"epoch {epoch}: " + ", ".join(
                f"{k} {v}" for k, v in brief.items()
                if k in HEADLINE_KEYS or len(brief) <= len(HEADLINE_KEYS)) + (
                "  (best)" if best["epoch"] == epoch else "")
        tqdm.write(line)

        # The resumable state is written last, after the epoch's evaluation and best.ckpt.
        if epoch == cfg.epochs or time.time() - last_saved >= CHECKPOINT_EVERY_S:
            last_saved = time.time()
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "rng": rng_state(loader_gen),
                         "ema": ema_model.state_dict() if ema_model is not None else None,
                         "epoch": epoch, "best": best, **identity},
                        os.path.join(results_dir, "last.ckpt"))

    write_timing(results_dir, timing, device, args.model, n_params, args.amp)
    print(f"best {cfg.best_metric} {best['score']} at epoch {best['epoch']}; files in {results_dir}")
    return best["brief"]


def train_one_epoch(model, criterion, loader, optimizer, cfg, device, epoch, amp=False, show=True):
    """One pass over the train split. Returns the mean of each logged loss term and the seconds
    spent waiting for batches (collate + host-to-device copy).

    Nothing in a step waits for the GPU: the loss terms (0-dim tensors) are summed on the device
    and read once, at the end of the epoch; only the progress bar reads the loss every step."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    names, sums, steps, loading = None, None, 0, 0.0
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=not show)
    t_wait = time.time()
    for batch in bar:
        batch = to_device(batch, device)
        loading += time.time() - t_wait
        # epoch - 1: the models see the official 0-based epoch (TaskWeave's feedback start,
        # VideoLights' growing hard-loss weight). --amp: the forward in bfloat16, the loss in float32.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = model(batch["video_feats"], batch["video_mask"],
                            batch["query_feats"], batch["query_mask"], epoch=epoch - 1)
        outputs = to_float32(outputs) if amp else outputs
        loss, terms = criterion(outputs, batch, epoch=epoch - 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        names = names or sorted(terms)
        # float64, as Python floats summed them: the logged means are the same to the last digit
        values = torch.stack([terms[k].detach() for k in names]).double()     # (n_terms,)
        sums = values if sums is None else sums + values
        steps += 1
        if show:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        t_wait = time.time()
    means = dict(zip(names, (sums / steps).tolist())) if steps else {}
    if not all(math.isfinite(v) for v in means.values()):
        raise TrainingError(f"non-finite loss in epoch {epoch} (epoch means: {means})")
    return means, loading


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def predict_split(model, module, dataset, cfg, device, data_name, show_progress=True, epoch=None):
    """The model's submission lines for a split, in the official format. Windows: normalised ->
    seconds, clamped to [0, 150] and rounded to the clip grid (the official post-processing),
    sorted by score. Saliency: one score per loaded clip, through float16 as the official QVH code
    (its ties matter to the official HD mAP); TVSum is HD only and ranks the raw scores."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.eval_batch_size, shuffle=False,
                                         collate_fn=data.collate,
                                         pin_memory=data.pin_memory(dataset, device))
    rows = []
    for batch in tqdm(loader, desc="  predict", leave=False, disable=not show_progress):
        batch = to_device(batch, device)
        outputs = model(batch["video_feats"], batch["video_mask"],
                        batch["query_feats"], batch["query_mask"], epoch=epoch)
        # (B, N, 3) for the DETR models, a list of B (n_i, 3) for FlashVTG
        windows, saliency = module.predict(outputs, batch["video_mask"])
        if torch.is_tensor(windows):                    # one copy to the host, not one per sample
            windows = list(windows.float().cpu())
        else:
            windows = list(torch.cat(windows).float().cpu().split([len(w) for w in windows]))
        saliency = saliency.float().cpu()
        for i, meta in enumerate(batch["meta"]):
            n_clips = meta["n_clips"]
            row = {"qid": meta["qid"], "query": meta["query"], "vid": meta["vid"]}
            if data_name == "tvsum":
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


def evaluate(model, module, dataset, cfg, device, data_name, epoch=None, show=True, scored=True):
    """Predict and score a split: {"": (rows, metrics)}, and for a model whose recipe uses NMS also
    {"_nms": ...} (the plain predictions select the checkpoint, as in the official loops).
    scored=False (an unlabelled split): only the rows, after the recipe's NMS."""
    rows = predict_split(model, module, dataset, cfg, device, data_name, show, epoch)
    nms_rows = [{**r, "pred_relevant_windows": module.nms(r["pred_relevant_windows"], cfg)}
                for r in rows] if uses_nms(module, cfg, data_name) else None
    if not scored:
        return nms_rows or rows
    # Our synthetic set is scored as QVHighlights (it has the same format).
    out = {"": (rows, metrics.evaluate(data_name, rows, dataset.annotations))}
    if nms_rows is not None:
        out["_nms"] = (nms_rows, metrics.evaluate(data_name, nms_rows, dataset.annotations))
    return out


def selection_score(brief, best_metric):
    """The number that picks the best checkpoint: one brief key or a sum of keys joined by "+"
    (FlashVTG selects Charades-STA epochs on R1@0.5 + R1@0.7)."""
    missing = [k for k in best_metric.split("+") if k not in brief]
    if missing:
        raise SystemExit(f"best_metric {best_metric!r}: {missing} not among the metrics ({', '.join(brief)})")
    return sum(brief[k] for k in best_metric.split("+"))


def write_predictions(results_dir, stem, evaluated, info, cfg):
    """<stem>_preds[_nms].jsonl and the brief metrics beside them (metrics.json for val)."""
    for suffix, (rows, result) in evaluated.items():
        name = "metrics" if stem == "val" else f"{stem}_metrics"
        extra = {"nms_thd": cfg.nms_thd} if suffix else {}
        metrics.write_jsonl_atomic(os.path.join(results_dir, f"{stem}_preds{suffix}.jsonl"), rows)
        metrics.write_json_atomic(os.path.join(results_dir, f"{name}{suffix}.json"),
                                  {**info, **extra, "brief": result["brief"]})


def evaluate_only(args, module, model, cfg, spec, feat_root, dataset, results_dir, device, domain):
    """--eval-only: predictions and metrics of one checkpoint (val_preds.jsonl, metrics.json; another
    --eval-split gets files named after it); QVH also gets the test submission and, with the
    labelled test file, its metrics."""
    split, show = args.eval_split, not args.no_progress
    info = {"model": args.model, "data": args.data, "domain": domain, "split": split,
            "checkpoint": os.path.abspath(args.resume)}
    evaluated = evaluate(model, module, dataset, cfg, device, args.data, show=show)
    write_predictions(results_dir, "val" if split == spec.eval_split else split, evaluated, info, cfg)
    for suffix, (_, result) in evaluated.items():
        print(f"{split} split{' with NMS ' + str(cfg.nms_thd) if suffix else ''}:\n"
              + json.dumps(result["brief"], indent=4))
    if args.data == "qvh" and split == spec.eval_split:   # the test submission (with the recipe's NMS)
        test = data.load_dataset(spec, feat_root, "test", anno_dir=args.anno_dir, progress=show)
        test_rows = evaluate(model, module, test, cfg, device, args.data, show=show, scored=False)
        metrics.write_jsonl_atomic(os.path.join(results_dir, "test_preds.jsonl"), test_rows)
        print(f"test predictions: {os.path.join(results_dir, 'test_preds.jsonl')}")
        test_gt = args.test_gt or os.path.join(args.anno_dir or feat_root, QVH_TEST_GT)
        if os.path.isfile(test_gt):
            brief = metrics.evaluate_qvh(test_rows, metrics.read_jsonl(test_gt))["brief"]
            metrics.write_json_atomic(os.path.join(results_dir, "test_metrics.json"), {
                **info, "split": "test", "gt": os.path.abspath(test_gt), "brief": brief})
            print("test metrics:\n" + json.dumps(brief, indent=4))
        elif args.test_gt:
            raise SystemExit(f"--test-gt: no file at {args.test_gt}")
    return evaluated[""][1]["brief"]


# ----------------------------------------------------------------------------- helpers (read as needed)

def check_arguments(args):
    """Flags that contradict each other, refused before anything is read or written. Returns the
    --resume checkpoint: it must be this model on this dataset, and a resumed run goes on with its
    own domain, pretraining corpus, precision and feature streams (another would not fit it)."""
    if (args.test_gt or args.eval_split) and not args.eval_only:
        raise SystemExit("--test-gt and --eval-split go with --eval-only --resume CKPT")
    if args.eval_only and not args.resume:
        raise SystemExit("--eval-only needs --resume CKPT (the weights to evaluate)")
    if args.init and args.resume:
        raise SystemExit("--init starts a new run from a checkpoint's weights; it does not go "
                         "with --resume or --eval-only")
    if args.pretrain and args.data == "tvsum":
        raise SystemExit("--pretrain: the pretraining corpora are QVHighlights / Charades-STA style")
    if args.pretrain == "synthetic" and args.data != "synthetic":
        raise SystemExit("--pretrain synthetic goes with --data synthetic")
    if not args.resume:
        return None
    checkpoint = read_checkpoint(args.resume, "--resume")
    if (checkpoint.get("model_name"), checkpoint.get("data")) != (args.model, args.data):
        raise SystemExit(f"--resume: {args.resume} is a {checkpoint.get('model_name')} run on "
                         f"{checkpoint.get('data')}, not {args.model} on {args.data}")
    if not args.eval_only and "optimizer" not in checkpoint:
        raise SystemExit(f"--resume: {args.resume} holds weights only (a best.ckpt): continue "
                         f"a run from its last.ckpt, or fine-tune these weights with --init")
    streams = checkpoint.get("streams") or {}
    for flag, asked, saved in (("--domain", args.domain, checkpoint.get("domain")),
                               ("--video-feats", args.video_feats, streams.get("video")),
                               ("--text-feats", args.text_feats, streams.get("text")),
                               ("--pretrain", args.pretrain, checkpoint.get("pretrain")),
                               ("--amp", args.amp or None, checkpoint.get("amp") or None)):
        if asked is not None and asked != saved and not (flag == "--amp" and args.eval_only):
            raise SystemExit(f"{flag}: {args.resume} was trained with {flag} {saved}, not "
                             f"{asked}; a checkpoint keeps its settings")
    args.domain, args.pretrain = checkpoint.get("domain"), checkpoint.get("pretrain")
    args.amp = bool(checkpoint.get("amp")) if not args.eval_only else args.amp
    args.video_feats, args.text_feats = streams.get("video"), streams.get("text")
    return checkpoint


def check_eval_split(args, spec):
    """--eval-split must name a labelled split; --test-gt goes with the eval split only."""
    labelled = [s for s in spec.splits if s not in spec.unlabelled_splits]
    if args.eval_split and args.eval_split not in labelled:
        raise SystemExit(f"--eval-split: {args.data} has the labelled splits {', '.join(labelled)}, "
                         f"not {args.eval_split!r}")
    if args.test_gt and args.eval_split not in (None, spec.eval_split):
        raise SystemExit(f"--test-gt scores the QVH test submission, which --eval-only writes "
                         f"with the eval split only, not with --eval-split {args.eval_split}")
    args.eval_split = args.eval_split or spec.eval_split


def positive(kind):
    """An argparse type: a number > 0 (0 epochs or a batch of 0 would only fail later)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def parse_field(name, text, current):
    """--set NAME=TEXT, parsed as the type of the field's current value."""
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError("expected true, false, 1 or 0")
            return text.lower() in ("true", "1")
        if isinstance(current, (int, float, str)):
            return type(current)(text)
        value = json.loads(text)
        return tuple(value) if isinstance(current, tuple) else value
    except (ValueError, TypeError) as err:
        raise SystemExit(f"--set {name}={text}: not a valid {type(current).__name__} for {name} "
                         f"(now {current!r}): {err}") from None


def check_config(cfg):
    """Values no run can use, refused before anything is written: sizes and counts below 1,
    dropout outside [0, 1), negative loss weights, a hidden size the heads do not divide."""
    for field in dataclasses.fields(cfg):
        name, value = field.name, getattr(cfg, field.name)
        low = ((0 if name == "feedback_start" else 1) if type(value) is int and name != "seed"
               else 0 if "coef" in name or name.startswith("lw_") or name in ("weight_decay",
                                                                             "grad_clip") else None)
        if ((low is not None and value < low) or ("dropout" in name and not 0 <= value < 1)
                or ((name == "lr" or "temperature" in name or name.endswith("_tau")) and value <= 0)
                or (name == "ema_decay" and not 0 <= value < 1)
                or (name == "strides" and not all(isinstance(v, int) and v > 0 for v in value))):
            raise SystemExit(f"Config {name} = {value!r} is out of range")
    if cfg.hidden_dim % cfg.nheads:
        raise SystemExit(f"Config hidden_dim {cfg.hidden_dim} must be divisible by nheads {cfg.nheads}")


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
        # Saved on a machine with another number of GPUs: restore the ones this machine has.
        for index, cuda_state in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def save_atomic(obj, path):
    """torch.save into a temporary file beside `path`, then rename: a kill never leaves half a file."""
    torch.save(obj, f"{path}.tmp{os.getpid()}")
    os.replace(f"{path}.tmp{os.getpid()}", path)


def read_checkpoint(path, flag):
    """A checkpoint read on the CPU; a missing or unreadable file is an error naming `flag`."""
    if not os.path.isfile(path):
        raise SystemExit(f"{flag}: no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise SystemExit(f"{flag}: cannot read {path} as a checkpoint ({type(err).__name__}: {err})") from None


def load_initial_weights(model, path, model_name):
    """--init: a checkpoint's weights (e.g. a pretraining run's best.ckpt) into a fresh model;
    optimiser, epoch and RNG start anew, as the official fine-tuning does."""
    ckpt = read_checkpoint(path, "--init")
    if ckpt.get("model_name") != model_name:
        raise SystemExit(f"--init: {path} holds a {ckpt.get('model_name')} model, not {model_name}")
    try:
        model.load_state_dict(ckpt.get("ema") or ckpt["model"])
    except RuntimeError as err:
        raise SystemExit(f"--init: {path} does not fit this model (other feature streams or model "
                         f"size?):\n{err}") from None
    print(f"initialised from {path} (epoch {ckpt.get('epoch')})")


def setup_device(args):
    """The device, and the numerics made explicit instead of torch's defaults (which let cuDNN
    convolutions use TF32 on Ampere+ GPUs, and pick nondeterministic CUDA kernels)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.amp:
        check_amp(device)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    if args.deterministic:        # cuBLAS needs this before its first call to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(args.deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = False
    return device


def check_amp(device):
    """--amp is bfloat16: float32's exponent range, so no loss scaling, and the models' large
    negative attention-mask fills stay finite (float16 would overflow them). Pre-Ampere GPUs
    (V100, T4) only emulate it, slowly, which torch.cuda.is_bf16_supported() counts as support."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 0):
        raise SystemExit("--amp: this GPU has no bfloat16 support (it needs Ampere or newer); "
                         "train without --amp")
    if device.type not in ("cuda", "cpu"):
        raise SystemExit(f"--amp: supported on cuda and cpu, not {device.type}")


def to_device(batch, device):
    """The batch on `device`. non_blocking: from page-locked (pinned) memory the copies run beside
    the GPU's work; the B span-target tensors travel as one."""
    out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    if "span_targets" in batch:
        flat = torch.cat(batch["span_targets"])                         # (sum of n_i, 2)
        if device.type == "cuda" and torch.cuda.is_available():
            flat = flat.pin_memory()
        sizes = [len(t) for t in batch["span_targets"]]
        out["span_targets"] = list(flat.to(device, non_blocking=True).split(sizes))
    return out


def to_float32(outputs):
    """--amp: the outputs with every bfloat16 tensor cast back to float32, so the losses, the
    matcher (scipy) and the saved predictions see float32 as always."""
    if isinstance(outputs, dict):
        return {k: to_float32(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(to_float32(v) for v in outputs)
    is_half = torch.is_tensor(outputs) and outputs.dtype in (torch.bfloat16, torch.float16)
    return outputs.float() if is_half else outputs


@torch.no_grad()
def update_ema(ema_model, model, decay):
    """ema = decay * ema + (1 - decay) * model over parameters and float buffers (integer buffers
    are copied). TaskWeave's official loop calls it once per epoch."""
    ema_state = ema_model.state_dict()
    for name, value in model.state_dict().items():
        if value.dtype.is_floating_point:
            ema_state[name].mul_(decay).add_(value.detach(), alpha=1.0 - decay)
        else:
            ema_state[name].copy_(value)


def uses_nms(module, cfg, data_name):
    return hasattr(module, "nms") and getattr(cfg, "nms_thd", -1.0) > 0 and data_name != "tvsum"


def count_parameters(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def log_line(results_dir, text):
    with open(os.path.join(results_dir, "log.txt"), "a") as f:
        f.write(text + "\n")


def lock_holder(results_dir):
    """The pid of another live process training into results_dir, else None."""
    return data.lock_holder(os.path.join(results_dir, LOCK_FILE))


def write_timing(results_dir, timing, device, model_name, n_params, amp=False):
    """timing.json (this process's epochs), which tools/compare.py tabulates. Peak memory: torch's
    peak GPU allocation, or on the CPU the process's peak resident set (features included)."""
    epochs = timing["train"]
    peak = (torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)    # Linux: KiB
    metrics.write_json_atomic(os.path.join(results_dir, "timing.json"), {
        "model": model_name, "trainable_parameters": n_params, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "threads": torch.get_num_threads(), "amp": amp, "epochs_timed": len(epochs),
        "train_seconds_per_epoch": sum(epochs) / len(epochs) if epochs else None,
        "load_seconds_per_epoch": sum(timing["load"]) / len(epochs) if epochs else None,
        "inference_ms_per_query": (1000 * timing["predict"] / timing["queries"]
                                   if timing["predict"] is not None else None),
        "peak_memory_mib": peak})


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (data.FeatureError, TrainingError) as err:
        sys.exit(f"error: {err}")
    except KeyboardInterrupt:         # outside a run (while loading or generating data)
        sys.exit("interrupted")
