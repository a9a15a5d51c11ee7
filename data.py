"""Datasets for joint moment retrieval + highlight detection, in the official feature layouts.

Every model here consumes the same thing: per query, a video as a sequence of clip features and the
query as a sequence of token features, plus the labels of both tasks. This file turns the public
feature releases into exactly the tensors the official loaders build (Moment-DETR's
`StartEndDataset`, copied unchanged by QD-DETR, TR-DETR and TaskWeave), and generates a small
synthetic benchmark in the same layout so the whole pipeline runs without any download.

    python data.py check --data qvh [--feat-root DIR] [--anno-dir DIR] [--layout L]
                         [--video-feats slowfast,clip,blip] [--text-feats clip,blip]
                         # reads every annotation line and feature file, lists what is wrong
    python data.py synthetic --out features/synthetic [--blip]           # write the synthetic set
    python data.py synthetic-pretrain --out features/synthetic [--blip]  # + a pretraining corpus

Two releases, two layouts on disk (the feature root is ONE dataset's folder, default
`features/<data>`; the annotations default to the same folder, or --anno-dir)
-----------------------------------------------------------------------------------------------
layout "moment_detr": the folders the official repositories read. QVHighlights: Moment-DETR's
release (SlowFast + CLIP, one row per 2-s clip); Charades-STA: the QD-DETR / CG-DETR authors' SF+C
release (one row per 1-s clip); TVSum: UMT's release (one row per ~2-s shot); the BLIP-2 folders
come from VideoLights' archives ([VL]; they also carry the SF+C folders again).
    features/qvh/
      highlight_{train,val,test}_release.jsonl    7 fields a line (test: qid, query, duration, vid)
      slowfast_features/{vid}.npz                 key "features"           (clips, 2304)
      clip_features/{vid}.npz                     key "features"           (clips, 512)
      clip_text_features/qid{qid}.npz             key "last_hidden_state"  (tokens, 512)
      blip_video_features/{vid}.npz               key "features"           (clips, 768)  [VL]
      blip_aug_text_features_openai/qid{qid}.npz  key "last_hidden_state"  (tokens, 768) [VL]
    features/charades/
      charades_sta_{train,test}_tvr_format.jsonl  qid, query, duration, vid, relevant_windows (1)
      slowfast_features/ clip_features/ clip_text_features/   as QVH
      blip_video_features/{vid}.npz  blip_text_features/qid{qid}.npz   (768 each)        [VL]
    features/tvsum/
      tvsum_{train,val}.jsonl   (or UMT's tvsum_anno.json + tvsum_splits.json, converted on load)
      video_features/{vid}_rgb.npy, {vid}_opt.npy  (shots, 1024) each: I3D RGB and optical flow
      query_features/{qid}.npz  key "token" (tokens, 512): CLIP features of the title; qid = vid
      sf_features/ clip_features/ video_features_blip/ {vid}.npz "features";
      query_features_blip/{qid}.npz "token" (768)                                        [VL]
layout "lighthouse": line/lighthouse's per-dataset archives. Its README tree calls the folders
features/QVHighlight/, features/Charades/, features/tvsum/; its code (training/config.py) reads
features/qvhighlight/, features/charades/, features/tvsum/: point the feature root at that folder.
Same file names and npz keys as above, other folder names, no BLIP-2:
      slowfast/{vid}.npz "features" (2304)    clip/{vid}.npz "features" (512)
      clip_text/qid{qid}.npz "last_hidden_state" (512)    TVSum: clip_text/{qid}.npz "token"
      i3d/{vid}_rgb.npy + {vid}_opt.npy (TVSum)           (resnet/, pann/, glove: not read here)
  Its annotations live in its repository (data/qvhighlight/highlight_*_release.jsonl,
  data/charades/charades_{train,test}_release.jsonl, data/tvsum/tvsum_{train,val}_release.jsonl;
  the same lines as the official files) and are accepted under those names too.
The layout is detected from the folder names under the feature root (dataset_spec(name,
feat_root)), or given (layout=...). Both layouts give IDENTICAL tensors for the same files: the
streams are always concatenated in one order (below), although lighthouse lists CLIP first.
Whether lighthouse's archives hold the same arrays as the official releases could not be checked
here (no archive was downloadable): its code reads them with the official keys, per-row rates
(clip_length 2 s QVH/TVSum, 1 s Charades) and preprocessing, and its README names the same
extractor (HERO_Video_Feature_Extractor). Its loader's settings differ from ours in one place:
Charades max_v_l 75 (ours: no limit, as CG-DETR) - a setting, not a layout, so not copied.
Synthetic (`make_synthetic`): the moment_detr QVHighlights layout and file names, smaller dims
    (slowfast 128, clip 64, text 64; with blip=True also "BLIP" video 48 and text 48), train and
    val only; `make_synthetic_pretrain` adds pre_train_synthetic.jsonl (section at its code).
    `--qvh-sized` (QVH_SIZED): the same generator at QVHighlights' sizes and real dims, read as
    --data qvh: the speed benchmark of tools/compare.py --benchmark.

Feature streams (dataset_spec's video_feats / text_feats, short names)
----------------------------------------------------------------------
video: "i3d" (TVSum), "slowfast", "clip", "blip"; text: "clip", "blip". Defaults: the official
SF+C video + CLIP text (TVSum: I3D + CLIP). VideoLights-B = video slowfast,clip,blip + text
clip,blip. Whatever order they are asked in, they are concatenated as I3D, SlowFast, CLIP, BLIP
(video) and CLIP, BLIP (text): the official scripts' order.

Preprocessing (as QD-DETR's, TR-DETR's and VideoLights' `start_end_dataset.py` do it)
--------------------------------------------------------------------------------------
video: each stream -> first max_v_l rows -> float32 -> rows L2-normalised as x / (||x|| + 1e-5)
       -> every stream cut to the shortest -> concatenated (2304 + 512 = 2816; + BLIP 768 = 3584)
       -> + tef (2) = 2818 (3586), tef of clip i of L = [i/L, (i+1)/L] (where the clip sits in the
       video; "video_tef" mode).
       TVSum I3D: rgb and flow are concatenated FIRST and normalised together (2048 + 2 = 2050).
text:  each stream -> first max_q_l rows, L2-normalised (QVH, Charades) -> every stream cut to the
       shortest token count -> concatenated per token index (512 + 768 = 1280);
       TVSum: the raw `token` rows (no cut/norm), as TR-DETR.
Lv (the official `ctx_l`) is the video length after the cut; every label below is built on it.

Labels per item (`collate` pads them into the batch dict every model's loss reads)
----------------------------------------------------------------------------------
span_targets   (n, 2) normalised (center, width): windows in seconds / (Lv * clip_len)
saliency_pos/neg  clip indices of P (positive, negative) pairs for the margin loss
saliency_all   (Lv,) graded saliency per clip (QVH: sum of 3 annotators, 0..12) for the rank loss
relevant_mask  (Lv,) 1 on relevant clips: TR-DETR's `pos_mask`, target of its local alignment loss
How each dataset gets them is written at `qvh_labels`, `window_labels` and `tvsum_labels`
(the spec's `make_labels`); the pretraining corpus (`load_pretrain_dataset`) uses
`first_window_labels`.

Memory (every feature file is read once, at construction; an epoch never touches the disk)
------------------------------------------------------------------------------------------
The preprocessed video (tef included) is kept in float32, the dtype the official loaders feed the
model, so our inputs are bit-identical to theirs. QVHighlights then takes 7,100 x <=75 x 2,818 x 4 B
= 5.6 GiB for train, 1.2 GiB for val and 1.2 GiB for test (8.0 GiB for all 10,148 videos); a
training run (train + val) holds about 6.8 GiB of video plus ~0.2 GiB of text (~15 tokens x 512 a
query). Keeping float16 instead would halve that (3.4 GiB) at a relative rounding error of ~5e-4
per value; we chose exactness because these runs happen on GPU servers where 7 GiB of RAM is not
a constraint.
Charades-STA (SF+C, one row per second): train 1.7 GiB (5,336 videos, 164,746 s), test 0.4 GiB;
TVSum 49 MiB (6,266 shots x 2,050); the default synthetic set 72 MiB (1,300 x <=75 x 194).
VideoLights-B's 3,586-d video (SF + CLIP + BLIP-2) needs 27% more: QVH train 7.1 GiB.

Where the details come from
---------------------------
QVHighlights and TVSum: the official `StartEndDataset` (QD-DETR / TR-DETR `start_end_dataset.py`,
identical in Moment-DETR and TaskWeave for QVH). Charades-STA: lighthouse `training/dataset.py`
and CG-DETR's SF+C scripts, as `window_labels` explains. Layouts: lighthouse's README,
`training/config.py` and `training/dataset.py` (d095eaa). Extra streams and pretraining:
VideoLights' `start_end_dataset.py`, `scripts/{qvhl,charades_sta,tvsum,pretrain}/*.sh` and its
generator `extract_feature/pretrain_data_generator_using_blip2.py`. UMT's annotation files:
`_tvsum_annotations_from_umt`. Each place where we differ from the official code on purpose says
so next to the code, and the parity checks run against the official loaders are described in the
label functions' docstrings.
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
import zipfile
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from metrics import read_jsonl, write_json_atomic, write_jsonl_atomic

README_HINT = "see README section 'Getting the features'"

# The ten TVSum categories in the order the papers' tables print them.
TVSUM_DOMAINS = ["VT", "VU", "GA", "MS", "PK", "PR", "FM", "BK", "BT", "DS"]

# Feature dims of the synthetic benchmark: small enough that TR-DETR (hidden 256) trains in minutes
# on a 2-core CPU. The generator and dataset_spec("synthetic") both read them from here.
SYNTHETIC_DIMS = {"slowfast": 128, "clip": 64, "text": 64}
# The optional stand-ins for VideoLights-B's BLIP-2 streams (written with `blip=True` only, so the
# default set, and the numbers measured on it, stay exactly as they were).
SYNTHETIC_BLIP_DIMS = {"video": 48, "text": 48}
# The QVHighlights-sized set of the speed benchmark (tools/compare.py --benchmark): the real release's
# query counts (train / val) and feature dims. Same generator, same QVH file names, so it is read
# with the real QVHighlights spec (--data qvh) and the models' QVH configs, exactly as the release.
QVH_SIZED = {"n_train": 7218, "n_val": 1550, "dims": {"slowfast": 2304, "clip": 512, "text": 512}}
SYNTHETIC_MARKER = "SYNTHETIC_COMPLETE.json"   # written last: its absence means "(re)generate"
SYNTHETIC_PRETRAIN_FILE = "pre_train_synthetic.jsonl"   # "pre_train" in the name, as the official

LAYOUTS = ("moment_detr", "lighthouse")
# Stream short names in the order their features are concatenated, whatever order they are asked
# for in: the official scripts build their directory lists in this order (VideoLights: SlowFast,
# CLIP, BLIP; its TVSum script puts I3D first), and a fixed order is what makes the two layouts
# give identical tensors (lighthouse lists CLIP before SlowFast: same numbers, columns permuted).
VIDEO_ORDER = ("i3d", "slowfast", "clip", "blip")
TEXT_ORDER = ("clip", "blip")
DEFAULT_FEATS = {"qvh": (("slowfast", "clip"), ("clip",)),
                 "charades": (("slowfast", "clip"), ("clip",)),
                 "synthetic": (("slowfast", "clip"), ("clip",)),
                 "tvsum": (("i3d",), ("clip",))}
# How lighthouse's README and code (and ours) name a dataset's folder: a hint when the feature root
# points one level above it.
DATASET_FOLDERS = {"qvh": ("QVHighlight", "qvhighlight", "qvh"),
                   "charades": ("Charades", "charades"),
                   "tvsum": ("tvsum", "TVSum"), "synthetic": ("synthetic",)}


class FeatureError(Exception):
    """Something on disk that the user must fix: a missing feature directory or file, a missing or
    malformed annotation file, a feature of the wrong shape. The message says what and where."""


# ----------------------------------------------------------------------------- dataset specs

@dataclass(frozen=True)
class FeatureStream:
    """One feature directory. `files` are the file-name patterns for one video (or query); more than
    one (TVSum's rgb + flow) are concatenated along features BEFORE normalisation, as UMT does."""
    dirname: str
    dim: int                          # feature dim of one row (all files of the stream together)
    key: str | None = "features"      # npz key; None for .npy files
    files: tuple = ("{vid}.npz",)
    what: str = ""                    # for messages: what these files are
    name: str = ""                    # short name: "slowfast", "clip", "blip", "i3d"


@dataclass
class DatasetSpec:
    name: str
    anno_files: dict                  # split -> annotation file name (inside the anno dir)
    splits: tuple                     # the real splits, in order (what `check` looks at)
    eval_split: str                   # the split the papers report and the loop evaluates
    video_streams: list               # FeatureStream per video stream, concatenated in this order
    text_streams: list                # FeatureStream per text stream, concatenated per token
    clip_len: float                   # seconds per feature row
    max_v_l: int | None               # keep at most this many rows per video stream (None: all)
    max_q_l: int | None               # keep at most this many text tokens (None: all)
    make_labels: object               # (annotation, ctx_l, spec) -> labels: qvh_labels,
                                      # window_labels, tvsum_labels or first_window_labels
    normalize_v: bool = True
    normalize_t: bool = True
    use_tef: bool = True
    max_windows: int = 5              # at most this many GT windows become span targets
    n_pairs: int = 2                  # P, the (pos, neg) saliency pairs per item
    unlabelled_splits: tuple = ()     # splits whose annotation lines carry no labels
    required_fields: tuple = ("qid", "query", "duration", "vid")
    label_fields: tuple = ()          # also required on labelled splits
    anno_aliases: dict = field(default_factory=dict)   # split -> other accepted file names
    layout: str = "moment_detr"       # which release's directory names (see LAYOUTS)
    layout_note: str = ""             # how the layout was chosen (for messages)

    @property
    def video_dim(self):
        return sum(s.dim for s in self.video_streams) + (2 if self.use_tef else 0)

    @property
    def text_dim(self):
        return sum(s.dim for s in self.text_streams)


def _stream_catalog(name, layout):
    """Every stream a dataset offers in one layout: ({short name: video FeatureStream},
    {short name: text FeatureStream}). The directory names are the ones the official scripts
    (moment_detr) or lighthouse's config.py (lighthouse) read; the module docstring has the
    trees."""
    if name == "synthetic":
        if layout != "moment_detr":
            raise ValueError("the synthetic set is only written in the moment_detr layout")
        sf, cl, tc = SYNTHETIC_DIMS["slowfast"], SYNTHETIC_DIMS["clip"], SYNTHETIC_DIMS["text"]
        bv, tb = SYNTHETIC_BLIP_DIMS["video"], SYNTHETIC_BLIP_DIMS["text"]
    else:
        sf, cl, bv, tc, tb = 2304, 512, 768, 512, 768
    lighthouse = layout == "lighthouse"
    if name == "tvsum":
        # UMT's release (video_features/, query_features/) plus VideoLights' TVSum archive
        # (sf_features/, clip_features/, video_features_blip/, query_features_blip/); lighthouse
        # has I3D files with UMT's names under i3d/ (presumably UMT's arrays: not verifiable here)
        # and the title features under clip_text/. TVSum text files are named by the bare qid
        # (= vid) and hold the key "token" in every release.
        def folder(official, light):
            return light if lighthouse else official
        video = {
            "i3d": FeatureStream(folder("video_features", "i3d"), 2048, key=None,
                                 files=("{vid}_rgb.npy", "{vid}_opt.npy"),
                                 what="I3D RGB + optical-flow features", name="i3d"),
            "slowfast": FeatureStream(folder("sf_features", "slowfast"), sf,
                                      what="SlowFast video features", name="slowfast"),
            "clip": FeatureStream(folder("clip_features", "clip"), cl,
                                  what="CLIP video features", name="clip")}
        text = {"clip": FeatureStream(folder("query_features", "clip_text"), tc, key="token",
                                      files=("{qid}.npz",), what="CLIP title features",
                                      name="clip")}
        if not lighthouse:
            video["blip"] = FeatureStream("video_features_blip", bv, what="BLIP-2 video features",
                                          name="blip")
            text["blip"] = FeatureStream("query_features_blip", tb, key="token",
                                         files=("{qid}.npz",), what="BLIP-2 title features",
                                         name="blip")
        return video, text
    # QVHighlights, Charades-STA and the synthetic set: one row per clip, text per query id.
    video = {"slowfast": FeatureStream("slowfast" if lighthouse else "slowfast_features", sf,
                                       what="SlowFast video features", name="slowfast"),
             "clip": FeatureStream("clip" if lighthouse else "clip_features", cl,
                                   what="CLIP video features", name="clip")}
    text = {"clip": FeatureStream("clip_text" if lighthouse else "clip_text_features", tc,
                                  key="last_hidden_state", files=("qid{qid}.npz",),
                                  what="CLIP text features", name="clip")}
    if not lighthouse:
        # VideoLights' BLIP-2 additions (its train.sh dirs; QVH uses the "aug ... openai" folder,
        # whose qid{qid}.npz files are the original queries; the paraphrases qid{qid}_k.npz are
        # never read by its loader).
        video["blip"] = FeatureStream("blip_video_features", bv, what="BLIP-2 video features",
                                      name="blip")
        text_dir = "blip_text_features" if name == "charades" else "blip_aug_text_features_openai"
        text["blip"] = FeatureStream(text_dir, tb, key="last_hidden_state", files=("qid{qid}.npz",),
                                     what="BLIP-2 text features", name="blip")
    return video, text


def _layout_markers(name, layout):
    """The directory names that identify a layout on disk."""
    video, text = _stream_catalog(name, layout)
    return [s.dirname for s in list(video.values()) + list(text.values())]


def detect_layout(name, feat_root):
    """Which release is under feat_root: (layout, note). A layout is recognised by its directory
    names (moment_detr: slowfast_features/, clip_features/, ...; lighthouse: slowfast/, clip/,
    clip_text/, i3d/); when neither is there, the default moment_detr is assumed (the missing-file
    error then names what it looked for). Both at once is ambiguous: FeatureError."""
    if name == "synthetic":
        return "moment_detr", "the synthetic set is always in the moment_detr layout"
    root = os.fspath(feat_root)
    found = {layout: [d for d in _layout_markers(name, layout)
                      if os.path.isdir(os.path.join(root, d))] for layout in LAYOUTS}
    have = [layout for layout in LAYOUTS if found[layout]]
    if len(have) == 2:
        listing = "; ".join(f"{layout}: {', '.join(d + '/' for d in found[layout])}"
                            for layout in LAYOUTS)
        raise FeatureError(f"{root} holds feature directories of both layouts ({listing}): say "
                           f"which one to read with layout='moment_detr' or 'lighthouse' "
                           f"(--layout)")
    if have:
        layout = have[0]
        return layout, f"detected: found {', '.join(d + '/' for d in found[layout])} in {root}"
    if os.path.isdir(root):
        why = "has no feature directory of either layout"
    else:
        why = "does not exist"
    note = f"default: {root} {why}"
    hint = _dataset_folder_hint(name, root)
    return "moment_detr", note + (f"; {hint}" if hint else "")


def _dataset_folder_hint(name, root):
    """'ROOT/QVHighlight looks like ...' when the user pointed at the folder above a dataset's."""
    for folder in DATASET_FOLDERS.get(name, ()):
        sub = os.path.join(root, folder)
        if os.path.isdir(sub):
            for layout in LAYOUTS:
                if any(os.path.isdir(os.path.join(sub, d)) for d in _layout_markers(name, layout)):
                    return (f"{sub} looks like the dataset's folder ({layout} layout): pass it "
                            f"as the feature root")
    return ""


def _select_streams(catalog, wanted, order, kind, name, layout):
    """Short names (a list, or "slowfast,clip") -> the catalog's FeatureStreams, in the canonical
    order (VIDEO_ORDER / TEXT_ORDER)."""
    if isinstance(wanted, str):
        wanted = [w.strip() for w in wanted.split(",") if w.strip()]
    if not wanted:
        raise ValueError(f"no {kind} feature stream selected for {name}")
    unknown = [w for w in wanted if w not in catalog]
    if unknown:
        extra = ""
        if "blip" in unknown and layout == "lighthouse":
            extra = " (BLIP-2 features exist only in VideoLights' archives: moment_detr layout)"
        raise ValueError(f"{name} has no {kind} stream {unknown[0]!r} in the {layout} layout; "
                         f"available: {', '.join(catalog)}{extra}")
    return [catalog[n] for n in order if n in wanted]


def dataset_spec(name, feat_root=None, layout=None, video_feats=None, text_feats=None):
    """The official settings of one dataset (see the module docstring for the layouts).

    layout: "moment_detr" or "lighthouse"; None = detected from what is under feat_root (if given),
    else moment_detr. video_feats / text_feats: short stream names, a list or a comma-separated
    string (video "slowfast", "clip", "blip", TVSum also "i3d"; text "clip", "blip"); None = the
    streams every official script uses (SlowFast + CLIP video, CLIP text; TVSum: I3D, CLIP)."""
    if name not in DEFAULT_FEATS:
        raise ValueError(f"unknown dataset {name!r}: expected qvh, charades, tvsum or synthetic")
    if layout is not None:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
        note = "given"
    elif feat_root is not None:
        layout, note = detect_layout(name, feat_root)
    else:
        layout, note = "moment_detr", "default: no feature root given"
    catalog_v, catalog_t = _stream_catalog(name, layout)
    default_v, default_t = DEFAULT_FEATS[name]
    video = _select_streams(catalog_v, video_feats or default_v, VIDEO_ORDER, "video", name, layout)
    text = _select_streams(catalog_t, text_feats or default_t, TEXT_ORDER, "text", name, layout)
    common = dict(video_streams=video, text_streams=text, layout=layout, layout_note=note)

    qvh_label_fields = ("relevant_windows", "relevant_clip_ids", "saliency_scores")
    if name in ("qvh", "synthetic"):
        splits = ("train", "val", "test") if name == "qvh" else ("train", "val")
        return DatasetSpec(
            name=name, anno_files={s: f"highlight_{s}_release.jsonl" for s in splits},
            splits=splits, eval_split="val", clip_len=2,
            max_v_l=75, max_q_l=32, make_labels=qvh_labels, n_pairs=2,
            unlabelled_splits=("test",) if name == "qvh" else (), label_fields=qvh_label_fields,
            **common)
    if name == "charades":
        test_file = "charades_sta_test_tvr_format.jsonl"
        return DatasetSpec(
            name=name,
            # Charades-STA has no validation split: the official scripts evaluate (and select the
            # checkpoint) on the test file, calling it "val". We name it "test" and accept "val" as
            # an alias of the same file so that neither spelling silently reads something else.
            anno_files={"train": "charades_sta_train_tvr_format.jsonl", "test": test_file,
                        "val": test_file},
            # lighthouse's copies (data/charades/), same lines under other names
            anno_aliases={"train": ("charades_train_release.jsonl",),
                          "test": ("charades_test_release.jsonl",),
                          "val": ("charades_test_release.jsonl",)},
            splits=("train", "test"), eval_split="test",
            clip_len=1,
            # max_v_l: CG-DETR's SF+C Charades script (the QD-DETR authors' own) and FlashVTG pass
            # -1 = no limit; lighthouse and VideoLights keep 75, which cuts only the 53 train videos
            # longer than 75 s (every test video is <= 72 s, so evaluation is the same either way).
            # The limit is a loader setting, not part of a layout: both layouts get None here.
            # max_q_l: 32, the default of all of them.
            max_v_l=None, max_q_l=32, make_labels=window_labels, n_pairs=2,
            label_fields=("relevant_windows",), **common)
    # tvsum
    return DatasetSpec(
        name=name, anno_files={"train": "tvsum_train.jsonl", "val": "tvsum_val.jsonl"},
        anno_aliases={"train": ("tvsum_train_release.jsonl",), "val": ("tvsum_val_release.jsonl",)},
        splits=("train", "val"), eval_split="val",
        clip_len=2,   # the shots are ~2 s; nothing in the TVSum pipeline uses it
        # The text is kept raw (no cut, no normalisation), as TR-DETR, QD-DETR and lighthouse do.
        # VideoLights cuts it to 32 tokens and normalises it: dataclasses.replace(spec,
        # max_q_l=32, normalize_t=True) gives its inputs.
        max_v_l=1000, max_q_l=None, normalize_t=False, make_labels=tvsum_labels, n_pairs=1,
        label_fields=("label", "domain"), **common)

# ----------------------------------------------------------------------------- annotations
#
# Every split is validated when it is read (`annotation_problems`), before any feature is loaded:
# a bad line is one FeatureError naming the file, the line (UMT's TVSum json: the video) and what
# is wrong, instead of a traceback from the matcher mid-epoch or wrong metrics after it.

# Annotators and score range of one clip's saliency: QVHighlights 3 annotators scoring 0..4, TVSum
# 20 scoring 1..5 (every line of the released files, as the tests check on the real files).
QVH_ANNOTATORS, QVH_SCORE_RANGE = 3, (0, 4)
TVSUM_ANNOTATORS, TVSUM_SCORE_RANGE = 20, (1, 5)
# A window may end past `duration` by this much (seconds): VideoLights' pretraining generator makes
# its window ends by adding duration / n_frames again and again, which can overshoot by a rounding
# error; a real overshoot is far larger.
WINDOW_SLACK = 1e-6


def _read_annotation_file(path, aliases=()):
    """read_jsonl plus the 1-based line number of every row (for 'file:line: ...' messages).
    `aliases`: other names that were looked for too (only for the message)."""
    if not os.path.isfile(path):
        also = f" (or {', '.join(aliases)})" if aliases else ""
        raise FeatureError(f"annotation file not found: {path}{also} (put it in the feature root "
                           f"or pass --anno-dir DIR; lighthouse keeps its copies in its "
                           f"repository's data/<dataset>/, not in the feature archive); "
                           f"{README_HINT}")
    try:
        rows = read_jsonl(path)
    except ValueError as err:          # malformed JSON: read_jsonl already names file and line
        raise FeatureError(str(err)) from err
    with open(path) as f:
        line_numbers = [n for n, text in enumerate(f, 1) if text.strip()]
    if len(line_numbers) != len(rows):  # read_jsonl kept blank lines: rows are lines then
        line_numbers = list(range(1, len(rows) + 1))
    return rows, line_numbers


def _is_number(x):
    """A finite JSON number (true / false are ints to Python, not numbers here)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _short(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _scores_problem(name, per_clip, n_annotators, score_range):
    """What is wrong with a list of per-clip score lists (one score per annotator), or None.
    Checked on sets of types, lengths and distinct values first: QVH train has ~200k triples."""
    lo, hi = score_range
    try:
        fine = ({type(s) for s in per_clip} == {list}
                and {len(s) for s in per_clip} == {n_annotators}
                and all(_is_number(v) and lo <= v <= hi for v in {v for s in per_clip for v in s}))
    except TypeError:                    # an unhashable score
        fine = False
    if not fine:                         # find the first bad one for the message
        for i, scores in enumerate(per_clip):
            if not (isinstance(scores, list) and len(scores) == n_annotators
                    and all(_is_number(v) and lo <= v <= hi for v in scores)):
                return (f"{name}[{i}] = {_short(scores)} is not {n_annotators} annotators' scores "
                        f"in {lo}..{hi}")
    return None


def _row_problem(row, fields, spec):
    """The first problem of one annotation row whose `fields` are all present, or None."""
    qid, duration = row["qid"], row["duration"]
    if not isinstance(qid, (int, str)) or isinstance(qid, bool):
        return f"qid {_short(qid)} is not a number or a string"
    if not _is_number(duration) or duration <= 0:
        return f"duration {_short(duration)} is not a positive number"
    if "relevant_windows" in fields:
        windows = row["relevant_windows"]
        if not isinstance(windows, list):
            return f"relevant_windows {_short(windows)} is not a list of [start, end] windows"
        if not windows:
            return "empty 'relevant_windows'"
        for i, window in enumerate(windows):
            name = f"relevant_windows[{i}] = {_short(window)}"
            if not (isinstance(window, list) and len(window) == 2
                    and _is_number(window[0]) and _is_number(window[1])):
                return f"{name} is not a window [start, end] of two numbers (seconds)"
            start, end = window
            if start > end:
                return f"{name} starts after it ends"
            if start == end:
                return f"{name} has zero width"
            if start < 0:
                return f"{name} starts before 0"
            if end > duration + WINDOW_SLACK:
                return f"{name} ends past the video's duration {duration}"
    if "relevant_clip_ids" in fields:
        clip_ids = row["relevant_clip_ids"]
        if not isinstance(clip_ids, list):
            return f"relevant_clip_ids {_short(clip_ids)} is not a list of clip indices"
        if not clip_ids:
            return "empty 'relevant_clip_ids'"
        # The metrics' ground truth has int(duration / clip_len) clips; an id past the LOADED
        # video but inside the duration is valid (see qvh_labels).
        n_clips = int(duration / spec.clip_len)
        if not ({type(c) for c in clip_ids} == {int}
                and 0 <= min(clip_ids) and max(clip_ids) < n_clips):
            for i, clip_id in enumerate(clip_ids):
                if not (type(clip_id) is int and 0 <= clip_id < n_clips):
                    return (f"relevant_clip_ids[{i}] = {_short(clip_id)} is not a clip index in "
                            f"0..{n_clips - 1} (duration {duration} s, {spec.clip_len}-s clips)")
    if "saliency_scores" in fields:
        scores = row["saliency_scores"]
        if not isinstance(scores, list):
            return f"saliency_scores {_short(scores)} is not a list of score triples"
        if len(scores) != len(row["relevant_clip_ids"]):
            return (f"{len(scores)} saliency_scores triples for {len(row['relevant_clip_ids'])} "
                    f"relevant_clip_ids")
        problem = _scores_problem("saliency_scores", scores, QVH_ANNOTATORS, QVH_SCORE_RANGE)
        if problem:
            return problem
    if "label" in fields:
        label = row["label"]
        if not isinstance(label, list) or not label:
            return f"label {_short(label)} is not a list of per-shot score rows"
        problem = _scores_problem("label", label, TVSUM_ANNOTATORS, TVSUM_SCORE_RANGE)
        if problem:
            return problem
    if "domain" in fields and row["domain"] not in TVSUM_DOMAINS:
        return f"domain {_short(row['domain'])} is not a TVSum domain ({', '.join(TVSUM_DOMAINS)})"
    return None


def annotation_problems(spec, rows, where, labelled=True):
    """Every problem of one split's annotation rows, one message each: "<where>: <what>", where[i]
    saying where row i comes from ("file:line"). At most one problem per row (its first).

    Checked: the fields the loader and the metrics read are there (labelled splits: the label
    fields too); qid a number or string, used once in the split; duration a positive number;
    windows [start, end] of two numbers with 0 <= start < end <= duration; relevant clip ids
    integers in 0..int(duration / clip_len) - 1 (the metrics' ground-truth rows), as many as
    saliency triples, each 3 scores in 0..4; TVSum: one row of 20 scores in 1..5 per shot, a known
    domain. Left as the official loaders leave it: relevant clip ids past the LOADED video (its
    features a row shorter than the duration), which `qvh_labels` drops."""
    fields = spec.required_fields + (spec.label_fields if labelled else ())
    problems, first_seen = [], {}
    for row, at in zip(rows, where):
        missing = [name for name in fields if name not in row]
        if missing:
            problems.append(f"{at}: missing field {missing[0]!r}")
            continue
        problem = _row_problem(row, fields, spec)
        if problem:
            problems.append(f"{at}: {problem}")
            continue
        if row["qid"] in first_seen:     # its text features and predictions are found by qid
            problems.append(f"{at}: duplicate qid {row['qid']!r} (first at "
                            f"{first_seen[row['qid']]}): every query needs its own qid")
        else:
            first_seen[row["qid"]] = at
    return problems


def _raise_first(problems, path):
    """One FeatureError for a file's problems: the first, and how many more there are."""
    if problems:
        more = len(problems) - 1
        raise FeatureError(problems[0] + (f" ({more} more in {path}; python data.py check lists "
                                          f"every one)" if more else ""))


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        where = f" at line {err.lineno}, column {err.colno}" if hasattr(err, "lineno") else ""
        raise FeatureError(f"{path}: not valid JSON{where} (cut short or corrupted?); "
                           f"{README_HINT}") from None


def _tvsum_annotations_from_umt(anno_dir, split):
    """UMT's `tvsum_anno.json` + `tvsum_splits.json` -> the same dicts as the official
    `tvsum_{split}.jsonl` lines, in the same order (checked on the real files: identical).

    The jsonl files list the domains in the order they first appear in tvsum_anno.json, and within a
    domain the videos in the order of tvsum_splits.json. duration = the number of shots."""
    anno_path = os.path.join(anno_dir, "tvsum_anno.json")
    splits_path = os.path.join(anno_dir, "tvsum_splits.json")
    for p in (anno_path, splits_path):
        if not os.path.isfile(p):
            raise FeatureError(
                f"TVSum annotations not found in {anno_dir}: expected tvsum_{split}.jsonl "
                f"(lighthouse: tvsum_{split}_release.jsonl), or "
                f"tvsum_anno.json + tvsum_splits.json ({p} is missing); {README_HINT}")
    anno, splits = _read_json(anno_path), _read_json(splits_path)
    if not isinstance(anno, dict):
        raise FeatureError(f"{anno_path}: expected an object of videos, got {type(anno).__name__}")
    for vid, v in anno.items():
        for key in ("domain", "title", "anno"):
            if not isinstance(v, dict) or key not in v:
                raise FeatureError(f"{anno_path}: video {vid!r} has no {key!r}")
    if not isinstance(splits, dict) or not isinstance(splits.get("TVSUM_SPLITS"), dict):
        raise FeatureError(f"{splits_path}: no 'TVSUM_SPLITS' object of domains")
    splits = splits["TVSUM_SPLITS"]
    domains = list(dict.fromkeys(v["domain"] for v in anno.values()))   # first-appearance order
    rows = []
    for domain in domains:
        if not isinstance(splits.get(domain), dict) or split not in splits[domain]:
            raise FeatureError(f"{splits_path}: no {split!r} videos of domain {domain!r}, which "
                               f"{anno_path} uses (domains there: {', '.join(map(str, splits))})")
        for vid in splits[domain][split]:
            if vid not in anno:
                raise FeatureError(f"{splits_path}: video {vid!r} ({domain} {split}) is not in "
                                   f"{anno_path}")
            v = anno[vid]
            rows.append({"qid": vid, "query": v["title"], "duration": len(v["anno"]), "vid": vid,
                         "relevant_clip_ids": None, "relevant_windows": None,
                         "label": v["anno"], "domain": v["domain"]})
    return rows


def _annotation_path(spec, split, anno_dir):
    """The split's annotation file: the official name, else one of its aliases (lighthouse's
    copies of the same lines, e.g. charades_train_release.jsonl), else the official name again
    (which then gives the 'not found' error)."""
    for name in (spec.anno_files[split],) + tuple(spec.anno_aliases.get(split, ())):
        path = os.path.join(anno_dir, name)
        if os.path.isfile(path):
            return path
    return os.path.join(anno_dir, spec.anno_files[split])


def _annotation_files(spec, split, anno_dir):
    """The files one split is read from: its jsonl, or (TVSum without one) UMT's two json files."""
    path = _annotation_path(spec, split, anno_dir)
    if spec.name == "tvsum" and not os.path.isfile(path):
        return [os.path.join(anno_dir, "tvsum_anno.json"),
                os.path.join(anno_dir, "tvsum_splits.json")]
    return [path]


def _read_split(spec, split, anno_dir):
    """One split's rows, where each comes from ("file:line"; UMT's json: "file: video V") and the
    file named in messages. FeatureError if a file is missing or unreadable."""
    files = _annotation_files(spec, split, anno_dir)
    if len(files) == 2:
        rows = _tvsum_annotations_from_umt(anno_dir, split)
        return rows, [f"{files[0]}: video {r['vid']}" for r in rows], files[0]
    rows, line_numbers = _read_annotation_file(files[0], spec.anno_aliases.get(split, ()))
    return rows, [f"{files[0]}:{n}" for n in line_numbers], files[0]


def load_annotations(spec, split, anno_dir, domain=None):
    """The raw annotation dicts of one split (ground truth for the metrics), validated
    (`annotation_problems`: FeatureError on the first problem). TVSum: only `domain`'s videos when
    one is given."""
    if split not in spec.anno_files:
        raise ValueError(f"{spec.name} has no split {split!r}; splits: {sorted(spec.anno_files)}")
    rows, where, path = _read_split(spec, split, anno_dir)
    _raise_first(annotation_problems(spec, rows, where, split not in spec.unlabelled_splits), path)
    if spec.name == "tvsum" and domain is not None:
        if domain not in TVSUM_DOMAINS:
            raise ValueError(f"unknown TVSum domain {domain!r}; domains: {TVSUM_DOMAINS}")
        rows = [r for r in rows if r["domain"] == domain]
    elif domain is not None:
        raise ValueError(f"domain={domain!r} is only meaningful for tvsum, not {spec.name}")
    return rows


# ----------------------------------------------------------------------------- features on disk

def _stream_files(stream, rows, is_text):
    """Every file name the stream needs for these annotation rows (a shared video once)."""
    names = []
    for key in dict.fromkeys(str(r["qid"] if is_text else r["vid"]) for r in rows):
        for pattern in stream.files:
            names.append(pattern.format(qid=key, vid=key))
    return names


def find_missing(spec, feat_root, rows):
    """Compare what the rows need with what is on disk, one listing per directory (fast even for
    the 10k-file QVH folders). Returns one report per stream, video streams first:
    (stream, directory, n_expected, missing file names, directory_exists)."""
    reports = []
    streams = [(s, False) for s in spec.video_streams] + [(s, True) for s in spec.text_streams]
    for stream, is_text in streams:
        directory = os.path.join(feat_root, stream.dirname)
        needed = _stream_files(stream, rows, is_text)
        exists = os.path.isdir(directory)
        present = set(os.listdir(directory)) if exists else set()
        missing = [n for n in needed if n not in present]
        reports.append((stream, directory, len(needed), missing, exists))
    return reports


def layout_message(spec, feat_root):
    """'layout moment_detr (detected: ...)', plus a hint when the other layout is what is on disk
    (a spec built without feat_root, or with the wrong explicit layout)."""
    text = f"layout {spec.layout}" + (f" ({spec.layout_note})" if spec.layout_note else "")
    if spec.name != "synthetic":
        for other in LAYOUTS:
            found = [d for d in _layout_markers(spec.name, other)
                     if other != spec.layout and os.path.isdir(os.path.join(feat_root, d))]
            if found:
                text += (f"; but {feat_root} has {', '.join(d + '/' for d in found)} of the "
                         f"{other} layout: pass layout='{other}' (--layout {other})")
    return text


def _raise_if_missing(spec, feat_root, rows, split):
    problems = []
    for stream, directory, n_expected, missing, exists in find_missing(spec, feat_root, rows):
        kind = "text" if stream in spec.text_streams else "video"
        if not exists:
            problems.append(f"feature directory not found: {directory} (expected the "
                            f"{stream.what}, {n_expected} {kind} files for {spec.name} {split})")
        elif missing:
            problems.append(f"{len(missing)} of {n_expected} {kind} files missing from "
                            f"{directory}, first: {missing[0]}")
    if problems:
        problems.append(layout_message(spec, feat_root))   # which folder names were looked for
        raise FeatureError("; ".join(problems) + f"; {README_HINT}")


def l2_normalize(x):
    """Row-wise L2 normalisation exactly as the official loaders: x / (||x|| + 1e-5), in float32."""
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + 1e-5)


# Feature values beyond this magnitude are corrupt bytes, not features. The UMT TVSum release peaks
# at |x| = 9.3 (I3D) and 0.67 (CLIP title tokens): np.abs(array).max() over all its files; the
# QVHighlights and Charades-STA files were not available to measure, and this leaves them three
# orders of magnitude. Such values would not fail loudly: above 1.8e19 (the square root of
# float32's largest value) a row's norm overflows and L2 normalisation makes it a row of zeros,
# and below that one row would dwarf all others.
MAX_FEATURE_ABS = 1e4


def _open_array(path, stream):
    """One feature file's array as stored (its dtype, every row); FeatureError if the file cannot
    be read (truncated download, not a numpy file), lacks the stream's key, or is not 2-d."""
    try:
        if stream.key is None:
            array = np.load(path)
        else:
            with np.load(path) as archive:
                if stream.key not in archive.files:
                    raise FeatureError(f"{path} has no key {stream.key!r} (keys: {archive.files})")
                array = archive[stream.key]
    except FeatureError:
        raise
    except Exception as err:           # truncated download, not a numpy file, ...
        raise FeatureError(f"cannot read {path}: {err}; {README_HINT}") from err
    if array.ndim != 2 or array.shape[0] == 0:
        raise FeatureError(f"{path}: expected a (rows, dim) array, got shape {array.shape}")
    return array


def _as_float32(array):
    with np.errstate(over="ignore"):   # float64 beyond float32's range -> inf, reported below
        return array.astype(np.float32)


def _value_problem(path, values, stored):
    """None if every value is finite and |x| <= MAX_FEATURE_ABS, else where the first bad one is
    (0-based row and column) and what it is. `values`: the float32 array; `stored`: as read (for
    the message). One vectorised pass when all is well (NaN propagates through max)."""
    if np.abs(values).max() <= MAX_FEATURE_ABS:
        return None
    bad = ~(np.abs(values) <= MAX_FEATURE_ABS)             # NaN compares False: bad
    row, column = np.argwhere(bad)[0]
    value = stored[row, column]
    what = "NaN" if np.isnan(value) else "inf" if np.isinf(value) else f"{value:.3g}"
    n_rows = int(bad.any(axis=1).sum())
    return (f"{path}: row {row}, column {column} holds {what} ({n_rows} of {len(values)} rows "
            f"hold NaN, inf or |x| > {MAX_FEATURE_ABS:g}, which no real feature does): a corrupt "
            f"file; {README_HINT}")


def _read_rows(path, stream, max_rows):
    """One feature file -> float32 array (rows, dim of this file), checked (`_open_array`,
    `_value_problem`: every row of the file, also those cut), then its first `max_rows` rows: the
    values of the official `np.load(p)[key][:max_l].astype(np.float32)`."""
    array = _open_array(path, stream)
    values = _as_float32(array)
    problem = _value_problem(path, values, array)
    if problem:
        raise FeatureError(problem)
    return values[:max_rows]


def _check_dim(path, array, expected):
    if array.shape[1] != expected:
        raise FeatureError(f"wrong feature dim in {path}: shape {array.shape}, expected "
                           f"(rows, {expected})")


def load_video(spec, feat_root, vid, max_len=None):
    """Preprocessed video of one vid: (Lv, Dv) float32 tensor, tef included (module docstring).
    `max_len` cuts the video further (TVSum: to its label length) before tef is computed."""
    per_stream = []
    for stream in spec.video_streams:          # canonical order: I3D, SlowFast, CLIP, BLIP
        paths = [os.path.join(feat_root, stream.dirname, p.format(vid=vid)) for p in stream.files]
        parts = [_read_rows(path, stream, spec.max_v_l) for path in paths]
        if len(parts) > 1:
            # TVSum rgb + flow: same length in the release (the official code would crash
            # otherwise); cut to the shorter to be safe, then one feature vector per shot.
            n = min(len(p) for p in parts)
            array = np.concatenate([p[:n] for p in parts], axis=1)
        else:
            array = parts[0]
        _check_dim(" + ".join(paths), array, stream.dim)
        if spec.normalize_v:
            array = l2_normalize(array)        # each stream on its own, before concatenation
        per_stream.append(array)
    # Streams can differ by a row (they were extracted apart): cut all to the shortest.
    ctx_l = min(len(a) for a in per_stream)
    if max_len is not None:
        ctx_l = min(ctx_l, max_len)
    video = torch.from_numpy(np.concatenate([a[:ctx_l] for a in per_stream], axis=1))  # (Lv, sum d)
    if spec.use_tef:
        # tef: where each clip sits in the video, [start, end] as fractions of Lv (same float32
        # arithmetic as the official code, so the values are bit-identical).
        tef_st = torch.arange(0, ctx_l, 1.0) / ctx_l
        tef_ed = tef_st + 1.0 / ctx_l
        video = torch.cat([video, torch.stack([tef_st, tef_ed], dim=1)], dim=1)   # (Lv, Dv + 2)
    return video


def load_text(spec, feat_root, qid):
    """Preprocessed query of one qid: (Lq, Dq) float32 tensor.

    Several text streams (VideoLights-B: CLIP 512 + BLIP-2 768) are each cut to max_q_l tokens and
    normalised, then cut to the SHORTER token count and concatenated per token index, as its
    loader does. The two tokenisers (CLIP BPE, BERT WordPiece) do not align, so row i joins the
    i-th CLIP token with the i-th BLIP token, whatever words they are."""
    per_stream = []
    for stream in spec.text_streams:
        path = os.path.join(feat_root, stream.dirname, stream.files[0].format(qid=qid))
        array = _read_rows(path, stream, spec.max_q_l)    # TVSum: max_q_l None keeps all tokens
        _check_dim(path, array, stream.dim)
        if spec.normalize_t:
            array = l2_normalize(array)
        per_stream.append(array)
    n_tokens = min(len(a) for a in per_stream)
    return torch.from_numpy(np.concatenate([a[:n_tokens] for a in per_stream], axis=1))  # (Lq, Dq)


# ----------------------------------------------------------------------------- labels

def span_xx_to_cxw(spans):
    """(n, 2) [start, end] -> (n, 2) [center, width]."""
    return torch.stack([(spans[:, 0] + spans[:, 1]) / 2, spans[:, 1] - spans[:, 0]], dim=1)


def span_targets(windows, ctx_l, spec):
    """GT windows in seconds -> (n, 2) normalised (center, width), at most max_windows of them.

    Normalised by ctx_l * clip_len (the loaded feature length), not by `duration`: the official
    code does this, and the two agree whenever ctx_l = duration / clip_len (99% of QVH)."""
    windows = [list(w) for w in windows]     # a copy: the official in-place shuffle would reorder
    if len(windows) > spec.max_windows:      # the annotations the metric later reads
        random.shuffle(windows)
        windows = windows[:spec.max_windows]
    xx = torch.tensor(windows, dtype=torch.float32) / (ctx_l * spec.clip_len)
    return span_xx_to_cxw(xx)


def qvh_labels(ann, ctx_l, spec):
    """QVHighlights (and synthetic) labels from relevant_clip_ids and the 3 annotators' scores.

    saliency pairs (P = 2): pair 1 is hard: the relevant clip with the highest summed score vs the
    one with the lowest (np.argsort ascending, as official); pair 2 is easy: a random relevant clip
    vs a random clip outside every window (if the windows cover the video, pair 2 repeats pair 1).
    Python `random`, redrawn at every __getitem__ like the official loader.

    Relevant ids >= ctx_l (1 val + 1 test query: the streams were one row short of duration / 2):
    the official code grows saliency_all and pos_mask by one entry (and, by a slip in how it grows
    pos_mask, zeroes all its in-range entries); we drop those ids instead, so every per-clip tensor
    is exactly Lv long, aligned with the video mask, and the in-range relevant clips stay 1. The
    pair indices are clamped to ctx_l - 1 as the official code does for the hard pair (we clamp
    the easy positive too, which the official code forgets).

    Otherwise the output equals the official loader's, random draws included: with the same
    Python seed before each call, every tensor and pair index was identical on 300 real val
    annotations (TR-DETR's `StartEndDataset` run on random features; not part of the tests).
    One more difference: the official code shuffles the annotation's own window list when it has
    more than max_windows windows; `span_targets` shuffles a copy."""
    spans = span_targets(ann["relevant_windows"], ctx_l, spec)
    rel_ids = list(ann["relevant_clip_ids"])
    agg = np.asarray(ann["saliency_scores"], dtype=np.float64).sum(axis=1)    # (n_rel,) 0..12
    order = np.argsort(agg)                                                  # ascending
    hard_pos = min(rel_ids[order[-1]], ctx_l - 1)
    hard_neg = min(rel_ids[order[0]], ctx_l - 1)
    # Not sorted on purpose: CPython's (deterministic) order of this set difference is the official
    # one, so a given Python seed draws the very same easy negative as the official loader.
    outside = list(set(range(ctx_l)) - set(rel_ids))
    if len(outside) >= 1:
        easy_pos = min(random.sample(rel_ids, k=1)[0], ctx_l - 1)
        easy_neg = random.sample(outside, k=1)[0]
    else:
        easy_pos, easy_neg = hard_pos, hard_neg
    saliency_all = torch.zeros(ctx_l)
    relevant = torch.zeros(ctx_l)
    for clip_id, score in zip(rel_ids, agg):
        if clip_id < ctx_l:                  # see the docstring: out-of-range ids are dropped
            saliency_all[clip_id] = float(score)
            relevant[clip_id] = 1.0
    return dict(span_targets=spans, saliency_pos=[hard_pos, easy_pos],
                saliency_neg=[hard_neg, easy_neg], saliency_all=saliency_all,
                relevant_mask=relevant)


def _window_pairs(first, last, ctx_l):
    """The official window-only labels (get_saliency_labels_sub_as_query) for clips first..last
    (inclusive): 2 random positive clips inside the window (the one clip twice if it is a single
    clip), 2 random negatives outside (the positives again when fewer than 2 clips are outside),
    and a 0/1 per-clip saliency. Drawn with Python's random, positives first, as the official code."""
    if first != last:
        pos = random.sample(range(first, last + 1), k=2)
    else:
        pos = [first, first]
    neg_pool = list(range(0, first)) + list(range(last + 1, ctx_l))
    neg = random.sample(neg_pool, k=2) if len(neg_pool) >= 2 else list(pos)
    saliency_all = torch.zeros(ctx_l)
    saliency_all[first:last + 1] = 1.0
    return pos, neg, saliency_all


def window_labels(ann, ctx_l, spec):
    """Charades-STA labels from its single window (no clip ids, no scores in the annotations).

    We follow lighthouse (line/lighthouse training/dataset.py, the only public code that trains
    TR-DETR on Charades; TR-DETR released none), with clip_len = 1 s:
    - saliency (as `get_saliency_labels_sub_as_query`, also CG-DETR's): clips st_c..ed_c with
      st_c = int(st / clip_len) and ed_c = min(int(ed / clip_len), ctx_l) - 1, i.e. the clips from
      the one holding the start up to the last one that ENDS by int(ed): the clip holding the end
      point is left out (clip 6 = [6 s, 7 s) for a window [0, 6.9]). saliency_all = 1 on them (the
      Charades scale is 0/1, not 0..12); P = 2 positives drawn among them (the start clip twice if
      there is one clip) and 2 negatives among the other clips (the positives again if fewer than
      2 clips remain). CG-DETR uses duration / ctx_l instead of clip_len here; with 1-s features
      the two differ by at most one clip.
    - relevant_mask (TR-DETR's pos_mask, as lighthouse's `get_pos_mask`): every clip the window
      touches, floor(st / clip_len) .. ceil(ed / clip_len) - 1 (at least one clip), cut to ctx_l.
      So it can hold one clip more than the saliency labels (clip 6 above). One deliberate
      difference: when the window reaches past the last loaded clip (common: many windows end at
      the video's end), lighthouse's code, by the same slip as the official QVH pos_mask (see
      `qvh_labels`), returns an all-zero mask; we keep the clips inside the video.
    Checked here against lighthouse's methods on every 7th train/test line at three ctx_l each
    (6,912 cases, same Python seed): spans, saliency_all and pairs identical; the masks identical
    except the 713 cases of that slip. Not part of the tests."""
    st, ed = ann["relevant_windows"][0]
    spans = span_targets(ann["relevant_windows"], ctx_l, spec)
    first = int(st / spec.clip_len)
    last = max(0, min(int(ed / spec.clip_len), ctx_l) - 1)
    first = min(first, last)
    pos, neg, saliency_all = _window_pairs(first, last, ctx_l)
    mask_first = math.floor(st / spec.clip_len)
    mask_end = max(math.ceil(ed / spec.clip_len), mask_first + 1)        # exclusive
    relevant = torch.zeros(ctx_l)
    relevant[mask_first:mask_end] = 1.0                                  # slicing cuts at ctx_l
    return dict(span_targets=spans, saliency_pos=pos, saliency_neg=neg,
                saliency_all=saliency_all, relevant_mask=relevant)


def tvsum_labels(ann, ctx_l, spec):
    """TVSum labels from the 20 annotators' 1..5 importance scores per shot (official tvsum code).

    agg = sum over annotators of (score - 1), 0..80; saliency_all = agg / 80 * 12, the QVH 0..12
    scale, so the same rank-contrastive loss applies. One pair (P = 1): argmax vs argmin of agg.
    relevant_mask (TR-DETR pos_mask) = the top half of the shots by agg (the ctx_l - ctx_l // 2
    highest). There is no moment annotation: the span target is a dummy [[0, 0]] and the official
    TVSum runs switch the matcher and span losses off; it only keeps the batch format uniform.
    Checked here: all 50 items (tensors, mask, pairs) identical to TR-DETR's StartEndDataset on the
    real UMT features (not part of the tests)."""
    label = np.asarray(ann["label"], dtype=np.float64)[:ctx_l]       # (n_shots, 20)
    agg = np.sum(label - 1.0, axis=-1)                                 # (ctx_l,) 0..80
    order = np.argsort(agg)                                            # ascending, as official
    relevant = torch.zeros(ctx_l)
    relevant[torch.from_numpy(order[ctx_l // 2:].copy())] = 1.0
    return dict(span_targets=torch.zeros(1, 2),
                saliency_pos=[int(order[-1])], saliency_neg=[int(order[0])],
                saliency_all=torch.from_numpy(agg / 80 * 12).float(), relevant_mask=relevant)


def first_window_labels(ann, ctx_l, spec):
    """Pretraining labels (VideoLights' synthetic captions, Moment-DETR's ASR subtitles): binary,
    from the FIRST window only, as the official loader does for any annotation path containing
    'pre_train' or 'subs_train' (`get_saliency_labels_sub_as_query` with the video's duration).

    The clip length here is duration / ctx_l, not spec.clip_len (VideoLights passes the duration;
    the two agree when ctx_l = duration / 2): st = int(ws / c), ed = max(0, min(int(we / c), ctx_l)
    - 1), st lowered to ed if it is past it. saliency_all = 1 on clips st..ed (0 elsewhere);
    P = 2 positives drawn among them (st twice for a single clip) and 2 negatives among the other
    clips (the positives again if fewer than 2 remain); Python `random`, redrawn every call.
    relevant_mask = the same clips (VideoLights' `saliency_pos_index` = saliency_all > 0; TR-DETR's
    pos_mask has no official pretraining definition). The span targets use every window (up to
    max_windows), normalised by ctx_l * clip_len as everywhere else; the official pretraining
    lines have one window each."""
    window_st, window_ed = ann["relevant_windows"][0]
    clip_len = ann["duration"] / ctx_l
    last = max(0, min(int(window_ed / clip_len), ctx_l) - 1)
    first = min(int(window_st / clip_len), last)
    spans = span_targets(ann["relevant_windows"], ctx_l, spec)
    pos, neg, saliency_all = _window_pairs(first, last, ctx_l)
    return dict(span_targets=spans, saliency_pos=pos, saliency_neg=neg,
                saliency_all=saliency_all, relevant_mask=saliency_all.clone())


def no_labels(ctx_l, spec):
    """An unlabelled split (QVH test): empty span targets, zeros everywhere else."""
    return dict(span_targets=torch.zeros(0, 2), saliency_pos=[0] * spec.n_pairs,
                saliency_neg=[0] * spec.n_pairs, saliency_all=torch.zeros(ctx_l),
                relevant_mask=torch.zeros(ctx_l))


# ----------------------------------------------------------------------------- dataset + collate

class MomentDataset(torch.utils.data.Dataset):
    """One split of one dataset, every feature in memory (loaded once, in __init__).

    .annotations  raw annotation dicts, same order as the items (the metrics' ground truth)
    .video_dim    Dv including the 2 tef dims; .text_dim  Dq
    item i        dict(video_feats (Lv, Dv), query_feats (Lq, Dq), the labels of `qvh_labels` /
                  `window_labels` / `tvsum_labels` / `first_window_labels`, meta); random pairs
                  redrawn at every call.
    `annotations` are expected validated (load_dataset and load_pretrain_dataset do it); every
    feature file is checked as it is read (`_read_rows`: readable, 2-d, right dim, finite values
    of sane magnitude), so a bad file stops the run here, before training."""

    def __init__(self, spec, feat_root, split, annotations, progress=True):
        self.spec, self.split, self.annotations = spec, split, annotations
        self.labelled = split not in spec.unlabelled_splits
        _raise_if_missing(spec, feat_root, annotations, split)
        vids = list(dict.fromkeys(a["vid"] for a in annotations))
        qids = list(dict.fromkeys(a["qid"] for a in annotations))
        # TVSum: lighthouse and CG-DETR cut a video to its label length when the label is shorter
        # (TR-DETR's copy would not); in the UMT release the lengths are equal everywhere.
        limits = {a["vid"]: len(a["label"]) for a in annotations} if spec.name == "tvsum" else {}
        show = progress and len(vids) + len(qids) >= 200
        self.videos = {vid: load_video(spec, feat_root, vid, limits.get(vid)) for vid in
                       tqdm(vids, desc=f"{spec.name} {split}: videos", disable=not show)}
        self.texts = {qid: load_text(spec, feat_root, qid) for qid in
                      tqdm(qids, desc=f"{spec.name} {split}: queries", disable=not show)}
        # Checked here, once: the models check it only on the CPU (on a GPU every step would wait
        # for the answer), and an all-padding row would make their attention softmax NaN.
        for kind, store in (("video has no clips", self.videos), ("query has no tokens", self.texts)):
            empty = [key for key, t in store.items() if len(t) == 0]
            if empty:
                raise FeatureError(f"{spec.name} {split}: {kind} in its feature file(s) under "
                                   f"{feat_root}: {empty[:5]}")

    def to(self, device):
        """Move every feature to `device` (a GPU): batches are then assembled there, and a
        training step copies no features from the host. Returns self."""
        self.videos = {vid: v.to(device) for vid, v in self.videos.items()}
        self.texts = {qid: t.to(device) for qid, t in self.texts.items()}
        return self

    def feature_bytes(self):
        return sum(t.numel() * t.element_size()
                   for t in list(self.videos.values()) + list(self.texts.values()))

    @property
    def video_dim(self):
        return self.spec.video_dim

    @property
    def text_dim(self):
        return self.spec.text_dim

    def __len__(self):
        return len(self.annotations)

    def __getitem__(self, index):
        ann = self.annotations[index]
        video = self.videos[ann["vid"]]
        ctx_l = len(video)               # the official ctx_l: every label is built on it
        if self.labelled:
            labels = self.spec.make_labels(ann, ctx_l, self.spec)
        else:
            labels = no_labels(ctx_l, self.spec)
        meta = {"qid": ann["qid"], "query": ann["query"], "vid": ann["vid"],
                "duration": ann["duration"], "n_clips": ctx_l, "clip_len": self.spec.clip_len}
        return dict(video_feats=video, query_feats=self.texts[ann["qid"]], meta=meta, **labels)


def load_dataset(spec, feat_root, split, domain=None, anno_dir=None, progress=True):
    """Build one split: read and validate its annotations (`load_annotations`), check that every
    feature file exists (one FeatureError naming what is missing), then load all features into
    memory, each file checked as it is read (`_read_rows`).
    `spec` is a DatasetSpec or a dataset name; anno_dir defaults to feat_root."""
    feat_root = os.fspath(feat_root)
    if isinstance(spec, str):
        spec = dataset_spec(spec, feat_root=feat_root)      # layout detected from the tree
    anno_dir = os.fspath(anno_dir) if anno_dir is not None else feat_root
    annotations = load_annotations(spec, split, anno_dir, domain)
    if not annotations:
        raise FeatureError(f"{spec.name} {split}: no annotation lines"
                           + (f" for domain {domain}" if domain else ""))
    return MomentDataset(spec, feat_root, split, annotations, progress=progress)


# The official pretraining archive keeps its caption features in folders of its own (VideoLights'
# pretrain_sf_clip[_blip].sh: clip_query_features/, blip_query_features/; Moment-DETR's ASR
# subtitles: clip_sub_features/), next to slowfast_features/ clip_features/ blip_video_features/.
PRETRAIN_TEXT_DIRS = {"clip": ("clip_query_features", "clip_sub_features"),
                      "blip": ("blip_query_features",)}


def load_pretrain_dataset(spec, anno_path, feat_root, progress=True):
    """VideoLights' pretraining corpus (paper "-pt"; also Moment-DETR's ASR pretraining) as a
    MomentDataset of split "pretrain", for training only (evaluation stays on the eval split).

    anno_path: a jsonl in the official format, one (caption, window) pair a line: qid (the official
    generator writes strings like "{vid}_{start}_{end}"), query, vid, duration (s), relevant_windows
    (one 10-s window); relevant_clip_ids and saliency_scores may be there and are ignored, as the
    official loader ignores them for such files. Labels: `first_window_labels`.
    feat_root: the video streams of `spec` (same folders and names as the dataset's), the text
    streams either in the spec's folders or in the pretraining archive's (PRETRAIN_TEXT_DIRS).
    spec: a DatasetSpec or a dataset name (its streams, clip_len, max lengths and normalisation).

    Memory: the official QVH corpus (187,682 captions on ~12.5k videos) would take about 10 GiB of
    float32 video (SF+C; 13 GiB with BLIP-2) plus ~4-5 GiB of text once loaded (computed from its
    sizes, not measured)."""
    feat_root = os.fspath(feat_root)
    if isinstance(spec, str):
        spec = dataset_spec(spec, feat_root=feat_root)
    text_streams = []
    for stream in spec.text_streams:
        if (spec.layout == "moment_detr"
                and not os.path.isdir(os.path.join(feat_root, stream.dirname))):
            for other in PRETRAIN_TEXT_DIRS.get(stream.name, ()):
                if os.path.isdir(os.path.join(feat_root, other)):
                    stream = dataclasses.replace(stream, dirname=other)
                    break
        text_streams.append(stream)
    fields = ("qid", "query", "duration", "vid", "relevant_windows")
    spec = dataclasses.replace(spec, text_streams=text_streams, make_labels=first_window_labels,
                               n_pairs=2, unlabelled_splits=(), required_fields=fields,
                               label_fields=())
    anno_path = os.fspath(anno_path)
    rows, line_numbers = _read_annotation_file(anno_path)
    if not rows:
        raise FeatureError(f"{anno_path}: no annotation lines")
    _raise_first(annotation_problems(spec, rows, [f"{anno_path}:{n}" for n in line_numbers]),
                 anno_path)
    return MomentDataset(spec, feat_root, "pretrain", rows, progress=progress)


def _pad(sequences, fill=0.0):
    """List of (L_i, ...) tensors -> (B, L_max, ...) zero-padded tensor and (B, L_max) bool mask,
    True on real rows (the one mask convention of this repository)."""
    longest = max(len(s) for s in sequences)
    out = sequences[0].new_full((len(sequences), longest) + tuple(sequences[0].shape[1:]), fill)
    mask = torch.zeros(len(sequences), longest, dtype=torch.bool, device=out.device)
    for i, s in enumerate(sequences):
        out[i, :len(s)] = s
        mask[i, :len(s)] = True
    return out, mask


def collate(items):
    """Items -> the batch dict the models and losses read (padding 0, masks True = real clip)."""
    video_feats, video_mask = _pad([it["video_feats"] for it in items])       # (B, Lv, Dv)
    query_feats, query_mask = _pad([it["query_feats"] for it in items])       # (B, Lq, Dq)
    saliency_all, _ = _pad([it["saliency_all"] for it in items])              # (B, Lv)
    relevant_mask, _ = _pad([it["relevant_mask"] for it in items])            # (B, Lv)
    return {
        "video_feats": video_feats, "video_mask": video_mask,
        "query_feats": query_feats, "query_mask": query_mask,
        "span_targets": [it["span_targets"] for it in items],                 # B x (n_i, 2)
        "saliency_pos": torch.tensor([it["saliency_pos"] for it in items], dtype=torch.long),
        "saliency_neg": torch.tensor([it["saliency_neg"] for it in items], dtype=torch.long),
        "saliency_all": saliency_all, "relevant_mask": relevant_mask,
        "meta": [it["meta"] for it in items],
    }


def pin_memory(dataset, device):
    """Whether a DataLoader should page-lock batches (a non-blocking copy needs them): on a GPU,
    when the features stay on the host."""
    on_host = next(iter(dataset.videos.values())).device.type == "cpu"
    return device.type == "cuda" and torch.cuda.is_available() and on_host


def keep_on_device(choice, device, datasets):
    """train.py --keep-on-device: "auto" keeps the splits' features on a GPU when they take under
    half of its free memory (QVHighlights train + val: ~7 GB in float32), leaving the rest to the
    model. Returns whether they go there (then `MomentDataset.to` moves them)."""
    if choice == "off" or device.type != "cuda" or not torch.cuda.is_available():
        return False
    needed = sum(d.feature_bytes() for d in datasets)
    if choice == "on" or needed < 0.5 * torch.cuda.mem_get_info(device)[0]:
        print(f"features on {device}: {needed / 2 ** 30:.2f} GiB")
        return True
    return False


# ----------------------------------------------------------------------------- synthetic benchmark
#
# Why it is learnable, and how hard it is
# ---------------------------------------
# There are K hidden "concepts" (think: "a dog catching a frisbee"). Each modality sees a concept
# through its own fixed random projection: concept k looks like P_slowfast[k] (128-d) to the
# "SlowFast" stream, like P_clip[k] (64-d) to the "CLIP" stream and like P_text[k] (64-d) to the
# text encoder. The projections are unrelated random matrices, so nothing links a text vector to a
# video vector except the training data: a model has to LEARN the cross-modal alignment (that
# P_text[k] goes with P_slowfast[k] and P_clip[k]), which is what the real task needs too.
#
# A query is about one concept k. Its video (75 clips, 2 s each) is a sequence of scenes, each
# showing one distractor concept (never k) at strength 0.5..1. Inside the query's windows the clips
# show k at a strength s in 0.1..1 that varies smoothly over the window (a bump around a random
# peak), with the scene's distractor underneath at strength (1 - s) * u. Every clip also carries a
# per-video "style" vector (the look of the video, the same in all its clips) and Gaussian noise of
# norm `video_noise` per stream, so raw clip features are far apart from the bare projections.
# The annotators' scores follow s: score = round(4 s + annotator bias + noise), clipped to 0..4,
# so the highest-scored clips are the ones where the concept is shown most strongly.
# The query's tokens: a start token, 8..20 tokens of which 1..3 carry P_text[k] and the rest are
# filler words from a fixed vocabulary, and an end token that mixes in P_text[k] at half strength
# (CLIP's end token summarises the sentence); every token gets noise of norm `text_noise`.
#
# Nothing in a clip alone says whether it is relevant (every clip shows some concept at a similar
# strength); the window is only found by matching the clip's concept with the query's. Once the
# alignment is learned the signal is strong (the concept direction stands far above the noise in
# 64-128 dims), so the difficulty is learning the alignment from the data (K = 8 concepts by
# default, ~125 train queries each) and finding the window boundaries where s is small. Measured on
# the earlier K = 16, 1,200-query set: a least-squares text->video map fitted on train ranks val in-
# window clips above the others with a mean per-query AUC of 0.98 (the same map fitted on shuffled
# pairs: 0.5, chance); a small MLP scorer trained by gradient descent sits on a plateau (AUC ~0.7)
# for ~10 epochs, then learns the alignment and reaches 0.93 after 20 epochs and 0.97 after 40. K =
# 8 is learned within a dozen epochs (0.999), which is why it is the default: TR-DETR's highlight
# scores then clearly learn within the quick start's CPU minutes (with K = 16 they were still on the
# plateau). K = 32 is hard (0.86 after 40 epochs, overfitting); video_noise 2 / 3 lowers the least-
# squares AUC to 0.94 / 0.87.
#
# Shapes follow QVHighlights' train annotations (QVH value in brackets, measured here): 95% of the
# videos are 150 s (97%), the rest 120..148 s; 2-s clips; windows on even seconds; one window for
# 66% of the queries (67%), up to 8 (25); a lone window is long (median 28 s (28 s)), windows of a
# multi-window query are short (median 8 s (8 s)) and close together (gaps of a few clips); windows
# short (<= 10 s) / middle / long (> 30 s) = 46/33/21% (37/39/24%); scores 0/1/2/3/4 =
# 1/7/21/34/38% (3/7/19/31/40%), annotators disagreeing by ~0.5 point (0.7). 2% of the videos have a
# "CLIP" stream one row shorter than the "SlowFast" one, as happens in the real release.

SYNTHETIC_VERSION = 2   # bump when the generator or its defaults change: old sets get regenerated


def _write_npz(path, **arrays):
    """np.savez_compressed with fixed zip timestamps (so the same seed gives byte-identical files),
    written to a temporary name and renamed (a crash never leaves a half-written file). The name
    is the process's own: two processes writing the same file never touch each other's."""
    tmp = f"{path}.tmp{os.getpid()}"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
    os.replace(tmp, path)


def _unit_rows(rng, n, dim):
    """n random directions in R^dim with norm ~1 (Gaussian entries of variance 1/dim)."""
    return rng.normal(0.0, 1.0 / math.sqrt(dim), size=(n, dim))


def _synthetic_windows(rng, n_clips):
    """Relevant windows as (start_clip, end_clip) pairs, end exclusive, QVH-like (see above)."""
    n_windows = int(rng.choice(np.arange(1, 9), p=[.66, .17, .07, .04, .03, .015, .01, .005]))
    if n_windows == 1:   # one window: median 14 clips (28 s), log-normal spread
        lengths = [int(np.clip(round(math.exp(rng.normal(math.log(14), 0.75))), 1, n_clips))]
    else:                # several windows: shorter, median 4 clips (8 s)
        lengths = [int(np.clip(round(math.exp(rng.normal(math.log(4), 0.9))), 1, 25))
                   for _ in range(n_windows)]
    gaps = [int(rng.geometric(0.25)) for _ in range(len(lengths) - 1)]   # >= 1 clip, mean 4
    while sum(lengths) + sum(gaps) > n_clips:          # too long for the video: drop windows
        lengths.pop()
        if gaps:
            gaps.pop()
    start = int(rng.integers(0, n_clips - sum(lengths) - sum(gaps) + 1))
    windows = []
    for i, length in enumerate(lengths):
        windows.append((start, start + length))
        start += length + (gaps[i] if i < len(gaps) else 0)
    return windows


def _synthetic_world(rng, n_concepts, dims=None):
    """The fixed random projections of one seed (the first draws of its generator, so the
    fine-tuning set and the pretraining corpus of a seed share the same concepts), for feature
    dims `dims` (default SYNTHETIC_DIMS)."""
    dims = dims or SYNTHETIC_DIMS
    style_dim = 8
    return {"text": _unit_rows(rng, n_concepts, dims["text"]),
            "slowfast": _unit_rows(rng, n_concepts, dims["slowfast"]),
            "clip": _unit_rows(rng, n_concepts, dims["clip"]),
            "slowfast_style": _unit_rows(rng, style_dim, dims["slowfast"]),
            "clip_style": _unit_rows(rng, style_dim, dims["clip"]),
            "filler": _unit_rows(rng, 200, dims["text"]),
            "start": _unit_rows(rng, 1, dims["text"])[0],
            "end": _unit_rows(rng, 1, dims["text"])[0],
            "style_dim": style_dim, "dims": dims}


def _synthetic_blip_world(seed, n_concepts):
    """The BLIP-2 stand-ins' own projections, from a generator of their own (seeded [seed, 2]):
    drawing them from the main generator would change every default file."""
    rng = np.random.default_rng([seed, 2])
    dim_v, dim_t, style_dim = SYNTHETIC_BLIP_DIMS["video"], SYNTHETIC_BLIP_DIMS["text"], 8
    return {"video": _unit_rows(rng, n_concepts, dim_v),
            "video_style": _unit_rows(rng, style_dim, dim_v),
            "text": _unit_rows(rng, n_concepts, dim_t),
            "filler": _unit_rows(rng, 200, dim_t),
            "cls": _unit_rows(rng, 1, dim_t)[0], "sep": _unit_rows(rng, 1, dim_t)[0],
            "style_dim": style_dim}


def _synthetic_video(rng, world, activation, video_noise):
    """{"slowfast": (clips, 128), "clip": (clips, 64)} for a (clips, K) concept activation: each
    stream sees the concepts through its own projection, plus a per-video style and noise."""
    n_clips = len(activation)
    style = rng.normal(0.0, 1.0, size=world["style_dim"]) * 0.7 / math.sqrt(world["style_dim"])
    video = {}
    for name in ("slowfast", "clip"):
        dim = world["dims"][name]
        video[name] = (activation @ world[name] + style @ world[name + "_style"]
                       + _unit_rows(rng, n_clips, dim) * video_noise)
    return video


def _synthetic_tokens(rng, world, concept, text_noise):
    """(tokens, 64) "CLIP" text of a query about `concept` (see the comment block above)."""
    dim = world["dims"]["text"]
    n_tokens = int(rng.integers(8, 21))
    middle = [world["filler"][int(rng.integers(len(world["filler"])))] for _ in range(n_tokens - 2)]
    for pos in rng.choice(n_tokens - 2, size=int(rng.integers(1, 4)), replace=False):
        middle[pos] = world["text"][concept]
    tokens = np.stack([world["start"]] + middle + [world["end"] + 0.5 * world["text"][concept]])
    return tokens + _unit_rows(rng, n_tokens, dim) * text_noise


def _synthetic_blip(rng, blip_world, activation, concept, video_noise, text_noise):
    """The BLIP-2 stand-ins of one query: (clips, 48) video seen through a third projection, and
    (tokens, 48) text with its own token count (a [CLS], 4..22 words, a [SEP]), so that the
    VideoLights rule 'cut the text streams to the shorter one, glue row i to row i' is exercised
    with tokenisations that do not align, as CLIP's and BERT's do not."""
    n_clips = len(activation)
    dim_v, dim_t = SYNTHETIC_BLIP_DIMS["video"], SYNTHETIC_BLIP_DIMS["text"]
    style_dim = blip_world["style_dim"]
    style = rng.normal(0.0, 1.0, size=style_dim) * 0.7 / math.sqrt(style_dim)
    video = (activation @ blip_world["video"] + style @ blip_world["video_style"]
             + _unit_rows(rng, n_clips, dim_v) * video_noise)                  # (clips, 48)
    n_tokens = int(rng.integers(6, 25))
    filler = blip_world["filler"]
    middle = [filler[int(rng.integers(len(filler)))] for _ in range(n_tokens - 2)]
    for pos in rng.choice(n_tokens - 2, size=int(rng.integers(1, 4)), replace=False):
        middle[pos] = blip_world["text"][concept]
    tokens = np.stack([blip_world["cls"] + 0.5 * blip_world["text"][concept]] + middle
                      + [blip_world["sep"]])
    return video, tokens + _unit_rows(rng, n_tokens, dim_t) * text_noise         # (tokens, 48)


def _synthetic_query(rng, index, world, video_noise, text_noise):
    """One query: (annotation dict, {stream: (clips, dim) features}, (tokens, dim) text,
    (clips, K) concept activation, concept)."""
    n_concepts = len(world["text"])
    duration = 150 if rng.random() < 0.95 else int(rng.integers(60, 75)) * 2
    n_clips = duration // 2
    concept = int(rng.integers(n_concepts))
    windows = _synthetic_windows(rng, n_clips)

    # Scenes of distractor concepts (never the query's) over the whole video.
    others = [k for k in range(n_concepts) if k != concept]
    pool = rng.choice(others, size=3, replace=False)
    activation = np.zeros((n_clips, n_concepts))              # (clips, K) concept strengths
    t = 0
    while t < n_clips:
        length = int(rng.integers(3, 13))
        end = min(t + length, n_clips)
        k, u = int(rng.choice(pool)), rng.uniform(0.5, 1.0)
        activation[t:end, k] = u * rng.uniform(0.85, 1.0, size=end - t)
        t = end

    # The query's concept inside its windows, strength s following a bump in each window.
    rel_ids, strengths = [], []
    for st, ed in windows:
        base = rng.uniform(0.45, 0.95)
        peak = rng.uniform(st, ed)
        width = max(1.0, (ed - st) / 3)
        for i in range(st, ed):
            bump = math.exp(-0.5 * ((i + 0.5 - peak) / width) ** 2)
            s = float(np.clip(base + 0.35 * (bump - 0.5) + rng.normal(0, 0.05), 0.1, 1.0))
            activation[i] *= (1.0 - s)                        # the scene fades under the concept
            activation[i, concept] = s
            rel_ids.append(i)
            strengths.append(s)
    strengths = np.array(strengths)
    bias = rng.normal(0.0, 0.5, size=3)                       # per-annotator leniency
    noise = rng.normal(0, 0.7, size=(len(rel_ids), 3))
    raw = 4.0 * strengths[:, None] + 0.2 + bias[None, :] + noise           # (n_rel, 3 annotators)
    scores = np.clip(np.rint(raw), 0, 4).astype(int)

    video = _synthetic_video(rng, world, activation, video_noise)
    if rng.random() < 0.02:                                   # the real streams can differ by a row
        video["clip"] = video["clip"][:-1]
    tokens = _synthetic_tokens(rng, world, concept, text_noise)

    vid = f"synth{index:05d}_0.0_{float(duration):.1f}"      # QVH style: {id}_{start}_{end}
    ann = {"qid": index, "query": f"a moment showing concept {concept}", "duration": duration,
           "vid": vid, "relevant_clip_ids": rel_ids, "saliency_scores": scores.tolist(),
           "relevant_windows": [[2 * st, 2 * ed] for st, ed in windows]}
    return ann, video, tokens, activation, concept


def _synthetic_params(seed, n_train, n_val, n_concepts, video_noise, text_noise, blip=False,
                      dims=None):
    params = {"version": SYNTHETIC_VERSION, "seed": seed, "n_train": n_train, "n_val": n_val,
              "n_concepts": n_concepts, "video_noise": video_noise, "text_noise": text_noise,
              "dims": dims or SYNTHETIC_DIMS}
    if blip:            # only then: a default set's marker stays what it always was
        params["blip_dims"] = SYNTHETIC_BLIP_DIMS
    return params


def _refuse_non_synthetic(root):
    """Never write synthetic files into someone's real data."""
    spec = dataset_spec("synthetic")
    for split in spec.splits:
        path = os.path.join(root, spec.anno_files[split])
        if os.path.isfile(path) and not os.path.isfile(os.path.join(root, SYNTHETIC_MARKER)):
            with open(path) as f:
                first = f.readline()
            if first.strip() and not json.loads(first).get("vid", "").startswith("synth"):
                raise FeatureError(f"{root} holds non-synthetic annotations ({path}); refusing to "
                                   f"write the synthetic set there")


def _write_blip(root, dirs, vid, qid, video, tokens):
    video_dir, text_dir = dirs
    _write_npz(os.path.join(root, video_dir, f"{vid}.npz"), features=video.astype(np.float16))
    _write_npz(os.path.join(root, text_dir, f"qid{qid}.npz"),
               last_hidden_state=tokens.astype(np.float16))


def _blip_dirs():
    video, text = _stream_catalog("synthetic", "moment_detr")
    return video["blip"].dirname, text["blip"].dirname


def make_synthetic(root, seed=0, n_train=1000, n_val=300, n_concepts=8, video_noise=1.0,
                   text_noise=0.3, progress=False, blip=False, dims=None):
    """Write the synthetic benchmark under `root` in the QVHighlights layout (module docstring):
    highlight_{train,val}_release.jsonl + slowfast_features/ clip_features/ clip_text_features/,
    float16 npz like the real release, then the marker file. Deterministic in `seed`.
    blip=True also writes the BLIP-2 stand-ins (48-d) in VideoLights' folders
    blip_video_features/ and blip_aug_text_features_openai/, drawn from generators of their own:
    every other file is byte-identical to the blip=False set.
    dims: the feature dims {"slowfast", "clip", "text"} (default SYNTHETIC_DIMS); with the real
    ones (QVH_SIZED, for the speed benchmark) the set is read with dataset_spec("qvh")."""
    if blip and dims:
        raise ValueError("make_synthetic: the BLIP-2 stand-ins go with the default dims only")
    root = os.fspath(root)
    spec = dataset_spec("synthetic")
    _refuse_non_synthetic(root)
    marker = os.path.join(root, SYNTHETIC_MARKER)
    if os.path.exists(marker):
        os.remove(marker)                     # from here on the set counts as incomplete
    dirs = [s.dirname for s in spec.video_streams + spec.text_streams]
    if blip:
        dirs += list(_blip_dirs())
    for dirname in dirs:
        os.makedirs(os.path.join(root, dirname), exist_ok=True)
    for dirname in dirs:
        remove_stale_temporaries(os.path.join(root, dirname))

    rng = np.random.default_rng(seed)
    world = _synthetic_world(rng, n_concepts, dims)
    if blip:
        blip_world = _synthetic_blip_world(seed, n_concepts)
        blip_rng = np.random.default_rng([seed, 3])
    index = 0
    for split, count in (("train", n_train), ("val", n_val)):
        rows = []
        for _ in tqdm(range(count), desc=f"synthetic {split}", disable=not progress):
            ann, video, tokens, activation, concept = _synthetic_query(
                rng, index, world, video_noise, text_noise)
            _write_npz(os.path.join(root, "slowfast_features", f"{ann['vid']}.npz"),
                       features=video["slowfast"].astype(np.float16))
            _write_npz(os.path.join(root, "clip_features", f"{ann['vid']}.npz"),
                       features=video["clip"].astype(np.float16))
            _write_npz(os.path.join(root, "clip_text_features", f"qid{ann['qid']}.npz"),
                       last_hidden_state=tokens.astype(np.float16),
                       pooler_output=tokens[-1].astype(np.float16))
            if blip:
                blip_video, blip_tokens = _synthetic_blip(blip_rng, blip_world, activation, concept,
                                                          video_noise, text_noise)
                _write_blip(root, _blip_dirs(), ann["vid"], ann["qid"], blip_video, blip_tokens)
            rows.append(ann)
            index += 1
        write_jsonl_atomic(os.path.join(root, spec.anno_files[split]), rows)
    params = _synthetic_params(seed, n_train, n_val, n_concepts, video_noise, text_noise, blip,
                               dims)
    write_json_atomic(marker, params)         # last: the set is complete
    return root


SYNTHETIC_LOCK = "GENERATING.pid"   # exists, holding the writer's pid, while ensure_* write a set


def _pid_alive(pid):
    if pid <= 0:                          # os.kill(0 or -n) addresses process groups: no process
        return False
    try:
        os.kill(pid, 0)                   # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:               # it exists, owned by another user
        return True
    return True


def _lock_owner(path):
    """(pid written in the lock file or None, the file's age in seconds); (None, None) if gone."""
    try:
        with open(path) as f:
            text = f.read().strip()
        age = time.time() - os.path.getmtime(path)
    except FileNotFoundError:
        return None, None
    return (int(text) if text.isdigit() else None), age


def _held_by_another(pid):
    """True if `pid` (read from a lock file) is a live process other than this one."""
    return pid != os.getpid() and _pid_alive(pid)


def lock_holder(path):
    """The pid of the live process (not this one) that holds the lock file `path`, else None."""
    owner = _lock_owner(path)[0]
    return owner if owner and _held_by_another(owner) else None


@contextlib.contextmanager
def hold_lock(path, busy=None, doing="holds it"):
    """Hold the lock file `path` (it holds this pid) for a with-block, so that two processes never
    write one folder at once: synthetic generation, a training run's results folder. The O_EXCL
    create is atomic, so one process wins. Held by a live process: raise SystemExit(busy with
    {who} filled in), or without `busy` wait for it, saying what the holder is `doing`. A lock
    whose process is gone is taken over, as is one still without a pid 10 s after it was made
    (its creator died before writing it)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    waiting = False
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            pass
        owner, age = _lock_owner(path)
        if age is None:                   # released meanwhile
            continue
        if (owner is None and age > 10) or (owner is not None and not _held_by_another(owner)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)           # stale
            continue
        who = f"process {owner}" if owner else "another process"
        if busy:
            raise SystemExit(busy.format(who=who))
        if not waiting:
            print(f"waiting for {who}, which {doing} ({path}) ...", file=sys.stderr)
            waiting = True
        time.sleep(0.1)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield
    finally:
        if _lock_owner(path)[0] == os.getpid():
            os.remove(path)


def remove_stale_temporaries(directory):
    """Temporary files of writes that a kill interrupted: NAME.tmp<pid> (torch.save, _write_npz)
    whose process is gone, and .NAME.*.tmp (metrics.write_text_atomic). Call it holding the
    folder's lock (`hold_lock`): then nothing else is writing them."""
    for name in os.listdir(directory):
        pid = name.rpartition(".tmp")[2]
        killed_save = ".tmp" in name and pid.isdigit() and not _pid_alive(int(pid))
        if killed_save or (name.startswith(".") and name.endswith(".tmp")):
            os.remove(os.path.join(directory, name))


def _marker_matches(path, wanted, also_ok=None):
    """True if the marker file at `path` records `wanted` (or `also_ok`) parameters."""
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        try:
            found = json.load(f)
        except json.JSONDecodeError:
            return False
    return any(found == json.loads(json.dumps(p)) for p in (wanted, also_ok) if p is not None)


def ensure_synthetic(root, seed=0, n_train=1000, n_val=300, n_concepts=8, video_noise=1.0,
                     text_noise=0.3, progress=True, blip=False, dims=None):
    """Generate the synthetic set under `root` unless a complete one with these parameters is
    there already. The marker file is written last and records the parameters, so a half-written
    set, or one made by another version or with other parameters, is regenerated. Regenerating
    overwrites files by name and deletes nothing. A set written with blip=True also serves
    blip=False (its other files are the same); a blip=False set is completed by regenerating.
    Processes calling this for one folder at once: one generates, the others wait for it
    (`hold_lock`)."""
    args = (seed, n_train, n_val, n_concepts, video_noise, text_noise)
    with_blip = None if dims else _synthetic_params(*args, blip=True)
    wanted = with_blip if blip else _synthetic_params(*args, dims=dims)
    marker = os.path.join(os.fspath(root), SYNTHETIC_MARKER)
    if _marker_matches(marker, wanted, with_blip):
        return root
    with hold_lock(os.path.join(os.fspath(root), SYNTHETIC_LOCK),
                   doing=f"is writing the synthetic set in {root}"):
        if _marker_matches(marker, wanted, with_blip):    # written by the process we waited for
            return root
        t0 = time.time()
        print(f"generating the synthetic benchmark in {root} ...", file=sys.stderr)
        make_synthetic(root, seed, n_train, n_val, n_concepts, video_noise, text_noise, progress,
                       blip, dims)
        print(f"done in {time.time() - t0:.1f} s", file=sys.stderr)
    return root


# ----------------------------------------------------------------------------- synthetic pretrainin
#
# The stand-in for VideoLights' "-pt" corpus (made by its
# `extract_feature/pretrain_data_generator_using_blip2.py`): there, every 10 s of a video was
# captioned by an image captioner, and each caption became a query whose window is those 10 s.
# Here, with the world (concepts, projections) of the same seed as the fine-tuning set: a
# 150-s video is a sequence of 15 segments of 10 s (5 clips), each showing one random concept at
# strength 0.5..1 (the same concept can come back later in the video, so some "captions" also fit
# other segments: the labels are noisy, as real captions are); one line per segment, its tokens
# built like a fine-tuning query about that concept. The lines follow the official generator's
# format (qid "{vid}_{start}_{end}", relevant_clip_ids and ITM-style saliency_scores that the
# loader ignores). Videos, text and the jsonl go into the synthetic set's own folders under new
# names (synthpt*), so the fine-tuning files are untouched; the jsonl and then a marker are written
# last.

SYNTHETIC_PRETRAIN_MARKER = "SYNTHETIC_PRETRAIN_COMPLETE.json"
PRETRAIN_SEGMENT_S = 10          # seconds per caption (the generator's 0.1 frames per second)


def _pretrain_params(seed, n_videos, n_concepts, video_noise, text_noise, blip):
    return {"version": SYNTHETIC_VERSION, "seed": seed, "n_videos": n_videos,
            "n_concepts": n_concepts, "video_noise": video_noise, "text_noise": text_noise,
            "dims": SYNTHETIC_DIMS, "blip_dims": SYNTHETIC_BLIP_DIMS if blip else None}


def make_synthetic_pretrain(root, seed=0, n_videos=100, n_concepts=8, video_noise=1.0,
                            text_noise=0.3, blip=False, progress=False):
    """Write a tiny pretraining corpus (15 caption lines per 150-s video) under `root`:
    pre_train_synthetic.jsonl + features in the synthetic folders (see the comment above).
    Deterministic in `seed`; load it with load_pretrain_dataset("synthetic", root/<jsonl>, root)."""
    root = os.fspath(root)
    _refuse_non_synthetic(root)
    spec = dataset_spec("synthetic")
    marker = os.path.join(root, SYNTHETIC_PRETRAIN_MARKER)
    if os.path.exists(marker):
        os.remove(marker)
    dirs = [s.dirname for s in spec.video_streams + spec.text_streams]
    if blip:
        dirs += list(_blip_dirs())
    for dirname in dirs:
        os.makedirs(os.path.join(root, dirname), exist_ok=True)
    for dirname in dirs:
        remove_stale_temporaries(os.path.join(root, dirname))
    world = _synthetic_world(np.random.default_rng(seed), n_concepts)   # the fine-tuning concepts
    rng = np.random.default_rng([seed, 1])                               # a stream of its own
    if blip:
        blip_world = _synthetic_blip_world(seed, n_concepts)
    duration, clip_len = 150, 2
    n_clips, seg = duration // clip_len, PRETRAIN_SEGMENT_S // clip_len
    rows = []
    for v in tqdm(range(n_videos), desc="synthetic pretraining", disable=not progress):
        vid = f"synthpt{v:05d}_0.0_{float(duration):.1f}"
        concepts = rng.integers(n_concepts, size=n_clips // seg)        # one per 10-s segment
        activation = np.zeros((n_clips, n_concepts))                     # (clips, K)
        for j, k in enumerate(concepts):
            strength = rng.uniform(0.5, 1.0)
            activation[j * seg:(j + 1) * seg, k] = strength * rng.uniform(0.85, 1.0, size=seg)
        video = _synthetic_video(rng, world, activation, video_noise)
        _write_npz(os.path.join(root, "slowfast_features", f"{vid}.npz"),
                   features=video["slowfast"].astype(np.float16))
        _write_npz(os.path.join(root, "clip_features", f"{vid}.npz"),
                   features=video["clip"].astype(np.float16))
        for j, k in enumerate(concepts):
            start, end = float(j * PRETRAIN_SEGMENT_S), float((j + 1) * PRETRAIN_SEGMENT_S)
            qid = f"{vid}_{start}_{end}"
            tokens = _synthetic_tokens(rng, world, int(k), text_noise)
            _write_npz(os.path.join(root, "clip_text_features", f"qid{qid}.npz"),
                       last_hidden_state=tokens.astype(np.float16))
            if blip:
                blip_video, blip_tokens = _synthetic_blip(rng, blip_world, activation, int(k),
                                                          video_noise, text_noise)
                _write_blip(root, _blip_dirs(), vid, qid, blip_video, blip_tokens)
            clip_ids = list(range(j * seg, (j + 1) * seg))
            # The official generator's saliency score per clip, exp(max(2.5 p, 1)) from an ITM
            # probability p; here p = the concept's strength. Ignored by every loader.
            itm = [[round(math.exp(max(2.5 * float(activation[i, k]), 1.0)), 4)] for i in clip_ids]
            rows.append({"qid": qid, "query": f"a caption showing concept {int(k)}",
                         "vid": vid, "duration": duration, "split": "train",
                         "relevant_windows": [[start, end]], "relevant_clip_ids": clip_ids,
                         "saliency_scores": itm})
    write_jsonl_atomic(os.path.join(root, SYNTHETIC_PRETRAIN_FILE), rows)
    write_json_atomic(marker, _pretrain_params(seed, n_videos, n_concepts, video_noise,
                                               text_noise, blip))
    return os.path.join(root, SYNTHETIC_PRETRAIN_FILE)


def ensure_synthetic_pretrain(root, seed=0, n_videos=100, n_concepts=8, video_noise=1.0,
                              text_noise=0.3, blip=False, progress=True):
    """make_synthetic_pretrain unless a complete corpus with these parameters (or the same with
    BLIP-2 stand-ins, when blip=False) is there. Returns the jsonl path. Concurrent calls for one
    folder: one generates, the others wait (`hold_lock`)."""
    args = (seed, n_videos, n_concepts, video_noise, text_noise)
    with_blip = _pretrain_params(*args, blip=True)
    wanted = with_blip if blip else _pretrain_params(*args, blip=False)
    marker = os.path.join(os.fspath(root), SYNTHETIC_PRETRAIN_MARKER)
    if not _marker_matches(marker, wanted, with_blip):
        with hold_lock(os.path.join(os.fspath(root), SYNTHETIC_LOCK),
                       doing=f"is writing the synthetic pretraining corpus in {root}"):
            if not _marker_matches(marker, wanted, with_blip):   # not made while we waited
                make_synthetic_pretrain(root, seed, n_videos, n_concepts, video_noise,
                                        text_noise, blip, progress)
    return os.path.join(os.fspath(root), SYNTHETIC_PRETRAIN_FILE)


# ----------------------------------------------------------------------------- command line

# The classes of problem `check` lists, in its order.
CHECK_CLASSES = ("missing files", "unreadable, truncated or malformed files", "bad feature values",
                 "bad annotations")


def _check_feature_files(spec, feat_root, jobs, problems, progress):
    """Read every feature file of `jobs` ({(dirname, key): (stream, key)}) as the loader does,
    sorting what is wrong into `problems` (files that are not there are already listed). Returns
    how many files were read."""
    n_read = 0
    for stream, key in tqdm(jobs.values(), desc=f"{spec.name}: reading feature files",
                            disable=not progress or not jobs):
        paths = [os.path.join(feat_root, stream.dirname, p.format(vid=key, qid=key))
                 for p in stream.files]
        arrays = []
        for path in paths:
            if not os.path.isfile(path):
                continue
            try:
                array = _open_array(path, stream)
            except FeatureError as err:
                problems["unreadable, truncated or malformed files"].append(str(err))
                continue
            value_problem = _value_problem(path, _as_float32(array), array)
            if value_problem:
                problems["bad feature values"].append(value_problem)
            arrays.append(array)
        n_read += len(arrays)
        if len(arrays) == len(paths):
            dim = sum(a.shape[1] for a in arrays)
            if dim != stream.dim:
                problems["unreadable, truncated or malformed files"].append(
                    f"wrong feature dim in {' + '.join(paths)}: {dim}, expected {stream.dim}")
    return n_read


def check(name, feat_root, anno_dir=None, out=None, layout=None, video_feats=None,
          text_feats=None, progress=True):
    """Report the layout, then per split and stream whether the feature root is complete, then
    read every annotation line and every feature file as training would (a progress bar on
    stderr) and list the problems by class (CHECK_CLASSES). Returns True if there are none.
    layout / video_feats / text_feats as in dataset_spec; out defaults to stdout."""
    out = out or sys.stdout              # looked up at call time (pytest's capture replaces it)
    anno_dir = anno_dir or feat_root
    print(f"{name}: feature root {os.path.abspath(feat_root)}, annotations in "
          f"{os.path.abspath(anno_dir)}", file=out)
    try:
        spec = dataset_spec(name, feat_root, layout, video_feats, text_feats)
    except FeatureError as err:          # both layouts at once
        print(f"  layout: {err}", file=out)
        print(f"incomplete: {README_HINT}", file=out)
        return False
    print(f"  {layout_message(spec, feat_root)}", file=out)
    for kind, streams in (("video", spec.video_streams), ("text", spec.text_streams)):
        listing = ", ".join(f"{s.name} {s.dirname}/ ({s.dim})" for s in streams)
        print(f"  {kind} streams: {listing}", file=out)
    for stream in spec.video_streams + spec.text_streams:     # what is there, before any split
        directory = os.path.join(feat_root, stream.dirname)
        state = (f"{len(os.listdir(directory))} files" if os.path.isdir(directory)
                 else "MISSING directory")
        print(f"  {stream.dirname + '/':31s} {state}", file=out)
    problems = {kind: [] for kind in CHECK_CLASSES}
    jobs = {}                            # every feature file group to read, once across splits
    for split in spec.splits:
        try:
            rows, where, path = _read_split(spec, split, anno_dir)
        except FeatureError as err:
            print(f"  {split:5s} annotations: not read (see below)", file=out)
            missing = any(not os.path.isfile(p) for p in _annotation_files(spec, split, anno_dir))
            problems["missing files" if missing else
                     "unreadable, truncated or malformed files"].append(str(err))
            continue
        bad = annotation_problems(spec, rows, where, split not in spec.unlabelled_splits)
        problems["bad annotations"] += bad
        print(f"  {split:5s} annotations: {len(rows)} queries"
              + (f", {len(bad)} with problems" if bad else ""), file=out)
        for stream, directory, n_expected, missing, exists in find_missing(spec, feat_root, rows):
            found = n_expected - len(missing)
            if not exists:
                status = f"MISSING directory {directory}"
                problems["missing files"].append(f"feature directory not found: {directory} "
                                                 f"({n_expected} files for {split})")
            elif missing:
                status = f"INCOMPLETE, first missing: {missing[0]}"
                problems["missing files"].append(f"{len(missing)} of {n_expected} {split} files "
                                                 f"missing from {directory}, first: {missing[0]}")
            else:
                status = "ok"
            print(f"  {split:5s} {stream.dirname:30s} {found:6d}/{n_expected:<6d} {status}",
                  file=out)
            if exists:
                is_text = stream in spec.text_streams
                for key in dict.fromkeys(str(r["qid"] if is_text else r["vid"]) for r in rows):
                    jobs[(stream.dirname, key)] = (stream, key)
    n_read = _check_feature_files(spec, feat_root, jobs, problems, progress)
    print(f"  read and checked {n_read} feature files", file=out)
    for kind in CHECK_CLASSES:
        if problems[kind]:
            print(f"  {kind} ({len(problems[kind])}):", file=out)
            for line in problems[kind][:20]:
                print(f"    {line}", file=out)
            if len(problems[kind]) > 20:
                print(f"    ... and {len(problems[kind]) - 20} more", file=out)
    if name == "synthetic":
        wants_blip = any(s.name == "blip" for s in spec.video_streams + spec.text_streams)
        blip = " --blip" if wants_blip else ""
        hint = f"generate it with: python data.py synthetic --out {feat_root}{blip}"
    else:
        hint = README_HINT
    if not any(problems.values()):
        print("complete: every annotation line and feature file read, no problem found", file=out)
        return True
    verdict = "incomplete" if problems["missing files"] else "unusable"
    print(f"{verdict} ({spec.layout} layout): {hint}", file=out)
    return False


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="read and validate every annotation line and feature file "
                                     "(exit 0 if all is well, 1 if not)")
    p.add_argument("--data", required=True, choices=["qvh", "charades", "tvsum", "synthetic"])
    p.add_argument("--feat-root", default=None, help="default: features/<data>")
    p.add_argument("--anno-dir", default=None, help="default: the feature root")
    p.add_argument("--layout", default=None, choices=LAYOUTS,
                   help="which release's folder names (default: detected from the feature root)")
    p.add_argument("--video-feats", default=None,
                   help="comma-separated video streams, e.g. slowfast,clip,blip (default: the "
                        "official ones: slowfast,clip; TVSum i3d)")
    p.add_argument("--text-feats", default=None,
                   help="comma-separated text streams, e.g. clip,blip (default: clip)")
    p = sub.add_parser("synthetic", help="write the synthetic benchmark")
    p.add_argument("--out", default=os.path.join("features", "synthetic"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blip", action="store_true", help="also write the BLIP-2 stand-in streams")
    p.add_argument("--qvh-sized", action="store_true",
                   help="QVHighlights' sizes and dims instead (7,218 train / 1,550 val queries, "
                        "SlowFast 2304, CLIP 512, text 512; ~3.5 GB): the speed benchmark's set, "
                        "read with --data qvh --feat-root OUT")
    p = sub.add_parser("synthetic-pretrain",
                       help=f"write the synthetic pretraining corpus ({SYNTHETIC_PRETRAIN_FILE})")
    p.add_argument("--out", default=os.path.join("features", "synthetic"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-videos", type=int, default=100, help="15 caption lines per video")
    p.add_argument("--blip", action="store_true", help="also write the BLIP-2 stand-in streams")
    args = parser.parse_args(argv)
    if args.command == "check":
        feat_root = args.feat_root or os.path.join("features", args.data)
        return 0 if check(args.data, feat_root, args.anno_dir, layout=args.layout,
                          video_feats=args.video_feats, text_feats=args.text_feats) else 1
    t0 = time.time()
    if args.command == "synthetic":
        sized = QVH_SIZED if args.qvh_sized else {}
        make_synthetic(args.out, seed=args.seed, progress=True, blip=args.blip, **sized)
        print(f"synthetic benchmark written to {args.out} in {time.time() - t0:.1f} s")
    else:
        path = make_synthetic_pretrain(args.out, seed=args.seed, n_videos=args.n_videos,
                                       blip=args.blip, progress=True)
        print(f"synthetic pretraining corpus written to {path} in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FeatureError, ValueError) as err:
        sys.exit(f"error: {err}")
