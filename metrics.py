"""Evaluation metrics for moment retrieval (MR) and highlight detection (HD), numpy only.

Three benchmarks, three official scripts, re-implemented here in our own words so that a learner
can read what each number means, and so that the numbers are exactly the ones the papers print.

QVHighlights (`evaluate_qvh`), the official `standalone_eval/eval.py` + `utils.py` of
jayleicn/moment_detr (copied unchanged by QD-DETR, TR-DETR and TaskWeave):
  * MR R1@t      "Recall at 1": is the FIRST predicted window, as listed (no re-sort by score), a hit?
                 It is compared with the ground-truth (GT) window that overlaps it most; hit if its
                 IoU >= t. t = 0.5, 0.55, ..., 0.95; reported as % of queries.
  * MR mAP@t     each query is treated as its own small detection problem: its (at most 10) predicted
                 windows, sorted by score, are greedily matched to its GT windows (one GT per
                 prediction); average precision with the VOC-2011 interpolation; then the mean over
                 queries. "average" is the mean over the 10 thresholds (the headline "mAP").
  * buckets      the same two metrics on subsets of GT windows by length: short (0, 10] s,
                 middle (10, 30] s, long (30, 150] s, and full (everything).
  * HD mAP       each clip of the video gets a predicted saliency score; each of the 3 annotators
                 marks clips as highlights at a minimum score (Fair >= 2, Good >= 3, VeryGood >= 4);
                 average precision of the ranking by predicted score, per (query, annotator), as
                 computed by scikit-learn's precision_recall_curve (tied scores form ONE point).
  * HD HIT@1     is the single best-scored clip a highlight for at least one annotator?
  Output: a dict with "brief" first, then the blocks sorted by name, 2-decimal percentages, the
  same keys and key order as the official JSON (104 numbers for a full submission).

Charades-STA (`evaluate_charades`), the standalone eval of VideoLights (dpaul06/VideoLights) and
FlashVTG (Zhuo-Cao/FlashVTG), which is the QVHighlights script plus: R1 at 14 thresholds
0.30..0.95, "MR-mIoU" (mean IoU of the top-1 window), saliency ignored (Charades has none).

TVSum (`evaluate_tvsum`), UMT's top-5 mAP (TencentARC/UMT datasets/tvsum.py, copied into the
evaluation loop of QD-DETR, TR-DETR, TaskWeave, VideoLights, FlashVTG): for each of the 20
annotators, binarise the clip scores (above the median = highlight), rank clips by predicted
saliency, keep the top 5 and compute a trapezoid AP over those 5; mean over annotators and videos.

Exactness. The official numbers are rounded to 2 (QVH, Charades) or 5 (TVSum) decimals, and we
reproduce them digit for digit. Besides getting the rules right (which list order counts, ties,
thresholds), we keep the floating point operations in the same order as the official code where
the last bits could matter: same IoU formulas, same argsort of IoUs (it decides which of two
equally overlapping GT windows a prediction takes), and sums of the same length (numpy sums 8 or
more numbers pairwise, so the number of terms changes the last bit; see `_sum_rows_like_numpy`).

Where we deliberately differ from the official scripts (never in a number they do produce):
  * bad input is a one-line MetricsInputError naming the file and line (JSON) or the qid (and,
    from the command line, the file), where the official asserts or crashes: qid sets that
    differ (we list a few), a query without predicted windows, an unlabelled ground truth, a
    relevant clip id beyond duration / 2, clip ids and annotator rows that do not pair up,
    a duration that is not a number;
  * and where the official silently scores nonsense: an inverted window (start > end) among the
    10 scored predicted windows or in the ground truth (the official's IoU with it is 0, or 0/0
    when its negative length cancels the other window's, and that NaN counts as a hit at every
    threshold: pred [20, 10] against GT [0, 10] gets MR mAP 100, measured with the official
    compute_mr_ap); a negative relevant clip id (numpy would mark a clip counted from the end);
    a TVSum prediction with fewer scores than the video has shots (only the clips given are
    ranked: 3 scores for the 74-shot val video sTEELN-vY30 score 0.71-0.76 whatever they are);
  * the official's length tolerances stay: a QVHighlights saliency list longer or shorter than
    int(duration / 2) is cut or zero-padded (13 of the 1,550 lines of TR-DETR's released val
    predictions are one clip short), a TVSum list longer than the video is cut;
  * a QVHighlights length bucket without any query gives zeros (the official crashes; it never
    happens on the real splits);
  * TVSum ties in the predicted saliency are ranked in clip order (see `evaluate_tvsum`).

Speed. The official scripts loop over queries in Python and use multiprocessing: about 11 s of
CPU time (6-16 s wall on a shared 2-core machine) for the QVHighlights val split. Here every metric
is computed for all queries at once on padded arrays: about 0.15 s of work, 0.4 s of CPU time for
the whole CLI, most of it starting Python and numpy and reading JSON.

CLI (same flags as the official script, plus --dataset; prints the "brief" block as JSON):
    python metrics.py --submission_path P --gt_path G [--save_path S] [--dataset qvh|charades|tvsum]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

# Thresholds as the official scripts build them: np.linspace, then formatted with 2 decimals and
# parsed back, so that 0.7 is exactly the float 0.7 and the JSON keys read "0.5", "0.55", ...
MR_MAP_THRESHOLDS = tuple(float(f"{t:.2f}") for t in np.linspace(0.5, 0.95, 10))
QVH_R1_THRESHOLDS = MR_MAP_THRESHOLDS
CHARADES_R1_THRESHOLDS = tuple(float(f"{t:.2f}") for t in np.linspace(0.3, 0.95, 14))
MAX_PRED_WINDOWS = 10  # mAP looks at the first 10 predicted windows as listed, ignores the rest

# GT window length buckets (name, low, high): a window of length l belongs if low < l <= high.
# "full" = (0, 150) is special-cased by the official code: nothing is filtered (longer windows too).
LENGTH_BUCKETS = (("short", 0, 10), ("middle", 10, 30), ("long", 30, 150), ("full", 0, 150))

# Highlight levels: a clip is a highlight for an annotator if its score (0..4) is >= the minimum.
HD_LEVELS = (("Fair", 2), ("Good", 3), ("VeryGood", 4))
QVH_CLIP_LEN = 2  # seconds; the GT saliency matrix has int(duration / 2) rows

TVSUM_TOP_K = 5


class MetricsInputError(ValueError):
    """A submission or ground-truth file is malformed or does not match; the message is one line.
    `side` is "submission" or "ground truth" when the problem lies in that input alone (the
    command line then puts its file name in front), None otherwise."""

    def __init__(self, message, side=None):
        super().__init__(message)
        self.side = side


def _line_error(side, qid, problem) -> MetricsInputError:
    return MetricsInputError(f"{side} qid {qid!r}: {problem}", side)


# ----------------------------------------------------------------------------------------------
# Reading and writing files
# ----------------------------------------------------------------------------------------------

def read_jsonl(path) -> list[dict]:
    """Read one JSON object per line. Blank lines are skipped (files often end with a newline).

    Errors name the file and the 1-based line number, e.g. `preds.jsonl:17: malformed JSON (...)`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise MetricsInputError(
                    f"{path}:{line_no}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise MetricsInputError(
                    f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def write_text_atomic(path, text: str) -> None:
    # Write next to the target (same file system, so os.replace is atomic), force the bytes to
    # disk, then swap: a reader never sees a half-written file, even if we are killed mid-way.
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):
            # mkstemp makes the file private (0600); give it the mode open() would (0666 less the
            # umask), so results stay readable by whoever may read the other files of the run.
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def write_jsonl_atomic(path, rows) -> None:
    """Write an iterable of dicts, one JSON object per line, atomically."""
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def write_json_atomic(path, obj, indent=4) -> None:
    """Write one JSON document atomically. Like the official eval.py, no trailing newline, so a
    metrics file we write is byte-identical to the official one."""
    write_text_atomic(path, json.dumps(obj, indent=indent))


# ----------------------------------------------------------------------------------------------
# Small numeric helpers
# ----------------------------------------------------------------------------------------------

def _percent(x) -> float:
    """The official formatting: x100, printed with 2 decimals, parsed back to a float."""
    return float(f"{100 * x:.2f}")


def _sum_rows_like_numpy(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """sum(values[r, :counts[r]]) for every row r, bit-identical to np.sum on that slice.

    np.sum does not add left to right: from 8 terms on it keeps 8 partial sums and adds them
    pairwise, so summing a zero-padded row of another length can differ in the last bit from the
    official per-query np.sum. Rows with the same count are summed together along the last axis,
    which numpy does with the same per-row algorithm as a 1-D np.sum (checked in the tests).
    """
    sums = np.zeros(values.shape[0])
    for count in np.unique(counts):
        if count == 0:
            continue
        rows = np.nonzero(counts == count)[0]
        sums[rows] = np.ascontiguousarray(values[rows, :count]).sum(axis=-1)
    return sums


def _compact_left(values: np.ndarray, keep: np.ndarray):
    """Move the kept entries of each row of a 2-D array to the front, in their original order.
    Returns (compacted values, zero-padded; number kept per row)."""
    rows, cols = np.nonzero(keep)
    dest = np.cumsum(keep, axis=1) - 1                                   # target column if kept
    compacted = np.zeros_like(values)
    compacted[rows, dest[rows, cols]] = values[rows, cols]
    return compacted, keep.sum(axis=1)


# ----------------------------------------------------------------------------------------------
# Input checks and packing ragged JSON lists into padded arrays
# ----------------------------------------------------------------------------------------------

def _index_by_qid(rows, what: str) -> dict:
    by_qid = {}
    for line_no, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or "qid" not in row:
            raise MetricsInputError(f"{what} row {line_no} has no 'qid'", what)
        qid = row["qid"]
        if qid in by_qid:
            raise MetricsInputError(f"{what} has qid {qid!r} twice (rows {by_qid[qid][0]} and {line_no})",
                                    what)
        by_qid[qid] = (line_no, row)
    return {qid: row for qid, (_, row) in by_qid.items()}


def _match_qids(submission, ground_truth) -> list[dict]:
    """Check that both sides hold the same set of qids (as the official assert does, but saying
    which ones differ); return the GT rows in SUBMISSION order, the order every official mean uses."""
    if not submission:
        raise MetricsInputError("the submission is empty")
    _index_by_qid(submission, "submission")  # duplicates check
    gt_by_qid = _index_by_qid(ground_truth, "ground truth")
    sub_qids = {row["qid"] for row in submission}
    if sub_qids != set(gt_by_qid):
        missing = [q for q in gt_by_qid if q not in sub_qids]
        extra = [row["qid"] for row in submission if row["qid"] not in gt_by_qid]
        parts = [f"qids differ: submission has {len(sub_qids)}, ground truth has {len(gt_by_qid)}"]
        if missing:
            examples = ", ".join(map(repr, missing[:5]))
            parts.append(f"{len(missing)} missing from the submission (e.g. {examples})")
        if extra:
            examples = ", ".join(map(repr, extra[:5]))
            parts.append(f"{len(extra)} not in the ground truth (e.g. {examples})")
        raise MetricsInputError("; ".join(parts))
    return [gt_by_qid[row["qid"]] for row in submission]


def _stack_lists(rows, get, width, side, problem):
    """Concatenate one list of numbers (width None) or of [width] number rows per JSON row.

    -> (flat float array (N,) or (N, width), length of each row's list (len(rows),)).
    get(row) returns the row's list. Every list must be non-empty and hold finite numbers; the
    first row that does not gets `MetricsInputError(f"{side} qid ...: {problem}")`. One np.array
    call for everything is much faster than one per row; rows are checked one by one only when
    that fails, to name the culprit.
    """
    shape_ok = (lambda a, n: a.shape == (n,)) if width is None else (lambda a, n: a.shape == (n, width))
    try:
        lists = [get(row) for row in rows]
        lengths = np.array([len(x) for x in lists], dtype=int)
        flat = np.array([v for x in lists for v in x], dtype=float)
        if shape_ok(flat, lengths.sum()) and (lengths > 0).all() and np.isfinite(flat).all():
            return flat, lengths
    except (KeyError, TypeError, ValueError, IndexError):
        pass
    for row in rows:
        try:
            x = np.array(get(row), dtype=float)
            if len(x) > 0 and shape_ok(x, len(x)) and np.isfinite(x).all():
                continue
        except (KeyError, TypeError, ValueError, IndexError):
            pass
        raise _line_error(side, row.get("qid"), problem)
    raise MetricsInputError(f"{side}: rows do not share one layout: {problem}", side)


def _pad_ragged(flat, lengths, fill):
    """(N, ...) concatenated rows -> (len(lengths), max length, ...) padded with `fill`."""
    padded = np.full((len(lengths), lengths.max()) + flat.shape[1:], fill, dtype=float)
    padded[np.arange(lengths.max())[None, :] < lengths[:, None]] = flat
    return padded


def _refuse_inverted(flat, lengths, rows, side, key):
    """Name the first window with start > end. flat (N, >=2) the windows of all rows in order,
    lengths (len(rows),) how many each row has (the first ones of row[key] in the file)."""
    inverted = flat[:, 0] > flat[:, 1]                                  # (N,)
    if inverted.any():
        k = int(np.argmax(inverted))
        q = int(np.searchsorted(np.cumsum(lengths), k, side="right"))  # the row holding window k
        slot = k - int(lengths[:q].sum())
        raise _line_error(side, rows[q]["qid"], f"{key}[{slot}] = {rows[q][key][slot]} is "
                                                f"inverted (start > end)")


def _pack_predicted_windows(submission):
    """-> top1 (Q, 2) the first listed window; windows (Q, 10, 3) = the first 10 rows as listed,
    [start, end, score], NaN-padded; n_pred (Q,)."""
    def first_rows(row):
        return [w[:3] for w in row["pred_relevant_windows"][:MAX_PRED_WINDOWS]]

    flat, n_pred = _stack_lists(submission, first_rows, 3, "submission", "pred_relevant_windows "
                                "must be a non-empty list of [start, end, score] rows")
    # Only the 10 scored rows: the official ignores the rest, whatever they hold.
    _refuse_inverted(flat, n_pred, submission, "submission", "pred_relevant_windows")
    windows = np.full((len(submission), MAX_PRED_WINDOWS, 3), np.nan)   # (Q, P, 3)
    windows[:, :n_pred.max()] = _pad_ragged(flat, n_pred, np.nan)
    # R1 uses the first row as listed, before any sorting by score.
    return windows[:, 0, :2].copy(), windows, n_pred


def _pack_gt_windows(gt_rows):
    """-> flat (N, 2) GT windows of all queries, and the query index (N,) of each."""
    flat, counts = _stack_lists(
        gt_rows, lambda row: [w[:2] for w in row["relevant_windows"]], 2, "ground truth",
        "relevant_windows must be a non-empty list of [start, end] (an unlabelled "
        "split, e.g. the QVHighlights test release, cannot be scored)")
    _refuse_inverted(flat, counts, gt_rows, "ground truth", "relevant_windows")
    return flat, np.repeat(np.arange(len(gt_rows)), counts)


def _pad_bucket(gt_flat, gt_owner, keep, n_queries):
    """Gather the kept GT windows into a padded array for the queries that keep at least one.
    -> queries (Qb,) indices in submission order, gts (Qb, G, 2), n_gt (Qb,)."""
    owner = gt_owner[keep]
    counts = np.bincount(owner, minlength=n_queries)
    queries = np.nonzero(counts)[0]
    n_gt = counts[queries]
    if len(queries) == 0:
        return queries, np.zeros((0, 1, 2)), n_gt
    row_of_query = np.cumsum(counts > 0) - 1                       # query index -> bucket row
    first_of_query = np.cumsum(counts) - counts                    # offset of each query's windows
    slot = np.arange(len(owner)) - first_of_query[owner]           # 0..n_gt-1 within the query
    gts = np.full((len(queries), n_gt.max(), 2), np.nan)           # (Qb, G, 2)
    gts[row_of_query[owner], slot] = gt_flat[keep]
    return queries, gts, n_gt


# ----------------------------------------------------------------------------------------------
# Moment retrieval: R1 and mAP
# ----------------------------------------------------------------------------------------------

def _cross_iou(pred, gts):
    """True temporal IoU between each prediction and each GT of the same query.
    pred (Qb, P, 2), gts (Qb, G, 2) -> (Qb, P, G). Same operations, in the same order, as the
    official cross IoU: intersection clipped at 0, union = len_pred + len_gt - intersection."""
    left = np.maximum(pred[:, :, None, 0], gts[:, None, :, 0])    # (Qb, P, G)
    right = np.minimum(pred[:, :, None, 1], gts[:, None, :, 1])
    inter = np.clip(right - left, 0, None)
    union = (pred[:, :, 1] - pred[:, :, 0])[:, :, None] + (gts[:, :, 1] - gts[:, :, 0])[:, None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / union


def _top1_iou(top1, gts, n_gt):
    """IoU of the first listed prediction with its best-overlapping GT window. -> (Qb,)

    The GT is picked by the true IoU (first one on ties: np.argmax), but the IoU that is then
    reported divides by the span from the earliest start to the latest end ("not the correct
    union", as the official code admits): equal to the IoU when the two windows overlap, and the
    windows that do not overlap have intersection 0 either way, so R1 and mIoU are unaffected."""
    iou = _cross_iou(top1[:, None, :], gts)[:, 0, :]                 # (Qb, G)
    iou[np.arange(gts.shape[1])[None, :] >= n_gt[:, None]] = -np.inf  # padding never wins
    best = np.take_along_axis(gts, iou.argmax(axis=1)[:, None, None], axis=1)[:, 0]  # (Qb, 2)
    inter = np.maximum(0, np.minimum(top1[:, 1], best[:, 1]) - np.maximum(top1[:, 0], best[:, 0]))
    span = np.maximum(top1[:, 1], best[:, 1]) - np.minimum(top1[:, 0], best[:, 0])
    return np.divide(inter, span, out=np.zeros_like(inter), where=span != 0)


def _mr_average_precision(pred, n_pred, gts, n_gt, thresholds):
    """Per-query average precision at each IoU threshold. -> (Qb, T)

    pred (Qb, P, 3): the first 10 listed windows, already sorted by descending score (stable);
    gts (Qb, G, 2): the query's GT windows (only those of the bucket), padded.

    Matching (the ActivityNet/MMAction2 detection rule the official utils.py uses), per threshold:
    walk the predictions from the best score down; each one looks at the GT windows from its
    highest IoU to its lowest; it stops (false positive) at the first GT below the threshold,
    skips GTs already taken at this threshold, and takes the first free one (true positive).
    Only the walk over predictions is sequential (a GT taken by one prediction is not free for
    the next), so we loop over the <= 10 prediction slots and do all queries and all
    thresholds at once.
    """
    n_queries, n_slots, _ = pred.shape
    n_gt_slots = gts.shape[1]
    thresholds = np.asarray(thresholds)
    n_thr = len(thresholds)
    pred_valid = np.arange(n_slots)[None, :] < n_pred[:, None]          # (Qb, P)
    gt_pad = np.arange(n_gt_slots)[None, :] >= n_gt[:, None]            # (Qb, G)

    iou = _cross_iou(pred[:, :, :2], gts)                               # (Qb, P, G)
    # The order in which a prediction visits the GTs: the official reverses np.argsort of the
    # IoUs. Ties (two GTs with the same IoU) are common with integer windows, and which tied GT
    # is taken can change later matches, so we call np.argsort on exactly the same rows (same
    # length, same values) as the official; queries with the same number of GTs are sorted
    # together (argsort along an axis sorts each row as a 1-D argsort would).
    # visit_rank[q, p, g] = position of GT g in prediction p's visiting order (0 = first).
    visit_rank = np.broadcast_to(np.arange(n_gt_slots), iou.shape).copy()  # (Qb, P, G)
    for count in np.unique(n_gt):
        rows = np.nonzero(n_gt == count)[0]
        real = np.ascontiguousarray(iou[rows][:, :, :count])
        visit = np.argsort(real, axis=-1)[..., ::-1]                     # GT indices, first visited first
        ranks = np.empty_like(visit)
        np.put_along_axis(ranks, visit, np.arange(count), axis=-1)      # inverse permutation
        visit_rank[rows, :, :count] = ranks
    # A GT is reachable at threshold t if its IoU is "not below" t (a NaN IoU, from two
    # zero-length windows, is not below anything in the official loop either). Reachable GTs
    # form a prefix of the visiting order, so "the first free GT in visiting order" is the free
    # reachable GT of smallest rank.
    reachable = ~(iou[:, :, None, :] < thresholds[None, None, :, None])  # (Qb, P, T, G)
    reachable &= ~gt_pad[:, None, None, :]

    taken = np.zeros((n_queries, n_thr, n_gt_slots), dtype=bool)         # (Qb, T, G) GT locked
    true_pos = np.zeros((n_queries, n_thr, n_slots), dtype=bool)         # (Qb, T, P)
    gt_index = np.arange(n_gt_slots)
    for p in range(n_slots):
        candidate = reachable[:, p] & ~taken                             # (Qb, T, G)
        rank = np.where(candidate, visit_rank[:, p, None, :], n_gt_slots)
        first = rank.argmin(axis=-1)                                     # (Qb, T) GT index
        hit = candidate.any(axis=-1) & pred_valid[:, p, None]            # (Qb, T)
        taken |= (gt_index == first[:, :, None]) & hit[:, :, None]
        true_pos[:, :, p] = hit
    false_pos = pred_valid[:, None, :] & ~true_pos                       # (Qb, T, P)

    # Precision/recall after each prediction. Padding slots repeat the last point, which changes
    # neither the interpolated precision nor the set of recall steps below.
    tp_cum = np.cumsum(true_pos, axis=-1).astype(float)
    fp_cum = np.cumsum(false_pos, axis=-1).astype(float)
    recall = tp_cum / n_gt[:, None, None].astype(float)
    precision = tp_cum / (tp_cum + fp_cum)

    # VOC-2011 interpolated AP: recall padded with 0 in front and 1 at the end, precision with
    # 0 at both ends; each precision replaced by the max of itself and everything after it;
    # AP = sum over the points where recall changes of (recall step) x (interpolated precision).
    zeros = np.zeros((n_queries, n_thr, 1))
    m_recall = np.concatenate([zeros, recall, zeros + 1], axis=-1)      # (Qb, T, P + 2)
    m_precision = np.concatenate([zeros, precision, zeros], axis=-1)
    m_precision = np.maximum.accumulate(m_precision[..., ::-1], axis=-1)[..., ::-1]
    step = m_recall[..., 1:] != m_recall[..., :-1]                       # (Qb, T, P + 1)
    terms = (m_recall[..., 1:] - m_recall[..., :-1]) * m_precision[..., 1:]
    terms, n_terms = _compact_left(terms.reshape(n_queries * n_thr, -1),
                                   step.reshape(n_queries * n_thr, -1))
    return _sum_rows_like_numpy(terms, n_terms).reshape(n_queries, n_thr)  # (Qb, T)


def _mr_average_precision_grouped(pred, n_pred, gts, n_gt, thresholds):
    """`_mr_average_precision` on groups of queries with similar GT counts (1, 2, 3-4, 5-8, ...),
    so that the few queries with 20+ GT windows do not make every query pay for 20+ slots."""
    ap = np.zeros((len(gts), len(thresholds)))                           # (Qb, T)
    ceiling = 2 ** np.ceil(np.log2(n_gt)).astype(int)
    for size in np.unique(ceiling):
        rows = np.nonzero(ceiling == size)[0]
        width = min(size, gts.shape[1])
        ap[rows] = _mr_average_precision(pred[rows], n_pred[rows], gts[rows, :width], n_gt[rows],
                                         thresholds)
    return ap


def _moment_retrieval(submission, gt_rows, r1_thresholds, with_miou, empty_bucket, verbose):
    """R1 and mAP for each length bucket. -> {bucket name: {...}} in bucket order."""
    top1, windows, n_pred = _pack_predicted_windows(submission)
    # mAP sorts the first 10 listed rows by descending score; Python's sort, like kind="stable",
    # keeps file order among equal scores. Padding (NaN score) is moved behind the real rows.
    sort_key = np.where(np.arange(MAX_PRED_WINDOWS)[None, :] < n_pred[:, None], -windows[:, :, 2], np.inf)
    by_score = np.argsort(sort_key, axis=1, kind="stable")
    windows = np.take_along_axis(windows, by_score[:, :, None], axis=1)   # (Q, P, 3)
    gt_flat, gt_owner = _pack_gt_windows(gt_rows)
    lengths = gt_flat[:, 1] - gt_flat[:, 0]

    results = {}
    for name, low, high in LENGTH_BUCKETS:
        if (low, high) == (0, 150):
            keep = np.ones(len(gt_flat), dtype=bool)
        else:
            keep = (low < lengths) & (lengths <= high)
        queries, gts, n_gt = _pad_bucket(gt_flat, gt_owner, keep, len(submission))
        if verbose:
            print(f"{name}: [{low}, {high}], {len(queries)}/{len(submission)}="
                  f"{100 * len(queries) / len(submission):.2f} examples.", file=sys.stderr)
        if len(queries) == 0:
            results[name] = empty_bucket()
            continue
        ap = _mr_average_precision_grouped(windows[queries], n_pred[queries], gts, n_gt, MR_MAP_THRESHOLDS)
        ap_per_threshold = ap.mean(axis=0)                                # mean over queries
        mean_ap = {str(t): _percent(v) for t, v in zip(MR_MAP_THRESHOLDS, ap_per_threshold)}
        mean_ap["average"] = _percent(np.mean(ap_per_threshold))
        iou = _top1_iou(top1[queries], gts, n_gt)
        r1 = {str(t): _percent(np.mean(iou >= t)) for t in r1_thresholds}
        block = {"MR-mIoU": _percent(np.mean(iou))} if with_miou else {}
        block.update({"MR-mAP": mean_ap, "MR-R1": r1})
        results[name] = block
    return results


def _qvh_empty_bucket():
    # The official script crashes on a bucket with no query (it never happens on QVHighlights);
    # we report zeros with the usual keys instead.
    zeros = {str(t): 0.0 for t in MR_MAP_THRESHOLDS}
    return {"MR-mAP": {**zeros, "average": 0.0}, "MR-R1": dict(zeros)}


def _charades_empty_bucket():
    # What the VideoLights/FlashVTG script writes for an empty bucket (no query with a window of
    # that length): one dict of zeros keyed by np.linspace(0.5, 0.95, 19) (so "0.525", ...) plus
    # "average", under both MR-mAP and MR-R1, and no MR-mIoU. Kept as is, for byte parity.
    zeros = {str(float(t)): 0.0 for t in np.linspace(0.5, 0.95, 19)}
    zeros["average"] = 0.0
    return {"MR-mAP": dict(zeros), "MR-R1": dict(zeros)}


# ----------------------------------------------------------------------------------------------
# Highlight detection: HIT@1 and mAP (QVHighlights)
# ----------------------------------------------------------------------------------------------

def _qvh_clip_counts(gt_rows):
    """int(duration / 2) per GT line, the official number of clips of the GT saliency matrix. -> (Q,)"""
    counts = []
    for row in gt_rows:
        try:
            counts.append(int(row["duration"] / QVH_CLIP_LEN))
        except (KeyError, TypeError, ValueError, OverflowError):
            counts.append(0)
        if counts[-1] <= 0:
            raise _line_error("ground truth", row["qid"], f"duration must be a number of seconds "
                              f">= {QVH_CLIP_LEN} (one clip at least), got {row.get('duration')!r}")
    return np.array(counts)


def _pack_highlight_inputs(submission, gt_rows):
    """-> scores (Q, Lp) predicted saliency, -inf padded; n_scores (Q,);
    gt (Q, L, 3) annotator scores 0..4 at every clip (0 outside relevant_clip_ids); n_clips (Q,)."""
    flat, n_scores = _stack_lists(submission, lambda row: row["pred_saliency_scores"], None,
                                  "submission", "pred_saliency_scores must be a non-empty list of numbers")
    scores = _pad_ragged(flat, n_scores, -np.inf)                         # (Q, Lp)

    # The GT matrix has int(duration / 2) rows whatever the number of clips the model saw.
    clip_ids, n_ids = _stack_lists(gt_rows, lambda row: row["relevant_clip_ids"], None, "ground truth",
                                   "relevant_clip_ids must be a non-empty list of clip indices")
    triples, n_triples = _stack_lists(gt_rows, lambda row: row["saliency_scores"], 3, "ground truth",
                                      "saliency_scores must be a non-empty list of [a, b, c] rows "
                                      "(the 3 annotators' scores of each relevant clip)")
    n_clips = _qvh_clip_counts(gt_rows)
    owner = np.repeat(np.arange(len(gt_rows)), n_ids)
    bad_id = (clip_ids < 0) | (clip_ids >= n_clips[owner]) | (clip_ids != np.round(clip_ids))
    bad = n_ids != n_triples
    bad[owner[bad_id]] = True
    if bad.any():
        q = int(np.argmax(bad))
        if n_ids[q] != n_triples[q]:
            problem = (f"relevant_clip_ids has {n_ids[q]} ids but saliency_scores has {n_triples[q]} "
                       f"rows (one [a, b, c] row per relevant clip)")
        else:
            wrong = clip_ids[bad_id & (owner == q)][0]
            problem = (f"relevant_clip_ids holds {wrong:g}, which is not a clip of this video "
                       f"(0..{n_clips[q] - 1}: int(duration / {QVH_CLIP_LEN}) clips)")
        raise _line_error("ground truth", gt_rows[q]["qid"], problem)
    gt = np.zeros((len(gt_rows), n_clips.max(), 3))                       # (Q, L, 3)
    gt[owner, clip_ids.astype(int)] = triples
    return scores, n_scores, gt, n_clips


def _highlight_average_precision(y_score, y_true, n_clips):
    """Average precision of each label column, exactly as the official `get_ap` computes it
    with scikit-learn. -> (Q, C)

    y_score (Q, L) predicted saliency (already cut or zero-padded to the GT length), y_true
    (Q, C, L) binary labels (C label columns share one prediction), n_clips (Q,) real lengths.

    What `get_ap` does, spelled out: a column with no positive scores 0, one with only
    positives scores 1. Otherwise precision_recall_curve gives one point per DISTINCT score
    (tied clips enter together); walking from the highest score down, the point after score
    group g has precision = positives so far / clips so far. Each precision is replaced by the
    best precision at any lower score (= at any higher recall), and AP is the plain mean of
    those interpolated precisions over the groups that contain at least one positive (the
    points where recall changes). With tied scores this is not the textbook per-positive AP.
    (The official also casts recall to float32 before finding the changes; recall = k / n_pos
    with small integers stays distinct in float32, so counting positives is the same test.)
    """
    n_queries, n_cols, n_max = y_true.shape
    valid = np.arange(n_max)[None, :] < n_clips[:, None]                 # (Q, L)
    key = np.where(valid, y_score, -np.inf)
    order = np.argsort(-key, axis=1, kind="stable")                      # descending score
    sorted_score = np.take_along_axis(key, order, axis=1)                # (Q, L)
    sorted_true = np.take_along_axis(y_true, order[:, None, :], axis=2)  # (Q, C, L)
    # The last clip of each group of equal scores (sorting keeps the real clips first, and the
    # first padding slot, -inf, always differs from a real score).
    group_end = valid.copy()
    group_end[:, :-1] &= sorted_score[:, 1:] != sorted_score[:, :-1]
    group_end = group_end[:, None, :]                                    # (Q, 1, L)

    tp = np.cumsum(sorted_true, axis=2, dtype=np.int32)                  # (Q, C, L) positives so far
    # positives at the previous group end (0 before the first group): tp only grows, so a
    # running max over group ends carries it forward.
    tp_at_end = np.maximum.accumulate(np.where(group_end, tp, 0), axis=2)
    tp_before = np.zeros_like(tp)
    tp_before[:, :, 1:] = tp_at_end[:, :, :-1]
    recall_step = group_end & (tp > tp_before)                           # (Q, C, L)
    rank = np.arange(1, n_max + 1, dtype=float)                          # clips so far
    precision = np.where(group_end, tp / rank, 0.0)                      # (Q, C, L)
    best_later = np.maximum.accumulate(precision[:, :, ::-1], axis=2)    # reversed: lowest score first

    # scikit-learn lists the points from the lowest score up, and np.mean adds them in that
    # order: keep that order (reversed), move the selected values to the front, sum like numpy.
    values, counts = _compact_left(best_later.reshape(-1, n_max),
                                   recall_step[:, :, ::-1].reshape(-1, n_max))
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (_sum_rows_like_numpy(values, counts) / counts).reshape(n_queries, n_cols)  # (Q, C)

    n_pos = np.where(valid[:, None, :], y_true, 0).sum(axis=2)           # (Q, C)
    ap[n_pos == 0] = 0.0
    ap[n_pos == n_clips[:, None]] = 1.0
    return ap


def _highlight_detection(submission, gt_rows):
    """HIT@1 and mAP at the three highlight levels. -> {"HL-min-Fair": {"HL-mAP", "HL-Hit1"}, ...}"""
    scores, n_scores, gt, n_clips = _pack_highlight_inputs(submission, gt_rows)
    n_queries, n_max = gt.shape[:2]
    # The predictions are cut to the GT length, or zero-padded up to it (official behaviour).
    width = max(n_max, scores.shape[1])
    padded = np.zeros((n_queries, width))
    real = np.arange(scores.shape[1])[None, :] < n_scores[:, None]
    padded[:, :scores.shape[1]][real] = scores[real]
    y_score = padded[:, :n_max]                                           # (Q, L)

    # HIT@1 looks at the argmax of the FULL prediction (first maximum), not the cut one; a clip
    # beyond the GT length is a miss.
    best_clip = scores.argmax(axis=1)                                     # (Q,)
    inside = best_clip < n_clips
    best_gt = gt[np.arange(n_queries), np.minimum(best_clip, n_max - 1)]  # (Q, 3)

    levels = np.array([minimum for _, minimum in HD_LEVELS])
    annotator_scores = gt.transpose(0, 2, 1)                              # (Q, 3, L)
    y_true = annotator_scores[:, None, :, :] >= levels[None, :, None, None]  # (Q, level, annotator, L)
    ap = _highlight_average_precision(y_score, y_true.reshape(n_queries, -1, n_max), n_clips)
    ap = ap.reshape(n_queries, len(HD_LEVELS), 3)                         # (Q, level, annotator)

    results = {}
    for k, (name, minimum) in enumerate(HD_LEVELS):
        hit = np.where(inside[:, None], best_gt >= minimum, False).astype(float)  # (Q, 3)
        results[f"HL-min-{name}"] = {
            "HL-mAP": _percent(np.mean(np.ascontiguousarray(ap[:, k, :]))),  # over queries x annotators
            "HL-Hit1": _percent(np.mean(np.max(hit, axis=1))),               # any annotator agrees
        }
    return results


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------

def _assemble(mr, mr_brief_keys, hd):
    """Brief block first (MR keys sorted, then HD keys), then every block sorted by name."""
    blocks, brief = {}, {}
    if mr is not None:
        blocks.update(mr)
        wanted = {}
        for key in mr_brief_keys:
            bucket, metric = key.split("-")[1], key.split("-", 2)[2]     # e.g. "full", "R1@0.5"
            if metric == "mIoU":
                wanted[key] = mr[bucket]["MR-mIoU"]
            elif metric.startswith("R1@"):
                wanted[key] = mr[bucket]["MR-R1"][metric[3:]]
            elif metric.startswith("mAP@"):
                wanted[key] = mr[bucket]["MR-mAP"][metric[4:]]
            else:
                wanted[key] = mr[bucket]["MR-mAP"]["average"]
        brief.update(sorted(wanted.items()))
    if hd is not None:
        blocks.update(hd)
        for name, values in hd.items():                                   # "HL-min-Fair-mAP", ...
            brief.update({f"{name}-{k.split('-')[1]}": v for k, v in values.items()})
    return {"brief": brief, **dict(sorted(blocks.items()))}


_QVH_BRIEF = ("MR-full-mAP", "MR-full-mAP@0.5", "MR-full-mAP@0.75", "MR-short-mAP",
              "MR-middle-mAP", "MR-long-mAP", "MR-full-R1@0.5", "MR-full-R1@0.7")
_CHARADES_BRIEF = _QVH_BRIEF + ("MR-full-mIoU", "MR-full-R1@0.3")


def evaluate_qvh(submission, ground_truth, verbose=False) -> dict:
    """The official QVHighlights evaluation (moment_detr standalone_eval/eval.py).

    submission: list of {"qid", "pred_relevant_windows": [[st, ed, score], ...] (seconds),
    "pred_saliency_scores": [one score per 2 s clip]}; ground_truth: the annotation lines.
    As in the official script, MR is scored only if the FIRST submission line has
    pred_relevant_windows, HD only if it has pred_saliency_scores (then every line must).
    verbose prints the bucket sizes to stderr.
    """
    gt_rows = _match_qids(submission, ground_truth)
    do_mr = "pred_relevant_windows" in submission[0]
    do_hd = "pred_saliency_scores" in submission[0]
    if not (do_mr or do_hd):
        raise MetricsInputError("the submission has neither pred_relevant_windows nor pred_saliency_scores")
    mr = _moment_retrieval(submission, gt_rows, QVH_R1_THRESHOLDS, with_miou=False,
                           empty_bucket=_qvh_empty_bucket, verbose=verbose) if do_mr else None
    hd = _highlight_detection(submission, gt_rows) if do_hd else None
    return _assemble(mr, _QVH_BRIEF, hd)


def evaluate_charades(submission, ground_truth, verbose=False) -> dict:
    """Charades-STA, as the standalone eval of VideoLights and FlashVTG (their
    standalone_eval/eval.py, Moment-DETR's script with R1 at np.linspace(0.3, 0.95, 14), a
    top-1 mean IoU "MR-mIoU", and the saliency predictions dropped before scoring, since
    Charades-STA has no saliency labels). The same length buckets and mAP are still computed.
    Brief: MR-full-R1@0.3/0.5/0.7, MR-full-mIoU, plus the mAP keys, sorted by name."""
    gt_rows = _match_qids(submission, ground_truth)
    if "pred_relevant_windows" not in submission[0]:
        raise MetricsInputError("the submission has no pred_relevant_windows")
    mr = _moment_retrieval(submission, gt_rows, CHARADES_R1_THRESHOLDS, with_miou=True,
                           empty_bucket=_charades_empty_bucket, verbose=verbose)
    return _assemble(mr, _CHARADES_BRIEF, None)


def _tvsum_top_k_ap(ranked_labels, top_k):
    """UMT's AP over the top-k ranked clips, for many label columns at once.
    ranked_labels (k', A) 0/1 labels of the best-ranked clips (k' <= top_k). -> (A,)

    With P positives among those k' clips, walk j = 1..k' with hits = positives so far,
    recall = hits / P, precision = hits / j, starting from recall 0 and precision 1, and add the
    trapezoid (recall_j - recall_{j-1}) x (precision_{j-1} + precision_j) / 2. No positive -> 0.
    The arithmetic is the official Python loop's, in the same order, vectorised over columns."""
    top = ranked_labels[:top_k]
    n_pos = top.sum(axis=0)                                              # (A,)
    hits = np.zeros(top.shape[1])
    ap = np.zeros(top.shape[1])
    recall, precision = np.zeros(top.shape[1]), np.ones(top.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        for j in range(len(top)):
            hits = hits + top[j]
            new_recall = hits / n_pos
            new_precision = hits / (j + 1)
            ap = ap + (new_recall - recall) * (precision + new_precision) / 2
            recall, precision = new_recall, new_precision
    return np.where(n_pos == 0, 0.0, ap)


def _tvsum_positives(labels):
    """(n_clips, A) annotator scores -> 0/1 highlight labels: score > the column's lower median."""
    median = np.sort(labels, axis=0)[(labels.shape[0] - 1) // 2]           # (A,) lower median
    return (labels > median).astype(float)


def tvsum_reference(ground_truth, draws=1000, seed=0, top_k=TVSUM_TOP_K) -> dict:
    """Two reference points for TVSum top-5 mAP, per domain (mean over its videos):

      * "random": the expected score of a random ranking (mean over `draws` random permutations
        of the clips, numpy seed `seed`). It is what a model that learned nothing scores on average.
      * "annotator_mean": the score of ranking the clips by the 20 annotators' mean score, i.e. the
        ground-truth consensus itself (ties in clip order, as evaluate_tvsum ranks them).

    Why they matter: each domain is reported on ONE val video, and the official protocol keeps the
    best of a few hundred evaluations of it, so a noisy model can score far above its typical level
    (measured on the 10 val videos: the best of 2,000 random rankings scores 0.78-0.93), even above
    the consensus ranking. See the README's TVSum section."""
    rng = np.random.default_rng(seed)
    per_domain = {"random": {}, "annotator_mean": {}}
    for gt in ground_truth:
        labels = np.asarray(gt["label"], dtype=np.float32)                  # (n_clips, 20)
        positive = _tvsum_positives(labels)
        random_ap = np.mean([_tvsum_top_k_ap(positive[rng.permutation(len(labels))], top_k)
                             for _ in range(draws)])
        consensus = evaluate_tvsum([{"qid": gt["qid"], "pred_saliency_scores":
                                     labels.mean(axis=1).tolist()}], [gt], top_k)["brief"]["mAP"]
        for name, value in (("random", random_ap), ("annotator_mean", consensus)):
            per_domain[name].setdefault(gt["domain"], []).append(float(value))
    return {name: {d: float(round(np.mean(v), 5)) for d, v in rows.items()}
            for name, rows in per_domain.items()}


def evaluate_tvsum(submission, ground_truth, top_k=TVSUM_TOP_K) -> dict:
    """TVSum top-5 mAP (UMT's definition, used by every paper in this project).

    ground_truth lines carry "label": (n_clips, 20) annotator scores 1..5 (and "domain");
    submission lines {"qid", "pred_saliency_scores"}. Per video and annotator:
      * highlight = score > the column's median, where the median of an even count is the
        LOWER middle value (torch.median), and the comparison is strict;
      * clips are ranked by predicted saliency for the first n_clips clips, as float32 (the
        official ranks a float32 tensor), descending. Ties: we keep the clip order (a stable
        sort). torch.argsort(descending=True) on CPU, which the official calls, is stable for
        up to 16 clips; for longer videos (TVSum has 49..323 clips) torch 2.x on Linux uses
        std::sort (introsort), whose order among equal scores is an artifact of that algorithm,
        of the C++ library and of the torch version. Real model scores practically never tie,
        so this only matters for artificial predictions (measured: with the mean annotator
        score as prediction, which ties a lot, the 10 val videos score the same either way;
        over all 50 videos 18 differ, 0.80889 here against 0.80757 with torch 2.13);
      * AP over the top 5 ranked clips (see `_tvsum_top_k_ap`).
    A prediction must have a score for every clip. A longer one is cut to n_clips, as the
    official cuts the batch-padded model output; a shorter one is refused, because the official
    would rank only the clips given (any 3 scores for the 74-shot val video sTEELN-vY30 score
    0.71-0.76; a random full ranking scores 0.41572 on average, see `tvsum_reference`).
    Returns {"brief": {"mAP": mean over videos x annotators, rounded to 5 decimals as the
    official}, "per_domain": {domain: mean, rounded}, "domain_average": mean of the per-domain
    means (the papers' "Avg"), "per_video": {qid: mean over the 20 annotators}}. The papers
    train and evaluate each domain separately (one val video each) and print 100 x mAP.
    """
    gt_rows = _match_qids(submission, ground_truth)
    aps = []
    for sub, gt in zip(submission, gt_rows):
        try:
            labels = np.asarray(gt["label"], dtype=np.float32)              # (n_clips, 20)
            ok = labels.ndim == 2 and labels.shape[0] > 0 and np.isfinite(labels).all()
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise _line_error("ground truth", gt["qid"], "'label' must be an (n_clips, n_annotators) "
                                                         "list of numbers")
        try:
            pred = np.asarray(sub["pred_saliency_scores"], dtype=np.float32)
            ok = pred.ndim == 1 and len(pred) > 0 and np.isfinite(pred).all()
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise _line_error("submission", sub["qid"], "pred_saliency_scores must be a non-empty "
                                                        "list of finite numbers")
        n_clips = labels.shape[0]
        if len(pred) < n_clips:
            raise _line_error("submission", sub["qid"], f"pred_saliency_scores has {len(pred)} scores "
                              f"for a video of {n_clips} shots (one score per shot; the official "
                              f"would rank only the shots given)")
        positive = _tvsum_positives(labels)                                 # (n_clips, 20)
        ranking = np.argsort(-pred[:n_clips], kind="stable")              # best clip first
        aps.append(_tvsum_top_k_ap(positive[ranking], top_k))
    aps = np.array(aps)                                                     # (videos, 20)

    result = {"brief": {"mAP": float(round(np.mean(aps), 5))}}
    domains = [gt.get("domain") for gt in gt_rows]
    if all(d is not None for d in domains):
        per_domain = {d: np.mean(aps[[i for i, x in enumerate(domains) if x == d]])
                      for d in sorted(set(domains))}
        result["per_domain"] = {d: float(round(v, 5)) for d, v in per_domain.items()}
        result["domain_average"] = float(round(np.mean(list(per_domain.values())), 5))
    result["per_video"] = {sub["qid"]: float(np.mean(ap)) for sub, ap in zip(submission, aps)}
    return result


def evaluate(dataset, submission, ground_truth, verbose=False) -> dict:
    """The official metrics of `dataset`: "qvh", "charades" or "tvsum" (anything else, like this
    repository's synthetic set, is scored as QVHighlights)."""
    if dataset == "tvsum":
        return evaluate_tvsum(submission, ground_truth)
    if dataset == "charades":
        return evaluate_charades(submission, ground_truth, verbose=verbose)
    return evaluate_qvh(submission, ground_truth, verbose=verbose)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def detect_dataset(ground_truth) -> str:
    """tvsum if the GT carries annotator "label"s; charades if it has no saliency and exactly one
    window per query; qvh otherwise."""
    if ground_truth and "label" in ground_truth[0]:
        return "tvsum"
    if ground_truth and all("saliency_scores" not in g and isinstance(g.get("relevant_windows"), list)
                            and len(g["relevant_windows"]) == 1 for g in ground_truth):
        return "charades"
    return "qvh"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Moment retrieval / highlight detection evaluation "
                                                 "(QVHighlights, Charades-STA, TVSum)")
    parser.add_argument("--submission_path", required=True, help="predictions, one JSON line per query")
    parser.add_argument("--gt_path", required=True, help="ground-truth annotations (jsonl)")
    parser.add_argument("--save_path", help="write the full metrics here (JSON, atomically)")
    parser.add_argument("--dataset", choices=("qvh", "charades", "tvsum"),
                        help="default: detected from the ground-truth lines")
    parser.add_argument("--verbose", action="store_true", help="print bucket sizes to stderr")
    args = parser.parse_args(argv)
    try:
        submission = read_jsonl(args.submission_path)
        ground_truth = read_jsonl(args.gt_path)
        dataset = args.dataset or detect_dataset(ground_truth)
        metrics = evaluate(dataset, submission, ground_truth, verbose=args.verbose)
        if args.save_path:
            write_json_atomic(args.save_path, metrics)
    except (MetricsInputError, OSError) as e:
        path = {"submission": args.submission_path, "ground truth": args.gt_path}.get(
            getattr(e, "side", None))
        print(f"error: {path}: {e}" if path else f"error: {e}", file=sys.stderr)
        return 2
    except (KeyError, TypeError, ValueError, IndexError) as e:
        # Anything else we failed to check up front is still a problem with the input files.
        print(f"error: unexpected content in {args.submission_path} or {args.gt_path}: "
              f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(json.dumps(metrics["brief"], indent=4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
