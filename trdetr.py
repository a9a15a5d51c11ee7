"""TR-DETR: Task-Reciprocal Transformer for joint moment retrieval and highlight detection.

Paper: Sun, Zhou, Chen, Xie, "TR-DETR: Task-Reciprocal Transformer for Joint Moment Retrieval and
Highlight Detection", AAAI 2024. Official code: github.com/mingyao1120/TR-DETR, which is built on
QD-DETR (github.com/wjun0830/QD-DETR), itself built on Moment-DETR (github.com/jayleicn/moment_detr).

The idea
--------
Given a video's clip features and a text query, moment retrieval (MR) finds the moments (start,
end) that match the query, and highlight detection (HD) scores how salient each clip is for it.
The two tasks help each other. A clip that is a strong highlight is likely inside the moment, and
the moment found tells which clips the query is about. TR-DETR is QD-DETR (text-to-video
cross-attention encoder + DAB-DETR anchor decoder) plus three additions:
  (a) local-global alignment: before any fusion, two auxiliary losses pull the projected clip and
      word features into one space. Per clip: is this clip inside the moment? Per video: which
      query in the batch belongs to it?
  (b) visual feature refinement: VSLNet-style context-query attention makes every clip feature
      query-aware before the cross-attention;
  (c) task cooperation, both ways. HD2MR: a first saliency estimate re-weights the joint features,
      which go through the (same) self-attention encoder once more before the decoder. MR2HD: the
      top-1 predicted moment is summarised by a GRU, and its similarity to every clip rescales the
      features from which the final saliency is read.

Paper -> code
-------------
  Eq. (1)-(2)   input MLPs                             TRDETR.input_vid_proj / input_txt_proj
  Eq. (3)-(4)   local regulator, clip vs. query        local_alignment_loss   ("CTC" in the code)
  Eq. (5)       global regulator, video vs. query      global_alignment_loss  ("VTC" in the code)
  Eq. (6)-(10)  visual feature refinement              VisualFeatureRefinement
  Eq. (11)      cross-attention, text -> video         T2VEncoderLayer (x enc_layers)
  Eq. (12)-(13) HD2MR                                  TRDETR.forward, the two TRDETR.encode calls
  (DAB-DETR)    transformer decoder + heads            AnchorDecoder, TRDETR.class_embed/span_embed
  Eq. (14)-(16) MR2HD                                  TRDETR.mr2hd
  Eq. (17)      total loss                             TRDETRLoss

Data flow (B videos, Lv clips, Lq words, d = 256, Nq = 10 queries)
-------------------------------------------------------------------
  video (B, Lv, Dv), query (B, Lq, Dq)
  -> input MLPs             F_v (B, Lv, d), F_t (B, Lq, d)      + local/global alignment losses
  -> refinement             V (B, Lv, d)
  -> T2V encoder            Z (B, Lv, d)       clips attend to the words
  -> self-attn encoder E    M1 = E(Z) (B, Lv, d);  H = saliency_proj1(M1) (B, Lv)
  -> HD2MR                  Z_hat = E(M1 + softmax(H) * Z) (B, Lv, d)     (same E, same weights)
  -> anchor decoder         hs (layers, B, Nq, d), anchors (layers, B, Nq, 2)
  -> heads                  pred_logits (B, Nq, 2), pred_spans (B, Nq, 2) (center, width)
  -> MR2HD                  top-1 span -> GRU -> s (B, Lv);  saliency = saliency_proj1(Z_hat (1 + s))

Where the official code and the paper disagree we follow the code, which produced the published
numbers. Notes 1-16 at the end of this file list each such place and each place where we differ
from the official code; docs/trdetr.md holds the measured evidence.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common import (HungarianMatcher, label_focal_loss, saliency_margin_loss,
                    saliency_rank_contrastive_loss, span_cxw_to_xx, span_losses)


# ----------------------------------------------------------------------------- config

@dataclass
class Config:
    """Official defaults: the QVHighlights run behind the paper's Table 1
    (checkpoint/[V_SOTA]hl-video_tef-exp-2023_07_24_20_09_00/opt.json and scripts/train.sh)."""
    # --- model
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 2            # depth of the T2V encoder AND of the self-attention encoder
    dec_layers: int = 2
    dim_feedforward: int = 1024
    dropout: float = 0.1           # transformer layers and the refinement's attention inputs
    input_dropout: float = 0.5     # inside the input MLPs
    n_input_proj: int = 2          # layers of each input MLP (the paper says 3, the run used 2)
    num_queries: int = 10          # decoder slots = candidate moments per video
    max_q_l: int = 32              # sizes the unused text position table (parameter parity only)
    aux_loss: bool = True          # also supervise decoder layers before the last
    t2v_mask_bug: bool = False     # True: reproduce the official T2V attn_mask bug (notes 12-13)
    # --- Hungarian matcher costs
    set_cost_class: float = 4.0
    set_cost_span: float = 10.0
    set_cost_giou: float = 1.0
    # --- loss weights (eos_coef 0.1 exists in the official config but no loss reads it)
    use_matcher: bool = True       # False on TVSum: saliency + alignment losses only
    span_loss_coef: float = 10.0
    giou_loss_coef: float = 1.0
    label_loss_coef: float = 4.0
    lw_saliency: float = 1.0
    saliency_margin: float = 0.2
    rank_tau: float = 0.5          # temperature of the rank-contrastive saliency loss
    ctc_loss_coef: float = 0.5     # local regulator (Eq. 4); the paper's single lambda is 0.3
    vtc_loss_coef: float = 0.3     # global regulator (Eq. 5)
    align_temperature: float = 0.07
    # --- training (AdamW on all parameters, one group; StepLR stepped once per epoch)
    lr: float = 1e-4
    weight_decay: float = 1e-4
    batch_size: int = 32
    eval_batch_size: int = 100
    epochs: int = 200
    lr_drop: int = 400             # StepLR step > epochs: the learning rate never decays
    grad_clip: float = 0.1         # max total gradient norm
    seed: int = 2017               # train.sh's seed (config.py's default is 2018)
    eval_every: int = 5            # the official loop evaluates every 5 epochs (hard-coded)
    best_metric: str = "MR-full-mAP"   # checkpoint selection on the eval split's brief metrics


def default_config(dataset):
    """The official per-dataset settings; dataset is "qvh", "charades", "tvsum" or "synthetic"."""
    if dataset == "qvh":
        return Config()
    if dataset == "charades":
        # The official repository has no Charades-STA script. We use the paper's setting (batch 8,
        # 100 epochs, lr 1e-4) and QVHighlights' values for everything else. The paper reports R1@0.5
        # and R1@0.7, so we select on the stricter of the two.
        return Config(batch_size=8, epochs=100, best_metric="MR-full-R1@0.7")
    if dataset == "tvsum":
        # tvsum/train_tvsum.sh: lr 1e-3, batch 4, 2000 epochs, lr_drop 2000, VTC 0.5, CTC 2;
        # TVSum has no moments, so no matcher, span or class loss (use_matcher = dset != tvsum).
        # The script passes an unset $seed, so we fall back to config.py's default 2018.
        return Config(lr=1e-3, batch_size=4, epochs=2000, lr_drop=2000, vtc_loss_coef=0.5,
                      ctc_loss_coef=2.0, use_matcher=False, seed=2018, best_metric="mAP")
    if dataset == "synthetic":
        # QVHighlights settings with fewer epochs, for the CPU quick start.
        return Config(epochs=30)
    raise ValueError(f"trdetr.py default_config: unknown dataset {dataset!r}; "
                     f"expected one of 'qvh', 'charades', 'tvsum', 'synthetic'")


# ----------------------------------------------------------------------------- small pieces

class MLP(nn.Module):
    """Linear layers with ReLU between them (DETR's box-head MLP)."""

    def __init__(self, in_dim, hidden_dim, out_dim, num_layers):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class LinearLayer(nn.Module):
    """LayerNorm -> Dropout -> Linear (-> ReLU): one layer of the input MLPs, Eq. (1)-(2)."""

    def __init__(self, in_dim, out_dim, dropout, relu):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, out_dim)
        self.relu = relu

    def forward(self, x):
        x = self.linear(self.dropout(self.norm(x)))
        return F.relu(x) if self.relu else x


def input_mlp(in_dim, hidden_dim, num_layers, dropout):
    """The input projection: `num_layers` LinearLayers, ReLU after all but the last."""
    dims = [in_dim] + [hidden_dim] * num_layers
    return nn.Sequential(*[LinearLayer(dims[i], dims[i + 1], dropout, relu=i < num_layers - 1)
                           for i in range(num_layers)])


def inverse_sigmoid(x, eps=1e-3):
    """log(x / (1 - x)), clamped so that anchors at 0 or 1 stay finite."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def sine_features(x, dim):
    """(...) -> (..., dim): [sin(x / T_0), cos(x / T_0), sin(x / T_1), cos(x / T_1), ...] with
    T_k = 10000^(2k / dim), the transformer's sinusoidal encoding of a real-valued position."""
    k = torch.arange(dim, dtype=torch.float32, device=x.device)
    periods = 10000 ** (2 * (k // 2) / dim)                           # (dim,), pairs share a period
    angles = x[..., None] / periods                                   # (..., dim)
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def clip_position_embedding(video_mask, dim):
    """DETR's sine embedding of clip positions, normalised by each video's own length.

    Clip i of an n-clip video gets position 2*pi * i / n (i = 1..n). Padded clips repeat the last
    position. This needs right padding, which our collate does.
    """
    position = video_mask.float().cumsum(1)                           # (B, Lv): 1, 2, .., n, n, ..
    position = position / (position[:, -1:] + 1e-6) * 2 * math.pi
    return sine_features(position, dim)                               # (B, Lv, dim)


def slice_left_aligned(feats, starts, stops):
    """feats[b, starts[b]:stops[b]] for every b at once, moved to position 0 and zero-padded to Lv:
    (B, Lv, d). Python's slice rules on purpose (the official code slices, see MR2HD): a negative
    bound counts from the end, bounds past the end are clipped, and stop <= start is empty.
    One gather instead of a loop over the batch: no per-sample Python and, on a GPU, no
    host synchronisation per sample to read the bounds."""
    B, Lv, d = feats.shape
    def normalise(i):                                       # what slice(i, ...).indices(Lv) gives
        return torch.where(i < 0, (i + Lv).clamp(min=0), i.clamp(max=Lv))
    starts, stops = normalise(starts.long()), normalise(stops.long())               # (B,)
    position = torch.arange(Lv, device=feats.device)
    inside = position[None] < (stops - starts)[:, None]                              # (B, Lv)
    index = (starts[:, None] + position[None]).clamp(max=Lv - 1)                     # (B, Lv)
    picked = feats.gather(1, index[..., None].expand(B, Lv, d))                      # (B, Lv, d)
    # A Python 0 as the fill: a 0-dim CPU tensor would be copied to the GPU, a wait at every step.
    return torch.where(inside[..., None], picked, 0.0)                               # (B, Lv, d)


def anchor_sine_embedding(anchors, dim):
    """(..., 2) anchors (center, width) in [0, 1] -> (..., dim): dim/2 sine features of 2*pi*center,
    then dim/2 of 2*pi*width (DAB-DETR's embedding of an anchor box, here in 1-D)."""
    center = sine_features(anchors[..., 0] * 2 * math.pi, dim // 2)
    width = sine_features(anchors[..., 1] * 2 * math.pi, dim // 2)
    return torch.cat([center, width], dim=-1)


# ----------------------------------------------------------------------------- refinement

class VisualFeatureRefinement(nn.Module):
    """Query-guided refinement of the clip features, Eq. (6)-(10).

    The official code is VSLNet's context-query attention (CQAttention) followed by its
    CQConcatenate:
      S[b, i, j] = c_i . w_clip + q_j . w_word + (c_i * w_joint) . q_j      trilinear, no 1/sqrt(d)
      A_r = softmax over words of S,  A_c = softmax over clips of S         (both masked)
      c2q = A_r F_t,  q2c = A_r A_c^T F_v
      X = Linear([F_v, c2q, F_v * c2q, F_v * q2c])                           4d -> d
      g = sum_j softmax_j(F_t w_pool) F_t_j                                  learned text pooling
      V = ReLU(Linear([X, g repeated over clips]))                           2d -> d
    """

    def __init__(self, dim, dropout):
        super().__init__()
        # Shapes as in VSLNet, so that xavier_uniform draws from the same ranges.
        self.w_clip = nn.Parameter(torch.empty(dim, 1))
        self.w_word = nn.Parameter(torch.empty(dim, 1))
        self.w_joint = nn.Parameter(torch.empty(1, 1, dim))
        self.w_pool = nn.Parameter(torch.empty(dim, 1))
        for w in (self.w_clip, self.w_word, self.w_joint, self.w_pool):
            nn.init.xavier_uniform_(w)
        self.dropout = nn.Dropout(dropout)                  # on the similarity's inputs only
        self.attn_proj = nn.Linear(4 * dim, dim)            # the official 1x1 Conv1d
        self.out_proj = nn.Linear(2 * dim, dim)             # the official 1x1 Conv1d

    def forward(self, clip_feats, word_feats, video_mask, query_mask):
        num_clips = clip_feats.shape[1]
        c, q = self.dropout(clip_feats), self.dropout(word_feats)
        sim = (c @ self.w_clip) + (q @ self.w_word).transpose(1, 2) \
            + (c * self.w_joint) @ q.transpose(1, 2)                      # Eq. (6)  (B, Lv, Lq)
        # -1e30 instead of -inf: the official choice; exp() of it is exactly 0 as well.
        attn_rows = sim.masked_fill(~query_mask[:, None, :], -1e30).softmax(dim=2)  # A_r (B, Lv, Lq)
        attn_cols = sim.masked_fill(~video_mask[:, :, None], -1e30).softmax(dim=1)  # A_c (B, Lv, Lq)
        c2q = attn_rows @ word_feats                                      # Eq. (7)  (B, Lv, d)
        q2c = attn_rows @ attn_cols.transpose(1, 2) @ clip_feats          # Eq. (8)  (B, Lv, d)
        fused = self.attn_proj(torch.cat(
            [clip_feats, c2q, clip_feats * c2q, clip_feats * q2c], dim=2))   # (B, Lv, d)

        pool_logits = (word_feats @ self.w_pool).squeeze(2)               # (B, Lq)
        pool_weights = pool_logits.masked_fill(~query_mask, -1e30).softmax(dim=1)
        pooled = (word_feats.transpose(1, 2) @ pool_weights[:, :, None]).squeeze(2)  # (B, d)
        pooled = pooled[:, None, :].expand(-1, num_clips, -1)             # (B, Lv, d)
        return F.relu(self.out_proj(torch.cat([fused, pooled], dim=2)))  # Eq. (9)-(10) (B, Lv, d)


# ----------------------------------------------------------------------------- encoders

class T2VEncoderLayer(nn.Module):
    """QD-DETR's text-to-video layer: clips (queries) attend to words (keys and values), Eq. (11).

    x = V + Dropout(MHA(V + pos, F_t, F_t));  V' = LN2(x + Dropout(FFN(LN1(x)))).
    The FFN reads LN1(x) but its residual is added to the UN-normalised x: QD-DETR's layer does this,
    and TR-DETR keeps it. The words pass through unchanged (they carry zero position embeddings).
    """

    def __init__(self, dim, nhead, dim_feedforward, dropout, mask_bug=False):
        super().__init__()
        self.nhead, self.mask_bug = nhead, mask_bug
        self.cross_attn = nn.MultiheadAttention(dim, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.activation = nn.PReLU()                         # learnable, one slope per layer
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, clip_feats, clip_pos, word_feats, word_pad, clip_pad):
        bug_mask = None
        if self.mask_bug:
            # Note 12 (end of file): (padded clip, padded word) pairs, tiled head-major while
            # torch reads the (B * nhead) axis batch-major, so sample b, head h gets the mask of
            # sample (b * nhead + h) mod B.
            bug_mask = (clip_pad[:, :, None] & word_pad[:, None, :]).repeat(self.nhead, 1, 1)
        attended = self.cross_attn(clip_feats + clip_pos, word_feats, word_feats, attn_mask=bug_mask,
                                   key_padding_mask=word_pad, need_weights=False)[0]  # (B, Lv, d)
        x = clip_feats + self.dropout1(attended)
        ffn = self.linear2(self.dropout(self.activation(self.linear1(self.norm1(x)))))
        return self.norm2(x + self.dropout2(ffn))


class EncoderLayer(nn.Module):
    """Standard post-norm self-attention layer over the clips; positions go into queries and keys."""

    def __init__(self, dim, nhead, dim_feedforward, dropout):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.activation = nn.PReLU()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x, pos, pad):
        q = k = x + pos
        x = self.norm1(x + self.dropout1(
            self.self_attn(q, k, x, key_padding_mask=pad, need_weights=False)[0]))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.norm2(x + self.dropout2(ffn))


# ----------------------------------------------------------------------------- decoder

class ProjectionFreeAttention(nn.Module):
    """Multi-head attention whose inputs are already projected (Conditional/DAB-DETR style).

    The decoder builds queries and keys itself (content + position parts), so this module only
    splits heads, attends and applies the output projection. Queries/keys and values may have
    different widths: in cross-attention each head has 64 query/key dims (32 content + 32
    position) but 32 value dims.
    """

    def __init__(self, value_dim, nhead, dropout):
        super().__init__()
        self.nhead = nhead
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(value_dim, value_dim)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, q, k, v, key_pad=None):
        (B, Lq, qk_dim), Lk = q.shape, k.shape[1]
        head_dim = qk_dim // self.nhead
        q = q.view(B, Lq, self.nhead, head_dim).transpose(1, 2)          # (B, H, Lq, hd)
        k = k.view(B, Lk, self.nhead, head_dim).transpose(1, 2)          # (B, H, Lk, hd)
        v = v.view(B, Lk, self.nhead, -1).transpose(1, 2)                # (B, H, Lk, hd_v)
        scores = (q * head_dim ** -0.5) @ k.transpose(2, 3)              # (B, H, Lq, Lk)
        if key_pad is not None:
            scores = scores.masked_fill(key_pad[:, None, None, :], float("-inf"))
        weights = self.dropout(scores.softmax(dim=-1))
        out = (weights @ v).transpose(1, 2).reshape(B, Lq, -1)           # (B, Lq, value_dim)
        return self.out_proj(out)


class DecoderLayer(nn.Module):
    """One DAB-DETR decoder layer: self-attention among the queries, cross-attention to the clips
    with separate content and position parts per head, then an FFN. All post-norm.

    Only the first layer adds the query position to the cross-attention content query
    (ca_qpos_proj). Later layers rely on the per-head concatenated sine part alone, as in
    Conditional DETR, so they do not have that projection (keep_query_pos is False).
    """

    def __init__(self, dim, nhead, dim_feedforward, dropout, first_layer):
        super().__init__()
        self.nhead = nhead
        # self-attention: q = content + position, k = content + position, v = content
        self.sa_qcontent_proj = nn.Linear(dim, dim)
        self.sa_qpos_proj = nn.Linear(dim, dim)
        self.sa_kcontent_proj = nn.Linear(dim, dim)
        self.sa_kpos_proj = nn.Linear(dim, dim)
        self.sa_v_proj = nn.Linear(dim, dim)
        self.self_attn = ProjectionFreeAttention(dim, nhead, dropout)
        self.norm1 = nn.LayerNorm(dim)
        # cross-attention to the clips
        self.ca_qcontent_proj = nn.Linear(dim, dim)
        self.ca_qpos_proj = nn.Linear(dim, dim) if first_layer else None
        self.ca_kcontent_proj = nn.Linear(dim, dim)
        self.ca_kpos_proj = nn.Linear(dim, dim)
        self.ca_v_proj = nn.Linear(dim, dim)
        self.ca_qpos_sine_proj = nn.Linear(dim, dim)
        self.cross_attn = ProjectionFreeAttention(dim, nhead, dropout)
        self.norm2 = nn.LayerNorm(dim)
        # FFN
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.activation = nn.PReLU()
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt, memory, memory_pad, memory_pos, query_pos, query_sine):
        B, Nq, dim = tgt.shape
        Lv, H = memory.shape[1], self.nhead
        # --- self-attention among the Nq queries
        q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)
        k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, self.sa_v_proj(tgt))))

        # --- cross-attention: per head, [content part, position part] for queries and keys
        q = self.ca_qcontent_proj(tgt)
        k = self.ca_kcontent_proj(memory)
        k_pos = self.ca_kpos_proj(memory_pos)
        if self.ca_qpos_proj is not None:                    # first layer only
            q = q + self.ca_qpos_proj(query_pos)
            k = k + k_pos
        sine = self.ca_qpos_sine_proj(query_sine)
        q = torch.cat([q.view(B, Nq, H, -1), sine.view(B, Nq, H, -1)], dim=3)    # (B, Nq, H, 2hd)
        k = torch.cat([k.view(B, Lv, H, -1), k_pos.view(B, Lv, H, -1)], dim=3)   # (B, Lv, H, 2hd)
        attended = self.cross_attn(q.view(B, Nq, 2 * dim), k.view(B, Lv, 2 * dim),
                                   self.ca_v_proj(memory), key_pad=memory_pad)   # (B, Nq, d)
        tgt = self.norm2(tgt + self.dropout2(attended))

        # --- FFN
        ffn = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class AnchorDecoder(nn.Module):
    """DAB-DETR-style decoder: each query is a learned 1-D anchor (center, width) that every layer
    refines.

    Per layer l, with anchors A_l (B, Nq, 2) and content tgt (B, Nq, d; zeros at l = 0):
      sine = sine embedding of A_l;  query_pos = ref_point_head(sine)
      sine *= query_scale(tgt)  (from layer 1 on);  sine *= sigmoid(ref_anchor_head(tgt)) / width_l
            (one learned scalar per query over the anchor width: wide anchors attend more broadly)
      tgt = layer(tgt, ...);  hs_l = LN(tgt)     (one LayerNorm shared by all layers)
      A_{l+1} = sigmoid(bbox_embed(tgt) + inverse_sigmoid(A_l))
    A_{l+1} is detached before layer l+1 uses it: each layer learns its own correction. The
    un-detached A_{l+1} is still returned as layer l+1's reference, so the final span head's
    gradient reaches bbox_embed.
    """

    def __init__(self, dim, nhead, dim_feedforward, dropout, num_layers):
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList(DecoderLayer(dim, nhead, dim_feedforward, dropout, i == 0)
                                    for i in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.query_scale = MLP(dim, dim, dim, 2)
        self.ref_point_head = MLP(dim, dim, dim, 2)
        self.bbox_embed = MLP(dim, dim, 2, 3)
        # The official code zeroes the last layer here, but the transformer's xavier pass later
        # overwrites the weight (the bias stays 0). We do the same; see TRDETR._reset_parameters.
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)
        self.ref_anchor_head = MLP(dim, dim, 1, 2)

    def forward(self, memory, memory_pad, memory_pos, anchor_logits):
        B = memory.shape[0]
        anchors = anchor_logits.sigmoid()[None].expand(B, -1, -1)       # A_0 (B, Nq, 2)
        tgt = memory.new_zeros(B, anchors.shape[1], self.dim)           # (B, Nq, d)
        hidden, references = [], [anchors]
        for i, layer in enumerate(self.layers):
            sine = anchor_sine_embedding(anchors, self.dim)             # (B, Nq, d)
            query_pos = self.ref_point_head(sine)                       # (B, Nq, d)
            if i > 0:
                sine = sine * self.query_scale(tgt)
            sine = sine * (self.ref_anchor_head(tgt).sigmoid() / anchors[..., 1:2])
            tgt = layer(tgt, memory, memory_pad, memory_pos, query_pos, sine)
            new_anchors = (self.bbox_embed(tgt) + inverse_sigmoid(anchors)).sigmoid()
            if i < len(self.layers) - 1:
                references.append(new_anchors)
            anchors = new_anchors.detach()
            hidden.append(self.norm(tgt))
        return torch.stack(hidden), torch.stack(references)   # (L, B, Nq, d), (L, B, Nq, 2)


# ----------------------------------------------------------------------------- the model

class TRDETR(nn.Module):
    """TR-DETR. forward(video_feats, video_mask, query_feats, query_mask) -> dict (see forward)."""

    def __init__(self, cfg, video_dim, text_dim):
        super().__init__()
        d = cfg.hidden_dim
        self.cfg = cfg
        self.video_dim, self.text_dim = video_dim, text_dim
        self.input_vid_proj = input_mlp(video_dim, d, cfg.n_input_proj, cfg.input_dropout)
        self.input_txt_proj = input_mlp(text_dim, d, cfg.n_input_proj, cfg.input_dropout)
        self.refinement = VisualFeatureRefinement(d, cfg.dropout)
        self.t2v_encoder = nn.ModuleList(
            T2VEncoderLayer(d, cfg.nheads, cfg.dim_feedforward, cfg.dropout, cfg.t2v_mask_bug)
            for _ in range(cfg.enc_layers))
        # ONE self-attention encoder, run twice (HD2MR). Two copies would be a different model.
        self.encoder = nn.ModuleList(
            EncoderLayer(d, cfg.nheads, cfg.dim_feedforward, cfg.dropout)
            for _ in range(cfg.enc_layers))
        self.decoder = AnchorDecoder(d, cfg.nheads, cfg.dim_feedforward, cfg.dropout, cfg.dec_layers)
        self.query_embed = nn.Embedding(cfg.num_queries, 2)     # anchor logits, N(0, 1) init
        self.class_embed = nn.Linear(d, 2)                      # channel 0 = foreground
        self.span_embed = MLP(d, d, 2, 3)                       # not the decoder's bbox_embed
        # One saliency head, shared by HD2MR (H) and MR2HD (the output saliency).
        self.saliency_proj1 = nn.Linear(d, d)
        self.gru = nn.GRU(d, d, num_layers=1, batch_first=True)
        # Never used (use_txt_pos is False); kept so the parameter count equals the official
        # model's. It gets no gradient, and AdamW skips parameters without one.
        self.txt_position_embed = nn.ModuleDict({
            "position_embeddings": nn.Embedding(cfg.max_q_l, d),
            "LayerNorm": nn.LayerNorm(d)})
        self._reset_parameters()

    def _reset_parameters(self):
        # The official Transformer module (T2V encoder, encoder, decoder with its MLPs) re-initialises
        # every matrix with xavier_uniform; vectors (biases, LayerNorm, PReLU) keep their defaults.
        # This also overwrites the zeroed last weight of the decoder's bbox_embed. Everything else
        # (input MLPs, refinement, heads, GRU, query anchors) keeps its own initialisation.
        for module in (self.t2v_encoder, self.encoder, self.decoder):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)

    def encode(self, x, pos, pad):
        """The self-attention encoder E (B, Lv, d) -> (B, Lv, d); HD2MR calls it twice."""
        for layer in self.encoder:
            x = layer(x, pos, pad)
        return x

    def forward(self, video_feats, video_mask, query_feats, query_mask, epoch=None):
        """
        Args:
            video_feats: (B, Lv, video_dim) clip features, right-padded with zeros.
            video_mask: (B, Lv) True on real clips.
            query_feats: (B, Lq, text_dim) word features, right-padded.
            query_mask: (B, Lq) True on real tokens.
            epoch: the training epoch the loop passes to every model; TR-DETR does the same thing
                at every epoch and ignores it.
        Returns a dict:
            pred_logits (B, Nq, 2), pred_spans (B, Nq, 2) normalised (center, width): the last
                decoder layer; aux_outputs: a list with the same two keys for each earlier layer;
            saliency (B, Lv): the MR2HD highlight score of every clip (padding included);
            clip_feats (B, Lv, d), word_feats (B, Lq, d), clip_global (B, d), word_global (B, d):
                the projected features the alignment losses read;
            video_mask, query_mask: the masks as booleans.
        """
        video_mask, query_mask = self._check_inputs(video_feats, video_mask, query_feats, query_mask)
        d = self.cfg.hidden_dim
        # The one place where masks flip: torch attention wants True = padding.
        video_pad, query_pad = ~video_mask, ~query_mask

        # --- input MLPs; the alignment losses read these features (before any fusion)
        clip_feats = self.input_vid_proj(video_feats)         # Eq. (1)  F_v (B, Lv, d)
        word_feats = self.input_txt_proj(query_feats)         # Eq. (2)  F_t (B, Lq, d)
        # The official code means over the padded length (no mask), and so do we.
        clip_global = clip_feats.mean(1)                      # G_v (B, d)
        word_global = word_feats.mean(1)                      # G_t (B, d)

        # --- visual feature refinement, then the text-to-video cross-attention
        refined = self.refinement(clip_feats, word_feats, video_mask, query_mask)   # V (B, Lv, d)
        clip_pos = clip_position_embedding(video_mask, d).to(clip_feats.dtype)    # (B, Lv, d)
        joint = refined
        for layer in self.t2v_encoder:
            joint = layer(joint, clip_pos, word_feats, query_pad, video_pad)        # Eq. (11) Z

        # --- HD2MR: a first saliency re-weights the joint features before the decoder
        memory = self.encode(joint, clip_pos, video_pad)      # M1 = E(Z) (B, Lv, d)
        first_saliency = self.saliency_proj1(memory).sum(-1) / math.sqrt(d)        # Eq. (12) H (B, Lv)
        weights = first_saliency.softmax(dim=-1)              # over all Lv: padding is NOT masked
        memory = self.encode(memory + weights[..., None] * joint, clip_pos, video_pad)  # Eq. (13)

        # --- decoder and heads (DAB-DETR)
        hidden, anchors = self.decoder(memory, video_pad, clip_pos, self.query_embed.weight)
        logits = self.class_embed(hidden)                     # (L, B, Nq, 2)
        spans = (self.span_embed(hidden) + inverse_sigmoid(anchors)).sigmoid()      # (L, B, Nq, 2)

        # --- MR2HD: the top-1 moment refines the final saliency
        saliency = self.mr2hd(logits[-1], spans[-1], memory, clip_feats)          # (B, Lv)

        aux = [{"pred_logits": a, "pred_spans": b} for a, b in zip(logits[:-1], spans[:-1])]
        return {
            "pred_logits": logits[-1], "pred_spans": spans[-1], "saliency": saliency,
            "aux_outputs": aux if self.cfg.aux_loss else [],
            "clip_feats": clip_feats, "word_feats": word_feats,
            "clip_global": clip_global, "word_global": word_global,
            "video_mask": video_mask, "query_mask": query_mask,
        }

    def mr2hd(self, pred_logits, pred_spans, memory, clip_feats):
        """Eq. (14)-(16): summarise the top-1 predicted moment and use it to refine the saliency.

        pred_logits, pred_spans: (B, Nq, 2) of the last decoder layer; memory: Z_hat (B, Lv, d);
        clip_feats: F_v (B, Lv, d), the projected clip features before any fusion.
        """
        B, Lv, d = clip_feats.shape
        with torch.no_grad():                                 # indices carry no gradient anyway
            top = pred_logits.softmax(-1)[..., 0].argmax(dim=1)            # (B,) top foreground query
            # Clip indices with floor(), scaled by the PADDED length Lv, as the official code does.
            # (It multiplies by Lv * clip_len and divides by clip_len; that cancels exactly.)
            rows = torch.arange(B, device=top.device)
            bounds = torch.floor(span_cxw_to_xx(pred_spans[rows, top]) * Lv)   # (B, 2)
        # clip_feats[b, start:end + 1] of each sample, zero-padded to Lv. Python slicing rules on
        # purpose: a negative start wraps around and usually gives an empty slice (the GRU then
        # sees only zeros), as in the official code.
        moments = slice_left_aligned(clip_feats, bounds[:, 0], bounds[:, 1] + 1)  # (B, Lv, d)
        moment_global = self.gru(moments)[1][-1]              # Eq. (14) last hidden state (B, d)
        # Eq. (15), as a raw dot product with the projected clip features (no cosine, no softmax)
        similarity = (moment_global[:, None, :] @ clip_feats.transpose(1, 2)).squeeze(1)  # (B, Lv)
        refined = memory * similarity[..., None] + memory     # Eq. (16) Z_hat * (1 + s)
        return self.saliency_proj1(refined).sum(-1) / math.sqrt(d)         # Eq. (16) (B, Lv)

    def _check_inputs(self, video_feats, video_mask, query_feats, query_mask):
        where = "trdetr.py TRDETR.forward"
        if video_feats.dim() != 3 or video_feats.shape[-1] != self.video_dim:
            raise ValueError(f"{where}: video_feats must be (B, Lv, {self.video_dim}), "
                             f"got {tuple(video_feats.shape)}")
        if query_feats.dim() != 3 or query_feats.shape[-1] != self.text_dim:
            raise ValueError(f"{where}: query_feats must be (B, Lq, {self.text_dim}), "
                             f"got {tuple(query_feats.shape)}")
        if tuple(video_mask.shape) != tuple(video_feats.shape[:2]):
            raise ValueError(f"{where}: video_mask {tuple(video_mask.shape)} does not match "
                             f"video_feats {tuple(video_feats.shape[:2])}")
        if tuple(query_mask.shape) != tuple(query_feats.shape[:2]):
            raise ValueError(f"{where}: query_mask {tuple(query_mask.shape)} does not match "
                             f"query_feats {tuple(query_feats.shape[:2])}")
        video_mask, query_mask = video_mask.bool(), query_mask.bool()
        # The checks above read shapes (host metadata); this one reads the masks' values, which
        # on a GPU means waiting for it at every step. So it runs on CPU tensors only: for the
        # loaded data, data.py already refuses a sample without a clip or a token.
        if video_mask.device.type == "cpu" and (not video_mask.any(1).all()
                                                or not query_mask.any(1).all()):
            raise ValueError(f"{where}: every sample needs at least one valid clip and one valid "
                             f"token (an all-padding row would make the attention softmax NaN)")
        return video_mask, query_mask


# ----------------------------------------------------------------------------- losses

def local_alignment_loss(clip_feats, word_feats, relevant_mask, video_mask, query_mask,
                         temperature=0.07):
    """The local regulator ("CTC" in the official code), Eq. (3)-(4) as the code computes it.

    Each clip's cosine similarity to the query (the masked mean of the unit word vectors, which is
    not re-normalised), divided by the temperature, is a logit for "this clip is inside a
    ground-truth moment". The BCE is averaged over all B * Lv clips. A padded clip's logit is set
    to 0, so it adds a constant log(2) to the mean.
    """
    clips = F.normalize(clip_feats, dim=2)                              # (B, Lv, d)
    words = F.normalize(word_feats, dim=2)                              # (B, Lq, d)
    qmask = query_mask.to(words.dtype)[..., None]                       # (B, Lq, 1)
    query = (words * qmask).sum(1) / qmask.sum(1)                       # (B, d)
    sim = (clips @ query[..., None]).squeeze(-1) * video_mask.to(clips.dtype)  # Eq. (3) (B, Lv)
    labels = relevant_mask.to(sim.dtype)                                # 1 inside a GT moment
    return F.binary_cross_entropy_with_logits(sim / temperature, labels)  # Eq. (4), mean over B*Lv


def global_alignment_loss(clip_global, word_global, temperature=0.07):
    """The global regulator ("VTC" in the official code), Eq. (5) as the code computes it.

    Symmetric InfoNCE over the batch: each query must pick its own video among the B videos, and
    each video its own query. clip_global and word_global are the unmasked means of the projected
    features (B, d).
    """
    text = F.normalize(word_global, dim=1)
    video = F.normalize(clip_global, dim=1)
    logits = text @ video.t() / temperature                             # (B, B), diagonal = pairs
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2   # Eq. (5)


class TRDETRLoss(nn.Module):
    """Eq. (17) as the official training loop computes it:

        total = sum over decoder layers of (10 L1 + 1 GIoU + 4 focal)       (MR, matched per layer)
              + 1 * (margin + rank-contrastive) on the MR2HD saliency        (HD, last layer only)
              + 0.5 * local alignment + 0.3 * global alignment               (QVH weights)

    forward(outputs, batch) -> (total, terms): the terms are the WEIGHTED values (what the official
    log prints) as detached 0-dim tensors, with aux-layer terms suffixed _0, _1, ..., plus
    "loss_overall".
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.matcher = HungarianMatcher(cost_class=cfg.set_cost_class, cost_span=cfg.set_cost_span,
                                        cost_giou=cfg.set_cost_giou, foreground_index=0)

    def forward(self, outputs, batch, epoch=None):
        """The weighted sum of every term of Eq. (17); `epoch` is unused (same loss at every epoch)."""
        cfg = self.cfg
        terms = {}
        if cfg.use_matcher:
            layers = [("", outputs)] + [(f"_{i}", aux) for i, aux in enumerate(outputs["aux_outputs"])]
            for suffix, out in layers:
                indices = self.matcher(out["pred_logits"], out["pred_spans"], batch["span_targets"])
                loss_l1, loss_giou = span_losses(out["pred_spans"], batch["span_targets"], indices)
                terms["loss_span" + suffix] = cfg.span_loss_coef * loss_l1
                terms["loss_giou" + suffix] = cfg.giou_loss_coef * loss_giou
                terms["loss_label" + suffix] = cfg.label_loss_coef * label_focal_loss(
                    out["pred_logits"], indices, foreground_index=0)

        saliency, video_mask = outputs["saliency"], outputs["video_mask"]
        margin = saliency_margin_loss(saliency, batch["saliency_pos"], batch["saliency_neg"],
                                      cfg.saliency_margin)
        rank = saliency_rank_contrastive_loss(saliency, batch["saliency_all"], video_mask,
                                              cfg.rank_tau)
        terms["loss_saliency"] = cfg.lw_saliency * (margin + rank)
        terms["loss_ctc"] = cfg.ctc_loss_coef * local_alignment_loss(
            outputs["clip_feats"], outputs["word_feats"], batch["relevant_mask"], video_mask,
            outputs["query_mask"], cfg.align_temperature)
        terms["loss_vtc"] = cfg.vtc_loss_coef * global_alignment_loss(
            outputs["clip_global"], outputs["word_global"], cfg.align_temperature)

        total = sum(terms.values())                           # Eq. (17), as the code weights it
        # Detached 0-dim tensors, not floats: a .item() per term would make the host wait for the
        # GPU at every step. The loop sums them on the device and reads them once per epoch.
        logged = {k: v.detach() for k, v in terms.items()}
        logged["loss_overall"] = total.detach()
        return total, logged


# ----------------------------------------------------------------------------- inference

@torch.no_grad()
def predict(outputs, video_mask):
    """Moment windows and saliency from the model's outputs.

    Returns:
        windows (B, Nq, 3): [start, end, score] with start/end normalised by the video length (not
            clamped: the loop converts to seconds and common.postprocess_windows clamps), and score
            = softmax foreground probability (channel 0); rows sorted by descending score, ties in
            query order (the official Python sort is stable too).
        saliency (B, Lv): the MR2HD scores, padding included. The loop keeps the valid clips and,
            like the official QVH code, casts them to float16. video_mask is not needed here.
    """
    scores = outputs["pred_logits"].softmax(-1)[..., 0]                          # (B, Nq)
    windows = torch.cat([span_cxw_to_xx(outputs["pred_spans"]), scores[..., None]], dim=-1)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices       # (B, Nq)
    windows = windows.gather(1, order[..., None].expand(-1, -1, 3))              # (B, Nq, 3)
    return windows, outputs["saliency"]


def build(cfg, video_dim, text_dim):
    """The model and its loss, as train.py builds every model: (TRDETR, TRDETRLoss)."""
    return TRDETR(cfg, video_dim, text_dim), TRDETRLoss(cfg)


# ------------------------------------------------------------------------------------------------
# Notes: where the official code differs from the paper, and we from it
# ------------------------------------------------------------------------------------------------
# The official code produced the published numbers, so we follow it; the tests check it, not the
# paper. Notes 1-11: the official code against the paper; notes 12-16: where we differ from it.
#
#  1. Input MLPs, Eq. (1)-(2): 2 layers (LayerNorm -> Dropout 0.5 -> Linear, ReLU after the first
#     only); the paper says 3. Config.n_input_proj, Config.input_dropout.
#  2. Local regulator, Eq. (3)-(4): cosine to the masked mean of unit word vectors / temperature
#     0.07, BCE-with-logits averaged over all B*Lv clips (padding included), weight 0.5. Paper:
#     sigmoid(cos), mean over an (L, N) matrix, sum over clips, weight 0.3. Config.ctc_loss_coef.
#  3. Global regulator, Eq. (5): symmetric InfoNCE (text->video and video->text), temperature 0.07,
#     on the UNMASKED means over the padded length, weight 0.3. Paper: one direction, no
#     temperature. Config.vtc_loss_coef, Config.align_temperature.
#  4. Refinement, Eq. (6)-(10): VSLNet trilinear attention (no 1/sqrt(d), dropout on its inputs),
#     two per-clip linears (the official 1x1 convolutions), a final ReLU, text pooled by a learned
#     attention. Paper: linear-projection dot products, one linear over 5 parts, a mean.
#  5. Eq. (11) is 2 QD-DETR T2V layers, each with an FFN whose residual is added to the
#     un-normalised input (QD-DETR's quirk, kept); a 2-layer self-attention encoder follows them.
#     Config.enc_layers.
#  6. HD2MR, Eq. (12)-(13): Z_hat = E(E(Z) + softmax(H) * Z), the same encoder weights twice, an
#     UNMASKED softmax over Lv; H gets no loss of its own. Paper: MHA(Z + softmax(H) * Z).
#  7. MR2HD moment, Eq. (14): top-1 query only; floor() clip indices from the PADDED length Lv;
#     Python slice rules (a negative start usually gives an empty slice); the GRU runs over the
#     zero-padded length-Lv sequence.
#  8. MR2HD score, Eq. (15)-(16): raw dot product (no cosine, no softmax), Z_hat * (1 + s), read by
#     the SAME saliency_proj1 as HD2MR. Paper: cosine, softmax, Z + softmax(S) * Z_hat.
#  9. Class loss: sigmoid focal loss on both channels (alpha 0.25, gamma 2); paper: QD-DETR's CE.
# 10. No negative-pair branch: no QD-DETR rerun with the batch's queries rolled by one, no
#     saliency_scores_neg, no neg-pair loss; QD-DETR's global token and saliency_proj2 (commented
#     out in the official transformer.py) are gone. The only negatives: the global loss's in-batch
#     pairs, the local loss's irrelevant clips. We follow it (common.neg_pair_loss: other models).
# 11. The learned text position table (8,704 parameters) is built but never used (use_txt_pos is
#     False in the official run): words get zero position embeddings. Kept unused for parameter
#     parity. Config.max_q_l.
# 12. Official T2V attention mask bug: besides the key padding mask, an attn_mask outer(clip
#     padding, word padding) tiled head-major (`repeat(nhead, 1, 1)`) where torch reads batch-major:
#     item b, head h gets item (b * nhead + h) mod B's mask and loses real pairs where it is padded.
# 13. We use the key padding mask alone (it already hides padded words), so a sample never depends
#     on the others' lengths. Identical without video padding in the batch, not negligible with it
#     (docs/trdetr.md). Config.t2v_mask_bug = True reproduces the official behaviour exactly.
# 14. Batch-first (B, L, d), text kept beside the video (not concatenated and split); the
#     refinement's 1x1 convolutions are nn.Linear (same function and init distribution); the anchor
#     sine embedding uses d/2 features per coordinate (official: 128, the same at d = 256).
# 15. MR2HD takes the top query by argmax; the official code sorts the scores and takes the first.
#     They differ only for exactly tied probabilities.
# 16. Layers are built independently; the official code deep-copies one layer, so its per-layer
#     biases start out identical (xavier re-initialises every matrix anyway).
