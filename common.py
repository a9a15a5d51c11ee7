"""Pieces several models share: copy this file beside any one model file and that model works.

TR-DETR, TaskWeave and VideoLights descend from Moment-DETR (Lei et al., NeurIPS 2021) and QD-DETR
(Moon et al., CVPR 2023): a decoder emits a fixed set of Nq candidate moments, a Hungarian matcher
pairs some of them with the ground-truth moments, and the matched pairs are regressed while the
rest learn to say "no moment". All four models, FlashVTG too, train a per-clip saliency (highlight)
score with the same ranking losses, and all predictions go through the official post-processing.
This file holds those common parts, in reading order:

  1. span utilities      span_cxw_to_xx, span_xx_to_cxw, temporal_iou, generalized_temporal_iou
  2. the matcher         HungarianMatcher
  3. set losses          span_losses (L1 + GIoU), sigmoid_focal_loss, matched_query_labels,
                         label_focal_loss, label_cross_entropy
  4. saliency losses     saliency_margin_loss, saliency_rank_contrastive_loss, neg_pair_loss
  5. inference helpers   postprocess_windows

Conventions used everywhere in this repository:
  - A span is normalised by the video length, so it lies (roughly) in [0, 1]. It is either
    "cxw" = (center, width), the form the models predict and regress, or "xx" = (start, end), the
    form IoU is computed on.
  - Class channel 0 of the two-way logits is the FOREGROUND ("this query is a moment"), channel 1 is
    the background. This is what the official code does. Some of its comments say the opposite;
    the code is what runs.
  - Masks are True (or 1) on valid clips and tokens.
"""

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn


# ----------------------------------------------------------------------------- 1. span utilities

def span_cxw_to_xx(cxw_spans):
    """(..., 2) (center, width) -> (..., 2) (start, end)."""
    start = cxw_spans[..., 0] - 0.5 * cxw_spans[..., 1]
    end = cxw_spans[..., 0] + 0.5 * cxw_spans[..., 1]
    return torch.stack([start, end], dim=-1)


def span_xx_to_cxw(xx_spans):
    """(..., 2) (start, end) -> (..., 2) (center, width)."""
    center = xx_spans.sum(-1) * 0.5
    width = xx_spans[..., 1] - xx_spans[..., 0]
    return torch.stack([center, width], dim=-1)


def temporal_iou(spans1, spans2):
    """IoU of every pair of 1-D spans.

    Args:
        spans1: (N, 2) spans in (start, end) form.
        spans2: (M, 2) spans in (start, end) form.
    Returns:
        iou (N, M) and union (N, M). The union is returned too because the generalised IoU needs it.
    """
    length1 = spans1[:, 1] - spans1[:, 0]                            # (N,)
    length2 = spans2[:, 1] - spans2[:, 0]                            # (M,)
    left = torch.max(spans1[:, None, 0], spans2[None, :, 0])         # (N, M)
    right = torch.min(spans1[:, None, 1], spans2[None, :, 1])        # (N, M)
    inter = (right - left).clamp(min=0)                              # (N, M), 0 when disjoint
    union = length1[:, None] + length2[None, :] - inter              # (N, M)
    return inter / union, union


def generalized_temporal_iou(spans1, spans2):
    """Generalised IoU (Rezatofighi et al. 2019) of every pair of 1-D spans, as in DETR's box_ops.

    GIoU = IoU - (hull - union) / hull, where the hull is the smallest span holding both. It lies in
    [-1, 1], and unlike the IoU it still has a gradient when two spans do not overlap: it grows as
    the gap between them shrinks.

    Args:
        spans1: (N, 2) spans in (start, end) form, with end >= start.
        spans2: (M, 2) spans in (start, end) form, with end >= start.
    Returns:
        giou: (N, M)
    """
    spans1, spans2 = spans1.float(), spans2.float()
    # Checked on the CPU only: on a GPU the check would stall every step until the GPU catches up
    # (a host sync), and there the spans come from the model (width >= 0 by construction) and from
    # data.py, which checks every annotated window when it loads it.
    if spans1.device.type == "cpu" and not ((spans1[:, 1] >= spans1[:, 0]).all()
                                            and (spans2[:, 1] >= spans2[:, 0]).all()):
        raise ValueError("common.py generalized_temporal_iou: every span must have end >= start "
                         "(did you pass (center, width) spans? convert with span_cxw_to_xx)")
    iou, union = temporal_iou(spans1, spans2)
    left = torch.min(spans1[:, None, 0], spans2[None, :, 0])         # (N, M)
    right = torch.max(spans1[:, None, 1], spans2[None, :, 1])        # (N, M)
    hull = (right - left).clamp(min=0)                               # (N, M)
    return iou - (hull - union) / hull


# ----------------------------------------------------------------------------- 2. the matcher

class HungarianMatcher(nn.Module):
    """One-to-one assignment between the Nq predicted spans and the ground-truth moments (DETR's).

    A video has a few ground-truth moments (QVHighlights: 1 to 5), but the decoder always emits Nq
    (10) predictions. Set prediction needs each moment claimed by exactly one prediction. The others
    are trained as "no moment"; this is why the targets have no "no-object" entries. The assignment
    minimises the total matching cost:

        C[q, t] = cost_span * |span_q - span_t|_1  +  cost_giou * (-GIoU(span_q, span_t))
                  + cost_class * (-p_q(foreground))

    L1 and GIoU measure where the span is; the class term prefers queries that already think they
    hold a moment. As in DETR, the class cost uses -probability instead of the log-likelihood: the
    constant 1 of "1 - p" does not change the assignment, so it is dropped.
    """

    def __init__(self, cost_class=4.0, cost_span=10.0, cost_giou=1.0, foreground_index=0):
        super().__init__()
        if cost_class == 0 and cost_span == 0 and cost_giou == 0:
            raise ValueError("common.py HungarianMatcher: all three costs are 0, nothing to match on")
        self.cost_class = cost_class
        self.cost_span = cost_span
        self.cost_giou = cost_giou
        self.foreground_index = foreground_index

    @torch.no_grad()
    def forward(self, pred_logits, pred_spans, span_targets):
        """Match predictions to targets, one scipy call per sample.

        Args:
            pred_logits: (B, Nq, 2) class logits; channel `foreground_index` means "is a moment".
            pred_spans: (B, Nq, 2) predicted spans, normalised (center, width).
            span_targets: list of B tensors (n_i, 2), normalised (center, width). n_i may be 0.
        Returns:
            A list of B pairs (pred_idx, tgt_idx) of int64 tensors on the predictions' device, each
            of length min(Nq, n_i): prediction pred_idx[k] of sample i is matched to its target
            tgt_idx[k]. Every query not listed is a "no moment" query.
        """
        batch_size, num_queries = pred_spans.shape[:2]
        sizes = [len(t) for t in span_targets]
        empty = torch.empty(0, dtype=torch.int64, device=pred_spans.device)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in range(batch_size)]

        # Costs of every prediction in the batch against every target in the batch. Cross-sample
        # entries are wasted, but one batched computation is simpler and faster than a loop.
        prob = pred_logits.flatten(0, 1).softmax(-1)                 # (B*Nq, 2)
        spans = pred_spans.flatten(0, 1)                             # (B*Nq, 2)
        targets = torch.cat(list(span_targets)).to(spans)           # (T, 2), T = sum of n_i
        cost_class = -prob[:, self.foreground_index].unsqueeze(1)   # (B*Nq, 1), same for every target
        cost_span = torch.cdist(spans, targets, p=1)                 # (B*Nq, T)
        cost_giou = -generalized_temporal_iou(span_cxw_to_xx(spans), span_cxw_to_xx(targets))
        cost = self.cost_span * cost_span + self.cost_giou * cost_giou + self.cost_class * cost_class
        cost = cost.view(batch_size, num_queries, -1).cpu()         # (B, Nq, T)

        # Sample i only competes for its own targets: its slice of the target axis.
        indices = [linear_sum_assignment(block[i]) for i, block in enumerate(cost.split(sizes, -1))]
        # Back to the device in ONE copy (not two per sample): every later use indexes device
        # tensors with them, and each separate small copy would be another wait for the GPU.
        flat = torch.as_tensor(np.concatenate([a for pair in indices for a in pair]), dtype=torch.int64)
        if pred_spans.device.type == "cuda" and torch.cuda.is_available():
            flat = flat.pin_memory()                  # page-locked: the copy need not block
        flat = flat.to(pred_spans.device, non_blocking=True)
        pieces = flat.split([len(a) for pair in indices for a in pair])
        return list(zip(pieces[0::2], pieces[1::2]))


def matched_prediction_index(indices):
    """Turn the matcher's per-sample lists into (batch_idx, query_idx), both (M,), M = number of
    matched pairs in the batch: `pred_spans[batch_idx, query_idx]` picks the matched predictions."""
    batch_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)])
    query_idx = torch.cat([q for q, _ in indices])
    return batch_idx, query_idx


# ----------------------------------------------------------------------------- 3. set losses

def span_losses(pred_spans, span_targets, indices):
    """L1 and GIoU losses over the matched (prediction, target) pairs.

    Args:
        pred_spans: (B, Nq, 2) normalised (center, width).
        span_targets: list of B tensors (n_i, 2), normalised (center, width).
        indices: the matcher's output for these predictions.
    Returns:
        loss_l1: mean |pred - target| over the M matched pairs x 2 coordinates (center and width).
        loss_giou: mean (1 - GIoU) over the M matched pairs.
    If nothing is matched (no targets in the batch), both are 0 and still part of the graph.
    """
    batch_idx, query_idx = matched_prediction_index(indices)
    if len(query_idx) == 0:
        zero = pred_spans.sum() * 0.0
        return zero, zero
    matched = pred_spans[batch_idx, query_idx]                                    # (M, 2)
    targets = torch.cat([t[j] for t, (_, j) in zip(span_targets, indices)])       # (M, 2)
    targets = targets.to(matched)
    loss_l1 = F.l1_loss(matched, targets, reduction="none").mean()
    giou = generalized_temporal_iou(span_cxw_to_xx(matched), span_cxw_to_xx(targets))  # (M, M)
    loss_giou = (1 - torch.diag(giou)).mean()                     # only the matched pairs count
    return loss_l1, loss_giou


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    """Element-wise sigmoid focal loss (Lin et al. 2017), the formula of torchvision's
    `sigmoid_focal_loss` with reduction "none".

    Each logit is an independent binary classifier. Its binary cross-entropy is scaled by
    (1 - p_t)^gamma, which is small for elements that are already classified well. This makes easy
    examples (most of the unmatched queries) count less. alpha_t = alpha for positives and
    1 - alpha for negatives.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)     # the probability given to the true label
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss


def matched_query_labels(pred_logits, indices, foreground_index=0):
    """(B, Nq) int64 class targets of the decoder queries: `foreground_index` for the queries the
    matcher assigned to a ground-truth window, the other class (1 - foreground_index) elsewhere."""
    batch_idx, query_idx = matched_prediction_index(indices)
    labels = torch.full(pred_logits.shape[:2], 1 - foreground_index, dtype=torch.int64,
                        device=pred_logits.device)                     # (B, Nq), all background
    labels[batch_idx, query_idx] = foreground_index
    return labels


def label_focal_loss(pred_logits, indices, foreground_index=0, alpha=0.25, gamma=2.0):
    """TR-DETR's foreground/background loss: a sigmoid focal loss on BOTH logit channels.

    Matched queries get the one-hot target "foreground" (channel `foreground_index` = 1, the other
    = 0). Unmatched ones get "background". Both channels are scored as independent sigmoids against
    that one-hot vector, then averaged over all B * 2 * Nq elements. Inference still reads a
    softmax over the two channels (see the models' `predict`).

    Args:
        pred_logits: (B, Nq, 2).
        indices: the matcher's output for these predictions.
    Returns:
        a scalar.
    """
    labels = matched_query_labels(pred_logits, indices, foreground_index)          # (B, Nq)
    one_hot = F.one_hot(labels, num_classes=2).float()                 # (B, Nq, 2)
    return sigmoid_focal_loss(pred_logits.float(), one_hot, alpha, gamma).mean()


def label_cross_entropy(pred_logits, indices, eos_coef=0.1):
    """QD-DETR's foreground/background loss (TaskWeave's and VideoLights'): a 2-class softmax
    cross-entropy.

    Matched queries have the target "foreground" (class 0), all others "background" (class 1).
    Each query's loss is multiplied by its class weight (1 for foreground, eos_coef for background,
    since most queries are background) and the result is averaged over all B * Nq queries: a plain
    mean, not the weighted mean that F.cross_entropy's reduction="mean" would give.

    Args:
        pred_logits: (B, Nq, 2).
        indices: the matcher's output for these predictions.
    Returns:
        a scalar.
    """
    labels = matched_query_labels(pred_logits, indices, foreground_index=0)        # (B, Nq)
    # [1, eos_coef] made on the device itself (a torch.tensor(list) would be a blocking copy)
    class_weight = torch.where(torch.arange(2, device=pred_logits.device) == 0, 1.0, eos_coef)
    loss = F.cross_entropy(pred_logits.transpose(1, 2), labels, weight=class_weight,
                           reduction="none")                                 # (B, Nq)
    return loss.mean()


# ----------------------------------------------------------------------------- 4. saliency losses

def saliency_margin_loss(saliency, pos_idx, neg_idx, margin=0.2):
    """Moment-DETR's hinge loss: a positive clip must score at least `margin` above its negative.

    Args:
        saliency: (B, Lv) raw saliency scores.
        pos_idx, neg_idx: (B, P) clip indices of P (positive, negative) pairs per sample. On
            QVHighlights P = 2: (best, worst) relevant clip, then (random relevant, random
            irrelevant). On TVSum P = 1.
    Returns:
        sum over pairs of max(0, margin + s[neg] - s[pos]) / (B * P) * 2. The official code keeps
        the factor 2 from the original two-pair setting even when P = 1.
    """
    pos = saliency.gather(1, pos_idx)                                 # (B, P)
    neg = saliency.gather(1, neg_idx)                                 # (B, P)
    return torch.clamp(margin + neg - pos, min=0).sum() / (pos.numel()) * 2


def saliency_rank_contrastive_loss(saliency, saliency_labels, video_mask, tau=0.5, saliency_neg=None):
    """QD-DETR's rank-contrastive loss: clips above each score level should win a softmax over clips.

    For each level r = 1..11 of the 0..12 label scale (3 annotators x 0..4 on QVHighlights; TVSum is
    rescaled to 0..12), the clips with label >= r are the positives. The loss is the InfoNCE-style
    -mean_{i in P_r} log softmax(s / tau)_i over all clips. Clips above a level must score higher
    than those below it, and this holds at every level, so the scores learn the order of the labels.

    Details kept from the official code: padded clips get the score -1000 (in effect excluded from
    the softmax); a level with no positive anywhere in the batch is skipped; a sample with no
    positive at a level contributes 0 but still counts in the mean over B; the sum over the 11
    levels is divided by 12.

    Negative-pair variant (QD-DETR, TaskWeave, VideoLights; not TR-DETR): pass `saliency_neg`, the
    scores of the same videos under a mismatched query. They join the softmax as extra clips with
    label 0, so they act only as negatives that the matched clips must beat.

    Args:
        saliency: (B, Lv) raw scores.
        saliency_labels: (B, Lv) per-clip label on the 0..12 scale, 0 on padding.
        video_mask: (B, Lv) True/1 on valid clips.
        tau: softmax temperature.
        saliency_neg: optional (B, Lv) scores of the mismatched (video, query) pass.
    Returns:
        a scalar.
    """
    mask = video_mask.to(saliency.dtype)                              # (B, Lv)
    labels = saliency_labels.to(saliency.dtype)
    if saliency_neg is not None:
        saliency = torch.cat([saliency, saliency_neg], dim=1)         # (B, 2Lv)
        labels = torch.cat([labels, torch.zeros_like(labels)], dim=1)  # (B, 2Lv)
        mask = mask.repeat(1, 2)                                      # (B, 2Lv)
    scores = mask * saliency + (1.0 - mask) * -1e3                    # padding: score -1000

    total = saliency.new_zeros(())
    for level in range(1, 12):
        positives = labels >= level                                  # (B, L)
        # A level nobody reaches adds exactly 0 (has_positive is 0 everywhere), so there is no
        # `if positives.sum() == 0: continue` (on a GPU each such test waits for the GPU).
        has_positive = (positives.sum(1) > 0).to(saliency.dtype)     # (B,)
        logits = scores / tau
        logits = logits - logits.max(dim=1, keepdim=True)[0]         # for numerical stability
        log_prob = logits - torch.log(logits.exp().sum(1, keepdim=True) + 1e-6)    # (B, L)
        mean_log_prob_pos = (positives * log_prob * mask).sum(1) / (positives.sum(1) + 1e-6)
        total = total + (-mean_log_prob_pos * has_positive).mean()
    return total / 12


def neg_pair_loss(saliency_neg, video_mask):
    """QD-DETR's negative-pair loss: under a mismatched query, no clip should be salient.

    The video is run a second time with another sample's query (the batch's queries rolled by
    one), and every valid clip of that pass is pushed towards sigmoid(score) = 0:
        mean over B of sum over valid clips of -log(1 - sigmoid(s_neg)).
    We compute -log(1 - sigmoid(x)) as softplus(x). The two are equal, but the official literal form
    becomes inf once sigmoid(x) rounds to 1 (x > ~17 in float32).

    TR-DETR has no such pass; TaskWeave and VideoLights use it.

    Args:
        saliency_neg: (B, Lv) scores of the mismatched pass.
        video_mask: (B, Lv) True/1 on valid clips.
    Returns:
        a scalar.
    """
    mask = video_mask.to(saliency_neg.dtype)
    return (F.softplus(saliency_neg) * mask).sum(dim=1).mean()


# ----------------------------------------------------------------------------- 5. inference helpers

def postprocess_windows(windows_sec, duration_clamp, clip_len):
    """The official post-processing of predicted windows (PostProcessorDETR with clip_ts and
    round_multiple), in seconds:

      0. every value is rounded to 4 decimals first. The official code writes the prediction rows
         with 4 decimals before it post-processes them. This can move a window end that sits just
         next to a rounding boundary of step 3.
      1. clamp the start and end to [0, duration_clamp] (official: 150 s, QVHighlights' length);
      2. round them to the nearest multiple of clip_len with torch.round, which rounds half to even:
         with 2-s clips an end at 3 s becomes round(1.5) * 2 = 4, and one at 5 s round(2.5) * 2 = 4.
    Window lengths are NOT clipped: the official list skips its clip_window_l step.

    Args:
        windows_sec: (N, 2) [start, end] or (N, 3) [start, end, score] windows in seconds, a float32
            tensor as the official code has it (normalised spans x duration).
        duration_clamp: upper clamp in seconds.
        clip_len: clip length in seconds (QVHighlights 2, Charades-STA 1).
    Returns:
        a float32 tensor of the same shape. A score column, if given, is rounded to 4 decimals and
        otherwise left alone.
    """
    windows = torch.as_tensor(windows_sec, dtype=torch.float32).cpu()
    if windows.dim() != 2 or windows.shape[1] not in (2, 3):
        raise ValueError(f"common.py postprocess_windows: expected (N, 2) or (N, 3) windows, "
                         f"got shape {tuple(windows.shape)}")
    # Step 0: the official rows are formatted with f"{value:.4f}", then read back as float32.
    rounded = torch.tensor([[float(f"{v:.4f}") for v in row] for row in windows.tolist()],
                           dtype=torch.float32).reshape(windows.shape)
    start_end = torch.clamp(rounded[:, :2], min=0, max=duration_clamp)            # step 1
    start_end = torch.round(start_end / clip_len) * clip_len                       # step 2
    return torch.cat([start_end, rounded[:, 2:]], dim=1)
