"""FlashVTG: feature layering and adaptive score handling for video temporal grounding.

Paper: Cao, Zhang, Du, Yu, Li, Wang, "FlashVTG: Feature Layering and Adaptive Score Handling
Network for Video Temporal Grounding", WACV 2025 (arXiv 2412.13441).
Official code: github.com/Zhuo-Cao/FlashVTG. Its fusion part (dummy tokens, adaptive
cross-attention, saliency head, negative pairs, saliency losses) comes from CG-DETR
(github.com/wjun0830/CGDETR), its detection part (feature pyramid, points, label assignment, heads,
SampledNCE loss) from R2-Tuning (github.com/yeliudev/R2-Tuning, built on the nncore library). We
rewrite both in plain torch.

The idea
--------
DETR-style models (TR-DETR, ...) predict moments from a handful of decoder queries (10 on
QVHighlights): short moments get few of them, and a query's confidence depends on that query
alone. FlashVTG has no decoder at all. It is an anchor-free detector in the style of FCOS: once the
text is fused into the clips, strided convolutions build a temporal feature pyramid ("Temporal
Feature Layering", TFL), and EVERY position of EVERY level is a candidate moment. A shared
convolutional head regresses, from each position, its distances to the start and to the end of the
moment; level k counts them in steps of its stride 2^(k-1), so coarse levels cover long moments.
With 75 clips and 4 levels there are 75 + 37 + 18 + 9 = 139 candidates per query instead of 10.

Each candidate also needs a confidence for ranking. "Adaptive Score Refinement" (ASR) blends, with
a learned scalar x, two score heads: an intra-scale one that reads one pyramid level at a time and
an inter-scale one that slides over all levels concatenated along time, so that a candidate is
scored in the context of its neighbours and of the other scales. A "Clip-Aware Score" (CAS) loss
ties the finest level's confidences to the clips' highlight labels. At inference, a temporal NMS
sets the score of every window that overlaps a better one to 0.

Paper -> code
-------------
  Sec. 3.3, Eq. (1)-(3)  dummy tokens + adaptive cross-attention  FlashVTG.dummy_encoder, ACALayer
  Sec. 3.3               transformer encoder after the ACA        EncoderLayer (x enc_layers)
  Sec. 3.3, Eq. (4)      highlight detection (HD) head            FlashVTG.fuse (saliency_proj1/2)
  Sec. 3.4               Temporal Feature Layering                TemporalFeatureLayering
  Sec. 3.4, Eq. (5)      moment (boundary) head                   BoundaryHead, FlashVTG.forward
  Sec. 3.5, Eq. (6)-(9)  Adaptive Score Refinement                ScoreHead x 2, FlashVTG.forward
  Sec. 3.6               focal + L1 + CAS (Eq. 10) + SampledNCE + saliency losses   FlashVTGLoss
  (R2-Tuning)            points, label assignment, decoding       make_points, assign_targets,
                                                                  decode_windows, predict
  Sec. 4.3               NMS at threshold 0.7                     temporal_nms, nms

Data flow (B videos, Lv clips, Lq words, Ld dummies, d = 256, K levels, P = sum of level lengths)
--------------------------------------------------------------------------------------------------
  video (B, Lv, Dv), query (B, Lq, Dq)
  -> input MLPs + token-type embeddings    clips (B, Lv, d), words (B, Lq, d)
  -> dummy encoder                        encoded dummies D~ (B, Ld, d)   (text + dummies, 2 layers)
  -> ACA x 6 (clips attend to [D~; words]) (B, Lv, d); attention kept for the t2v saliency
  -> self-attention encoder x 3           F (B, Lv, d)
  -> HD head                              saliency (B, Lv)
  -> TFL on ReLU(F)                       K levels (B, Lv / 2^(k-1), d)
  -> heads on every level                 logits (B, P) (ASR), distances (B, P, 2)
  -> decoding (predict)                   windows per video (n, 3) = [start, end, score]
  -> NMS (nms, in seconds)                the same n windows, suppressed scores set to 0

Where the official code differs from the paper (we follow the code: it produced the published
numbers) and where we differ from it: the numbered notes at the end of this file. Measured
evidence (checks against the official model): docs/flashvtg.md.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common import neg_pair_loss, saliency_margin_loss, saliency_rank_contrastive_loss, \
    sigmoid_focal_loss


# ----------------------------------------------------------------------------- config

@dataclass
class Config:
    """Official defaults: QVHighlights with SlowFast + CLIP features
    (FlashVTG/scripts/train_qv_slowclip.sh, data/MR.py, FlashVTG/config.py defaults)."""
    # --- fusion (CG-DETR part)
    hidden_dim: int = 256
    nheads: int = 8
    dim_feedforward: int = 1024
    dropout: float = 0.1           # attention weights, FFN inner dropout, DropPath on residuals
    input_dropout: float = 0.5     # inside the input MLPs
    n_input_proj: int = 2          # layers of each input MLP
    num_dummies: int = 40          # learnable dummy tokens Ld
    dummy_layers: int = 2          # encoder layers over [dummies; words]
    t2v_layers: int = 6            # adaptive cross-attention (ACA) layers
    enc_layers: int = 3            # self-attention layers over the clips after the ACA
    max_q_l: int = 40              # sizes the unused text position table (parameter parity only)
    t2v_mask_bug: bool = False     # True: reproduce the official ACA attn_mask slip (note 16)
    use_neg: bool = True           # run each video with the next sample's text (negative pairs)
    neg_strip_segment: bool = True  # QVH: "vid_start_end" -> same video if "vid" matches (note 18)
    # --- detection (R2-Tuning part)
    strides: tuple = (1, 2, 4, 8)  # pyramid levels (data/MR.py); (1, 2, 4, 8, 16) for QVH-IV2
    kernel_size: int = 5           # score heads: temporal kernel of the conv layers
    num_conv_layers: int = 1       # score heads: conv layers
    num_mlp_layers: int = 5        # score heads: Linear layers after the convs
    max_num_moment: int = 50       # candidates kept per query at inference
    sample_radius: float = 1.5     # center sampling radius, in strides
    mr_loss: bool = True           # False (TVSum, data/HD.py): no boundaries, BCE on saliency labels
    snce_col: bool = True          # SampledNCE in both directions (MR); False: row only (HD)
    # --- loss weights
    lw_reg: float = 1.0            # L1 on the boundary distances
    lw_cls: float = 5.0            # focal loss on the candidates' labels
    lw_sal: float = 0.1            # SampledNCE (clip-query contrastive)
    lw_saliency: float = 0.8       # CG-DETR saliency composite
    label_loss_coef: float = 4.0   # Clip-Aware Score loss, Eq. (10)
    lw_wattn: float = 1.0          # weight of the attention part of the saliency composite
    saliency_margin: float = 0.2
    rank_tau: float = 0.5          # temperature of the rank-contrastive saliency loss
    snce_temperature: float = 0.07
    # --- training (AdamW on all parameters, one group; StepLR stepped once per epoch)
    lr: float = 5e-4
    weight_decay: float = 1e-4
    batch_size: int = 64
    eval_batch_size: int = 1       # official: 1 (asserted); see note 25
    epochs: int = 150
    lr_drop: int = 400             # >= epochs: the learning rate stays constant (notes 9-10)
    lr_gamma: float = 0.5
    grad_clip: float = 0.1         # max total gradient norm
    seed: int = 2024
    eval_every: int = 1
    best_metric: str = "MR-full-mAP"   # selected on the predictions without NMS, as official
    nms_thd: float = 0.7           # > 0: the loop also writes NMS predictions (nms, note 8)


def default_config(dataset):
    """The official per-dataset settings; dataset is "qvh", "charades", "tvsum" or "synthetic"."""
    if dataset == "qvh":
        return Config()
    if dataset == "charades":
        # scripts/charades_sta/train.sh: SlowFast + CLIP, 1-s clips, batch 128, lr 2.5e-4, 50
        # epochs, lr_drop 50, SampledNCE 0.01, CAS 0.1, 32 words. Charades vids have no segment
        # suffix. The official criterion is (R1@0.5 + R1@0.7) / 2 on the test split: the sum of
        # the two keys ranks the epochs the same way.
        return Config(batch_size=128, lr=2.5e-4, epochs=50, lr_drop=50, lw_sal=0.01,
                      label_loss_coef=0.1, max_q_l=32, neg_strip_segment=False,
                      best_metric="MR-full-R1@0.5+MR-full-R1@0.7")
    if dataset == "tvsum":
        # scripts/tvsum/train.sh + data/HD.py, one model per domain: a single stride-1 level, no
        # boundary loss, the score heads trained with BCE against the saliency labels. The script
        # defines kernel 5 / 2 convs / 3 MLP layers but never passes them, so config.py's defaults
        # 3 / 3 / 3 ran; max_q_l -1 becomes a 100-row (unused) table. No NMS (no moments).
        # Features: the paper's TVSum row used SlowFast + CLIP. The official loader reads the
        # title features under the key "last_hidden_state", which the UMT I3D release (key
        # "token") does not have; on I3D we read "token" like every model, raw and uncut, as
        # that loader treats its text (its video: rgb and flow concatenated, then L2-normalised, as
        # data.py does).
        return Config(batch_size=4, lr=1e-3, weight_decay=0.05, epochs=600, lr_drop=3000,
                      t2v_layers=2, num_dummies=3, kernel_size=3, num_conv_layers=3,
                      num_mlp_layers=3, strides=(1,), mr_loss=False, snce_col=False, max_q_l=100,
                      neg_strip_segment=False, nms_thd=-1.0, best_metric="mAP")
    if dataset == "synthetic":
        # The QVHighlights recipe with fewer epochs, for the CPU quick start: 16 steps of 64 an
        # epoch, each followed by the one-query-at-a-time evaluation; MR is far past its plateau
        # by epoch 10 (README, Results; docs/results.md).
        return Config(epochs=20)
    raise ValueError(f"flashvtg.py default_config: unknown dataset {dataset!r}; "
                     f"expected one of 'qvh', 'charades', 'tvsum', 'synthetic'")


def data_settings(dataset):
    """Where the official FlashVTG loader preprocesses a dataset differently from data.py's
    defaults (which follow Moment-DETR). train.py applies these to the DatasetSpec.

      qvh: 40 query tokens (data.py: 32), and every ground-truth window becomes a target
           (Moment-DETR's loader keeps at most 5: 3.6% of the QVHighlights train queries have more).
    Charades-STA needs nothing (max_v_l unlimited is data.py's default too); the per-epoch redraw
    of the saliency pairs and the Charades clip-length arithmetic stay as data.py does them
    (note 26).
    """
    if dataset == "qvh":
        return {"max_q_l": 40, "max_windows": 100}
    return {}


# The InternVideo2 rows of the paper (marked with a dagger in Tables 1, 3, 4; also Table 8).
# Features: InternVideo2-6B clip features, 768-d per 2-s clip (QVH) or 1-s clip (Charades), + 2 tef
# dims = video_dim 770; LLaMA token features, text_dim 4096. (Released by the authors on Hugging
# Face: cg1177/qvhighlight_internvideo2_videoclip_6b_w2s; data.py does not read them yet.)
IV2_VIDEO_DIM, IV2_TEXT_DIM = 768 + 2, 4096


def internvideo2_config(dataset):
    """The official InternVideo2 + LLaMA settings; build with video_dim=770, text_dim=4096.

    "qvh": scripts/qv_internvideo2/train.sh + data/MR_16.py: five levels (strides 1..16), CAS loss
        OFF (weight 0), evaluation every 5 epochs, selection on (R1@0.5 + R1@0.7) / 2, and vids
        compared whole for negative pairs (dset_name qv_internvideo2). 11,393,049 parameters.
    "charades": scripts/charades_sta_internvideo2/train.sh: batch 32, lr 1.5e-4, score heads with
        kernel 7, 2 convs, 3 MLP layers, 23 words. 11,975,448 parameters.
    """
    if dataset == "qvh":
        return Config(strides=(1, 2, 4, 8, 16), label_loss_coef=0.0, eval_every=5,
                      neg_strip_segment=False, best_metric="MR-full-R1@0.5+MR-full-R1@0.7")
    if dataset == "charades":
        cfg = default_config("charades")
        cfg.batch_size, cfg.lr, cfg.max_q_l = 32, 1.5e-4, 23
        cfg.kernel_size, cfg.num_conv_layers, cfg.num_mlp_layers = 7, 2, 3
        return cfg
    raise ValueError(f"flashvtg.py internvideo2_config: {dataset!r} has no official InternVideo2 "
                     f"run; expected 'qvh' or 'charades'")


# ----------------------------------------------------------------------------- small pieces

class LinearLayer(nn.Module):
    """LayerNorm -> Dropout -> Linear (-> ReLU): one layer of the input MLPs."""

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


class MLP(nn.Module):
    """Linear layers with ReLU between them; hidden width `hidden_dim`."""

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


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a whole sample with probability p
    and scale the kept ones by 1 / (1 - p). Identity at evaluation."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):                                    # x (B, ...)
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = (keep + torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype,
                                  device=x.device)).floor()   # 1 with probability `keep`
        return x / keep * mask


def clip_position_embedding(video_mask, dim):
    """DETR's sine embedding of clip positions, normalised by each video's own length (B, Lv, dim).

    Clip i of an n-clip video gets position 2*pi * i / n (i = 1..n); padded clips (on the right)
    repeat the last one. Channels are [sin(p / T_0), cos(p / T_0), sin(p / T_1), ...] with
    T_k = 10000^(2k / dim).
    """
    position = video_mask.float().cumsum(1)                           # (B, Lv): 1, 2, .., n, n, ..
    position = position / (position[:, -1:] + 1e-6) * 2 * math.pi
    k = torch.arange(dim, dtype=torch.float32, device=video_mask.device)
    periods = 10000 ** (2 * (k // 2) / dim)                           # (dim,), pairs share a period
    angles = position[..., None] / periods                            # (B, Lv, dim)
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


# ----------------------------------------------------------------------------- fusion

class EncoderLayer(nn.Module):
    """Post-norm self-attention layer (positions added to queries and keys), PReLU FFN, DropPath
    on both residual branches. Used by the dummy encoder and by the encoder after the ACA."""

    def __init__(self, dim, nhead, dim_feedforward, dropout):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.activation = nn.PReLU()                         # learnable, one slope per layer
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.drop_path1 = DropPath(dropout)
        self.drop_path2 = DropPath(dropout)

    def forward(self, x, pos, pad):
        q = k = x + pos
        attended = self.self_attn(q, k, x, key_padding_mask=pad, need_weights=False)[0]
        x = self.norm1(x + self.drop_path1(attended))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.norm2(x + self.drop_path2(ffn))


class ACALayer(nn.Module):
    """Adaptive cross-attention (CG-DETR's), Eq. (1)-(3) as the code computes it.

    Clips are the queries; the keys are [encoded dummies; words], the values their contents. There
    are no input projections: per head (32 channels each), the score of clip i for key j is
    (v_i + pos_i) . (key_j + keypos_j) / sqrt(32). The softmax runs over dummies AND words, but the
    output sums the words only: a clip unrelated to the query can put its attention on the dummies
    and receive little text. Then a = v + out_proj(.), and an FFN as in QD-DETR's T2V layer.
    Only the clips are updated; dummies and words pass through unchanged.
    """

    def __init__(self, dim, nhead, dim_feedforward, dropout, num_dummies, mask_bug=False):
        super().__init__()
        self.nhead, self.num_dummies, self.mask_bug = nhead, num_dummies, mask_bug
        self.attn_dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.out_proj.bias)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.activation = nn.PReLU()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.drop_path1 = DropPath(dropout)
        self.drop_path2 = DropPath(dropout)

    def forward(self, clips, clip_pos, keys, key_pos, clip_pad, key_pad):
        """clips (B, Lv, d), keys (B, Ld + Lq, d) = [D~; words]; *_pad True on padding.
        Returns the updated clips (B, Lv, d) and the head-averaged attention (B, Lv, Ld + Lq)."""
        (B, Lv, d), Lk, H = clips.shape, keys.shape[1], self.nhead
        hd = d // H
        q = (clips + clip_pos) * hd ** -0.5                                         # Eq. (1)
        q = q.view(B, Lv, H, hd).transpose(1, 2)                                   # (B, H, Lv, hd)
        k = (keys + key_pos).view(B, Lk, H, hd).transpose(1, 2)                    # (B, H, Lk, hd)
        v = keys.view(B, Lk, H, hd).transpose(1, 2)                                # (B, H, Lk, hd)
        scores = q @ k.transpose(2, 3)                                             # (B, H, Lv, Lk)
        if self.mask_bug:
            # Note 16: (padded clip, padded key) pairs, tiled head-major but read batch-major, so
            # sample b, head h gets the mask of sample (b * H + h) mod B.
            pairs = clip_pad[:, :, None] & key_pad[:, None, :]                     # (B, Lv, Lk)
            source = (torch.arange(B, device=clips.device)[:, None] * H
                      + torch.arange(H, device=clips.device)[None]) % B            # (B, H)
            scores = scores.masked_fill(pairs[source], float("-inf"))
        scores = scores.masked_fill(key_pad[:, None, None, :], float("-inf"))
        weights = scores.softmax(dim=-1)                                           # Eq. (3)
        dropped = self.attn_dropout(weights)
        Ld = self.num_dummies
        out = dropped[..., Ld:] @ v[:, :, Ld:]              # Eq. (2) words only (B, H, Lv, hd)
        out = self.out_proj(out.transpose(1, 2).reshape(B, Lv, d))                 # (B, Lv, d)
        a = clips + self.drop_path1(out)
        ffn = self.linear2(self.dropout(self.activation(self.linear1(self.norm1(a)))))
        return self.norm2(a + self.drop_path2(ffn)), weights.mean(1)               # (B, Lv, Lk)


# ----------------------------------------------------------------------------- detection parts

class TemporalFeatureLayering(nn.Module):
    """The feature pyramid of Sec. 3.4 (R2-Tuning's ConvPyramid), applied to ReLU(F) (note 3).

    Level with stride 1: ReLU(F) itself. Stride 2^p: its own p blocks of [Conv1d(kernel 2,
    stride 2, no padding) -> LayerNorm -> ReLU], so its length is floor(Lv / 2^p). A level is
    skipped when the video is shorter than its stride. Each level's mask is the max-pool of the
    clip mask: a position is valid if any clip under it is.
    """

    def __init__(self, dim, strides):
        super().__init__()
        self.strides = tuple(strides)
        self.branches = nn.ModuleList()
        for s in self.strides:
            p = int(math.log2(s))
            if 2 ** p != s:
                raise ValueError(f"flashvtg.py TemporalFeatureLayering: stride {s} is not a "
                                 f"power of 2")
            blocks = nn.ModuleList()
            for _ in range(p):
                blocks.append(nn.ModuleDict({"conv": nn.Conv1d(dim, dim, 2, stride=2),
                                             "norm": nn.LayerNorm(dim)}))
            self.branches.append(blocks)

    def forward(self, feats, video_mask):
        """feats (B, Lv, d) = ReLU(F), video_mask (B, Lv) bool.
        Returns lists over the kept levels: features (B, L_k, d) and masks (B, L_k) bool."""
        levels, masks = [], []
        for s, blocks in zip(self.strides, self.branches):
            if feats.shape[1] < s:
                continue
            x = feats
            for block in blocks:
                x = block["conv"](x.transpose(1, 2)).transpose(1, 2)   # (B, L / 2, d)
                x = F.relu(block["norm"](x))
            levels.append(x)                                           # (B, floor(Lv / s), d)
            mask = video_mask.float()
            if s > 1:
                mask = F.max_pool1d(mask[:, None], s, stride=s)[:, 0]  # (B, floor(Lv / s))
            masks.append(mask.bool())
        return levels, masks


class ScoreHead(nn.Module):
    """The confidence scorer of ASR, Eq. (6) and (8): `num_conv` temporal convolutions (kernel k,
    same length, ReLU after each), then an MLP to one logit per position (width d/2)."""

    def __init__(self, dim, kernel_size, num_conv, num_mlp):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2)
                                   for _ in range(num_conv))
        self.mlp = MLP(dim, dim // 2, 1, num_mlp)

    def forward(self, x):                                    # (B, N, d)
        x = x.transpose(1, 2)                                # (B, d, N)
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.mlp(x.transpose(1, 2))                   # (B, N, 1)


class BoundaryHead(nn.Module):
    """The moment head of Eq. (5) before exp(): Conv1d(k 3) -> ReLU -> Conv1d(k 3) to 2 channels
    (distance to the start, distance to the end), shared by all levels."""

    def __init__(self, dim, kernel_size=3):
        super().__init__()
        self.conv1 = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2)
        self.conv2 = nn.Conv1d(dim, 2, kernel_size, padding=kernel_size // 2)

    def forward(self, x):                                    # (B, N, d)
        x = self.conv2(F.relu(self.conv1(x.transpose(1, 2))))
        return x.transpose(1, 2)                             # (B, N, 2)


class AdaptivePooling(nn.Module):
    """A query embedding for the SampledNCE loss: softmax(w . word) over the real words, then the
    weighted sum of the words (B, Lq, d) -> (B, d)."""

    def __init__(self, dim):
        super().__init__()
        self.att = nn.Linear(dim, 1, bias=False)

    def forward(self, words, word_mask):
        logits = self.att(words)[..., 0].masked_fill(~word_mask, float("-inf"))   # (B, Lq)
        return (logits.softmax(dim=1)[..., None] * words).sum(1)                  # (B, d)


def make_points(level_sizes, strides, device=None):
    """Every candidate position of the pyramid, in clip units of level 1 (R2-Tuning's
    PointGenerator, without the half-stride offset).

    Level k with stride s_k and L_k positions gives the points t = 0, s_k, 2 s_k, ..., each as a row
    [t, r_lo, r_hi, s_k]. (r_lo, r_hi) is the level's regression range: the largest of a point's
    two distances to a moment's edges (in clips) must lie in it for the point to take that moment.
    The ranges chain the strides: (0, s_2), (s_2, s_3), ..., (s_K, inf), all levels of the
    configuration counted even when a short video skips the last ones.

    Returns (P, 4) float on `device`, P = sum of level_sizes. The forward builds it there
    directly: a grid built on the CPU would be copied to the GPU at every step, and the copy waits.
    """
    edges = [0.0] + [float(s) for s in strides[1:]] + [float("inf")]
    rows = []
    for k, size in enumerate(level_sizes):
        s = float(strides[k])
        t = torch.arange(size, dtype=torch.float32, device=device) * s
        rows.append(torch.stack([t, torch.full_like(t, edges[k]), torch.full_like(t, edges[k + 1]),
                                 torch.full_like(t, s)], dim=1))
    return torch.cat(rows)


def decode_windows(points, distances):
    """Candidates -> (start, end) in clip units: start = t - d_s * s, end = t + d_e * s.
    points (P, 4), distances (..., P, 2) -> (..., P, 2)."""
    t, stride = points[:, 0], points[:, 3]
    return torch.stack([t - distances[..., 0] * stride, t + distances[..., 1] * stride], dim=-1)


# ----------------------------------------------------------------------------- the model

class FlashVTG(nn.Module):
    """FlashVTG. forward(video_feats, video_mask, query_feats, query_mask, epoch=None) -> dict."""

    def __init__(self, cfg, video_dim, text_dim):
        super().__init__()
        d = cfg.hidden_dim
        if tuple(cfg.strides)[0] != 1:
            raise ValueError("flashvtg.py FlashVTG: the first pyramid stride must be 1 (the CAS "
                             f"loss reads level 1), got strides {cfg.strides}")
        self.cfg = cfg
        self.video_dim, self.text_dim = video_dim, text_dim
        self.strides = tuple(cfg.strides)
        self.input_vid_proj = input_mlp(video_dim, d, cfg.n_input_proj, cfg.input_dropout)
        self.input_txt_proj = input_mlp(text_dim, d, cfg.n_input_proj, cfg.input_dropout)
        self.token_type_embeddings = nn.Embedding(2, d)      # 0 = word, 1 = clip
        nn.init.normal_(self.token_type_embeddings.weight, std=0.02)
        self.dummy_tokens = nn.Parameter(torch.randn(cfg.num_dummies, d))
        self.dummy_pos = nn.Parameter(torch.randn(cfg.num_dummies, d))
        self.dummy_encoder = nn.ModuleList(
            EncoderLayer(d, cfg.nheads, cfg.dim_feedforward, cfg.dropout)
            for _ in range(cfg.dummy_layers))
        self.t2v_encoder = nn.ModuleList(
            ACALayer(d, cfg.nheads, cfg.dim_feedforward, cfg.dropout, cfg.num_dummies,
                     cfg.t2v_mask_bug) for _ in range(cfg.t2v_layers))
        self.encoder = nn.ModuleList(
            EncoderLayer(d, cfg.nheads, cfg.dim_feedforward, cfg.dropout)
            for _ in range(cfg.enc_layers))
        self.saliency_proj1 = nn.Linear(d, d)                # per clip, Eq. (4) W_1
        self.saliency_proj2 = nn.Linear(d, d)                # global context, Eq. (4) W_2
        self.pyramid = TemporalFeatureLayering(d, self.strides)
        self.class_head = ScoreHead(d, cfg.kernel_size, cfg.num_conv_layers, cfg.num_mlp_layers)
        self.conf_head = ScoreHead(d, cfg.kernel_size, cfg.num_conv_layers, cfg.num_mlp_layers)
        self.x = nn.Parameter(torch.tensor(0.5))             # Eq. (9) intra/inter blend
        self.coord_head = BoundaryHead(d)
        self.coef = nn.Parameter(torch.ones(len(self.strides)))   # Eq. (5) C_k
        self.pooling = AdaptivePooling(d)
        # Never used (use_txt_pos is off): kept so that the parameter count is the official one.
        # It gets no gradient, and AdamW skips parameters without one.
        self.txt_position_embed = nn.ModuleDict({
            "position_embeddings": nn.Embedding(cfg.max_q_l, d),
            "LayerNorm": nn.LayerNorm(d)})
        # The official Transformer (ACA + encoder, not the dummy encoder) re-draws every matrix.
        for module in (self.t2v_encoder, self.encoder):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.trunc_normal_(p, std=0.02)

    # --- fusion, shared by the matched pass and the negative (mismatched text) pass
    def fuse(self, clips, clip_pos, video_pad, keys, key_pos, key_pad):
        """ACA x t2v_layers, then the self-attention encoder, then the HD head.

        Returns F (B, Lv, d), saliency (B, Lv) (Eq. 4) and t2v (B, Lv): each clip's attention to
        the real words (dummies excluded), averaged over heads and ACA layers, clamped to [0, 1].
        """
        d = clips.shape[-1]
        attn_sum = 0.0
        for layer in self.t2v_encoder:
            clips, attn = layer(clips, clip_pos, keys, key_pos, video_pad, key_pad)
            attn_sum = attn_sum + attn
        attn = attn_sum / len(self.t2v_encoder)                           # (B, Lv, Ld + Lq)
        word_valid = (~key_pad[:, self.cfg.num_dummies:]).to(attn.dtype)  # (B, Lq)
        t2v = (attn[..., self.cfg.num_dummies:] * word_valid[:, None]).sum(-1).clamp(0, 1)
        for layer in self.encoder:
            clips = layer(clips, clip_pos, video_pad)                     # F (B, Lv, d)
        # Eq. (4): g is the mean over ALL Lv positions, padding included (as official).
        context = self.saliency_proj2(clips.mean(1))                      # W_2 g (B, d)
        saliency = (self.saliency_proj1(clips) * context[:, None]).sum(-1) / math.sqrt(d)
        return clips, saliency, t2v

    def forward(self, video_feats, video_mask, query_feats, query_mask, epoch=None):
        """
        Args:
            video_feats: (B, Lv, video_dim) clip features, right-padded with zeros.
            video_mask: (B, Lv) True on real clips.
            query_feats: (B, Lq, text_dim) word features, right-padded.
            query_mask: (B, Lq) True on real tokens.
            epoch: accepted for the loop's contract; FlashVTG does the same thing at every epoch.
        Returns a dict:
            saliency (B, Lv): HD scores (raw, padding included); t2v (B, Lv): attention saliency;
            logits (B, P): ASR confidence logits of every candidate (Eq. 9), P = sum of L_k;
            distances (B, P, 2): (start, end) distances in strides (exp(.) * C_k, Eq. 5);
            points (P, 4): [t, r_lo, r_hi, stride] per candidate (make_points);
            point_mask (B, P) bool: the candidate lies on real clips (pooled level masks);
            video_emb (B, Lv, d) = ReLU(F) and query_emb (B, d): for the SampledNCE loss;
            video_mask, query_mask: booleans; max_num_moment: the Config's (for predict);
            in training with B > 1 and use_neg: saliency_neg, t2v_neg (B, Lv) of every video
            with the NEXT sample's text (the loss keeps the rows with a real negative).
        """
        video_mask, query_mask = self._check_inputs(video_feats, video_mask, query_feats, query_mask)
        cfg, B = self.cfg, video_feats.shape[0]
        video_pad = ~video_mask            # the one place where masks flip: padding = True

        # --- input MLPs + token types; text has no position (use_txt_pos off)
        clips = self.input_vid_proj(video_feats) + self.token_type_embeddings.weight[1]   # (B, Lv, d)
        words = self.input_txt_proj(query_feats) + self.token_type_embeddings.weight[0]   # (B, Lq, d)
        clip_pos = clip_position_embedding(video_mask, cfg.hidden_dim).to(clips.dtype)   # (B, Lv, d)

        # --- dummy encoder: the dummies read the query, the words' outputs are discarded
        dummies = self.dummy_tokens[None].expand(B, -1, -1)                     # (B, Ld, d)
        dummy_pos = self.dummy_pos[None].expand(B, -1, -1)                      # (B, Ld, d)
        key_pad = torch.cat([query_mask.new_zeros(B, cfg.num_dummies), ~query_mask], dim=1)
        key_pos = torch.cat([dummy_pos, torch.zeros_like(words)], dim=1)        # (B, Ld + Lq, d)
        tokens = torch.cat([dummies, words], dim=1)                             # (B, Ld + Lq, d)
        for layer in self.dummy_encoder:
            tokens = layer(tokens, key_pos, key_pad)
        keys = torch.cat([tokens[:, :cfg.num_dummies], words], dim=1)  # Eq. (1) [D~; words]

        # --- fusion + HD head (Sec. 3.3)
        fused, saliency, t2v = self.fuse(clips, clip_pos, video_pad, keys, key_pos, key_pad)

        # --- TFL (Sec. 3.4) on ReLU(F), note 3
        video_emb = F.relu(fused)                                               # (B, Lv, d)
        levels, level_masks = self.pyramid(video_emb, video_mask)
        points = make_points([lv.shape[1] for lv in levels], self.strides, fused.device)  # (P, 4)

        # --- ASR (Sec. 3.5): intra-scale per level, inter-scale over the concatenated levels
        intra = torch.cat([self.class_head(lv) for lv in levels], dim=1)        # Eq. (6)-(7) (B, P, 1)
        inter = self.conf_head(torch.cat(levels, dim=1))                        # Eq. (8) (B, P, 1)
        logits = (self.x * intra + (1 - self.x) * inter)[..., 0]                # Eq. (9) (B, P)
        # --- moment head, Eq. (5): distances in strides, exp() * C_k per level
        distances = torch.cat([self.coord_head(lv).exp() * self.coef[k]
                               for k, lv in enumerate(levels)], dim=1)          # (B, P, 2)

        out = {
            "saliency": saliency, "t2v": t2v, "logits": logits, "distances": distances,
            "points": points, "point_mask": torch.cat(level_masks, dim=1),
            "video_emb": video_emb, "query_emb": self.pooling(words, query_mask),
            "video_mask": video_mask, "query_mask": query_mask,
            "max_num_moment": cfg.max_num_moment,
        }
        # --- negative pairs: each video with the next sample's [D~; words] (note 18)
        if self.training and cfg.use_neg and B > 1:
            roll = lambda x: torch.cat([x[1:], x[:1]])                          # noqa: E731
            _, saliency_neg, t2v_neg = self.fuse(clips, clip_pos, video_pad, roll(keys),
                                                 key_pos, roll(key_pad))
            out["saliency_neg"], out["t2v_neg"] = saliency_neg, t2v_neg
        return out

    def _check_inputs(self, video_feats, video_mask, query_feats, query_mask):
        where = "flashvtg.py FlashVTG.forward"
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
        # Reading mask values on a GPU would make it wait for all queued work, so this check runs
        # on CPU tensors only; data.py checks every loaded sample for the same thing.
        if video_mask.device.type == "cpu" and (not video_mask.any(1).all()
                                                or not query_mask.any(1).all()):
            raise ValueError(f"{where}: every sample needs at least one valid clip and one valid "
                             f"token (the query pooling softmax would be NaN)")
        return video_mask, query_mask


# ----------------------------------------------------------------------------- label assignment

def assign_targets(points, gt_windows, sample_radius=1.5):
    """FCOS-style labels for every candidate of one video (R2-Tuning's BundleLoss.get_target).

    Args:
        points: (P, 4) rows [t, r_lo, r_hi, stride] (make_points), t in clips.
        gt_windows: (n, 2) ground-truth [start, end] in clips (seconds / clip_len). n may be 0.
        sample_radius: center sampling radius, in strides.
    Returns:
        labels (P,) float: 1 where the point takes a moment;
        targets (P, 2): that moment's (t - start, end - t) / stride (meaningful where labels = 1).

    Point (t, r_lo, r_hi, s) takes moment [g_s, g_e] if BOTH
      - center sampling: max(c - r s, g_s) <= t <= min(c + r s, g_e), c = (g_s + g_e) / 2: the
        point lies in the moment, near its center (within r strides);
      - its level fits the moment: r_lo <= max(t - g_s, g_e - t) <= r_hi (bounds included);
    and among the moments it could take it takes the shortest (the first one on an exact tie).
    """
    P = points.shape[0]
    if gt_windows.numel() == 0:
        return points.new_zeros(P), points.new_zeros(P, 2)
    t, r_lo, r_hi, stride = points[:, 0:1], points[:, 1:2], points[:, 2:3], points[:, 3:4]  # (P, 1)
    g_s, g_e = gt_windows[None, :, 0], gt_windows[None, :, 1]                                # (1, n)
    to_start, to_end = t - g_s, g_e - t                                                      # (P, n)
    center = (g_s + g_e) / 2
    inside = (t >= torch.maximum(center - stride * sample_radius, g_s)) & \
             (t <= torch.minimum(center + stride * sample_radius, g_e))                      # (P, n)
    reach = torch.maximum(to_start, to_end)
    fits = (reach >= r_lo) & (reach <= r_hi)                                                 # (P, n)
    lengths = (g_e - g_s).expand(P, -1).masked_fill(~(inside & fits), float("inf"))          # (P, n)
    shortest, chosen = lengths.min(dim=1)                                                    # (P,)
    labels = torch.isfinite(shortest).to(points.dtype)
    rows = torch.arange(P, device=points.device)
    targets = torch.stack([to_start[rows, chosen], to_end[rows, chosen]], dim=1) / stride    # (P, 2)
    return labels, targets


def gt_windows_in_clips(span_targets, n_clips):
    """batch["span_targets"] (n, 2) normalised (center, width) -> (n, 2) [start, end] in clips;
    n_clips: an int or a 0-dim tensor on the spans' device.

    data.py normalises by n_clips * clip_len, so x n_clips gives seconds / clip_len, the official
    units. Rounded to 1e-4 clip: float error must not move an edge across a point (note 20)."""
    spans = span_targets.double()
    xx = torch.stack([spans[:, 0] - spans[:, 1] / 2, spans[:, 0] + spans[:, 1] / 2], dim=1)
    return (torch.round(xx * n_clips * 1e4) / 1e4).float()


# ----------------------------------------------------------------------------- losses

def sampled_nce_loss(video_emb, query_emb, video_mask, saliency_labels, pos_clip,
                     temperature=0.07, directions=("row", "col")):
    """R2-Tuning's SampledNCE: the query must pick its best clip among the clips of its video (row)
    and, at that clip index, its own video among the batch's videos (col).

    sim[b, t] = cos(video_emb[b, t], query_emb[b]) / temperature. For row b the positive is clip
    p_b = pos_clip[b] (the highest-saliency clip on QVH); clips labelled HIGHER than p_b, and
    padding, are left out of the softmax (they are not negatives). The col direction reads column
    p_b of every row (another video's own query vs. its clip p_b).

    Args: video_emb (B, Lv, d), query_emb (B, d), video_mask (B, Lv) bool, saliency_labels (B, Lv),
        pos_clip (B,) long.
    """
    rows = torch.arange(video_emb.shape[0], device=video_emb.device)
    scale = min(1.0 / temperature, 100.0)                     # exp(log(1 / T)), capped at 100
    pos_score = saliency_labels[rows, pos_clip][:, None]                              # (B, 1)
    keep = (saliency_labels <= pos_score) & video_mask                                # (B, Lv)
    sim = F.cosine_similarity(video_emb, query_emb[:, None], dim=-1) * scale          # (B, Lv)
    sim = sim.masked_fill(~keep, float("-inf"))
    loss = sim.new_zeros(())
    if "row" in directions:
        loss = loss - F.log_softmax(sim, dim=1)[rows, pos_clip].mean()
    if "col" in directions:
        loss = loss - F.log_softmax(sim.t(), dim=1)[pos_clip, rows].mean()           # over videos
    return loss


def clip_aware_score_loss(logits, saliency_labels):
    """Eq. (10), as the code computes it: MSE between the min-max normalised level-1 logits and the
    min-max normalised saliency labels, each normalised with the min and max of the WHOLE batch
    (padding included, note 6). logits (B, Lv) = the first Lv candidates, saliency_labels (B, Lv)."""
    def normalise(x):
        span = x.max() - x.min()
        # All equal: official 0 / 0 = NaN, here 0 (note 22). torch.where instead of `if span == 0`
        # (which would make a GPU wait); the divisor 1 keeps the unused branch finite, so its
        # gradient is 0, not NaN.
        flat = span == 0
        return torch.where(flat, 0.0, (x - x.min()) / torch.where(flat, 1.0, span))
    return F.mse_loss(normalise(logits), normalise(saliency_labels.to(logits.dtype)))


def real_negative_rows(batch, batch_size, strip_segment):
    """B Python bools: row i is paired with row i+1's text AND row i+1 shows another video.

    QVHighlights vids are "<youtube id>_<start>_<end>" (150-s segments); with strip_segment two
    segments of one YouTube video count as the same video, as in the official 'hl' setting.
    Batches without meta (hand-built tests) count every row as a different video. A list, not a
    tensor: the vids are on the host, so the loss can branch on it without waiting for a GPU."""
    metas = batch.get("meta")
    if metas is None:
        return [batch_size > 1] * batch_size
    vids = [m["vid"] for m in metas]
    if strip_segment:
        vids = [v.rsplit("_", 2)[0] for v in vids]
    rolled = vids[1:] + vids[:1]
    return [a != b for a, b in zip(vids, rolled)]


def saliency_composite_loss(outputs, batch, cfg):
    """CG-DETR's saliency loss as FlashVTG runs it (note 7), on the HD scores s and on the clips'
    attention to the words a (t2v):

      main = hinge(s) + rank-contrastive(s) + neg-pair(s)
      attn = rank-contrastive(a) + BCE(a, label > 0) + neg-pair(a) + hinge(a)
      loss = main + lw_wattn * attn

    Rows R with a real negative (the next sample's text, another video) add the mismatched
    scores to their rank-contrastive softmax as label-0 clips and get the neg-pair term. The other
    rows run the rank-contrastive loss on their own clips in the main part only, and only when
    there are at least two of them: two official slips, kept (notes 12-13). With no real negative
    in the batch both parts run on every row without negatives.
    """
    s, a = outputs["saliency"], outputs["t2v"]
    mask, labels = outputs["video_mask"], batch["saliency_all"].to(s.dtype)
    pos, neg = batch["saliency_pos"], batch["saliency_neg"]
    tau, margin = cfg.rank_tau, cfg.saliency_margin
    B = len(s)
    real = real_negative_rows(batch, B, cfg.neg_strip_segment) if "saliency_neg" in outputs \
        else [False] * B
    n_real = sum(real)

    main = saliency_margin_loss(s, pos, neg, margin)
    attn = saliency_margin_loss(a, pos, neg, margin)
    attn = attn + F.binary_cross_entropy(a.reshape(-1), labels.clamp(0, 1).reshape(-1))
    if n_real > 0:
        # The rows are known on the host, so the GPU never has to report them: they are picked
        # with index tensors (x[bool_mask] would wait for the GPU to count the kept rows). The
        # same rows in the same order as a mask would give: the same numbers.
        rows = [i for i in range(B) if real[i]] + [i for i in range(B) if not real[i]]
        rows = torch.tensor(rows).to(s.device, non_blocking=True)      # (B,) real rows first
        r, o = rows[:n_real], rows[n_real:]                            # real rows, the others
        s_neg, a_neg = outputs["saliency_neg"][r], outputs["t2v_neg"][r]
        main = main + neg_pair_loss(s_neg, mask[r])                     # -log(1 - sigmoid(s_neg))
        main = main + saliency_rank_contrastive_loss(s[r], labels[r], mask[r], tau, s_neg)
        if B - n_real >= 2:
            # Exactly one such row: the official code turns it into a (1, 1, Lv) tensor, so its
            # softmax runs over a single element and the term is ~1e-6; we reproduce it as 0
            # (note 13).
            main = main + saliency_rank_contrastive_loss(s[o], labels[o], mask[o], tau)
        # a_neg is already a probability: no sigmoid here.
        attn = attn + (-torch.log1p(-a_neg) * mask[r]).sum(1).mean()
        attn = attn + saliency_rank_contrastive_loss(a[r], labels[r], mask[r], tau, a_neg)
    else:
        main = main + saliency_rank_contrastive_loss(s, labels, mask, tau)
        attn = attn + saliency_rank_contrastive_loss(a, labels, mask, tau)
    return main + cfg.lw_wattn * attn


class FlashVTGLoss(nn.Module):
    """The total loss of Sec. 3.6 with the official weights (QVHighlights):

        total = 1 * L1(boundaries) + 5 * focal(labels) + 0.1 * SampledNCE
              + 0.8 * saliency composite + 4 * CAS

    forward(outputs, batch, epoch=None) -> (total, terms): the terms are the WEIGHTED values as
    detached 0-dim tensors, plus "loss_overall". Names as in the official log: loss_reg,
    loss_cls, loss_sal, loss_saliency, loss_label. On TVSum (mr_loss False) there is no loss_reg
    and loss_cls is a BCE of the logits against the raw saliency labels (0..12; targets above 1,
    as the official run: notes 14-15).
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    def forward(self, outputs, batch, epoch=None):
        cfg = self.cfg
        logits, point_mask = outputs["logits"], outputs["point_mask"]
        video_mask = outputs["video_mask"]
        labels_hd = batch["saliency_all"].to(logits.dtype)                       # (B, Lv) 0..12
        Lv = video_mask.shape[1]
        weight = point_mask.to(logits.dtype)                                     # (B, P)
        terms = {}

        if cfg.mr_loss:
            # --- label assignment, one video at a time (its own GT windows, in clips); the clip
            # counts stay 0-dim device tensors (an int per video would make the GPU wait)
            n_clips = video_mask.sum(1)                                          # (B,)
            assigned = [assign_targets(outputs["points"],
                                       gt_windows_in_clips(spans.to(logits.device), n),
                                       cfg.sample_radius)
                        for spans, n in zip(batch["span_targets"], n_clips)]
            cls_tgt = torch.stack([c for c, _ in assigned])                      # (B, P)
            reg_tgt = torch.stack([r for _, r in assigned])                      # (B, P, 2)
            # L1 in exp space on the positive points, averaged over 2 x #positives (note 22).
            # Finding the positives is this loss's one GPU sync per step: a masked sum over all
            # points would add the same terms in another order, so round differently.
            video_idx, point_idx = cls_tgt.nonzero(as_tuple=True)                # (n_pos,) each
            if len(video_idx) > 0:
                error = outputs["distances"][video_idx, point_idx] - reg_tgt[video_idx, point_idx]
                loss_reg = error.abs().sum() / (2 * len(video_idx))
            else:
                loss_reg = outputs["distances"].sum() * 0.0
            terms["loss_reg"] = cfg.lw_reg * loss_reg
            # focal loss (no alpha), averaged over the VALID points, not over the positives
            focal = sigmoid_focal_loss(logits, cls_tgt, alpha=-1, gamma=2.0)
            terms["loss_cls"] = cfg.lw_cls * (focal * weight).sum() / weight.sum()
        else:
            bce = F.binary_cross_entropy_with_logits(logits, labels_hd, weight=weight, reduction="sum")
            terms["loss_cls"] = cfg.lw_cls * bce / weight.sum()

        directions = ("row", "col") if cfg.snce_col else ("row",)
        terms["loss_sal"] = cfg.lw_sal * sampled_nce_loss(
            outputs["video_emb"], outputs["query_emb"], video_mask, labels_hd,
            batch["saliency_pos"][:, 0], cfg.snce_temperature, directions)
        terms["loss_saliency"] = cfg.lw_saliency * saliency_composite_loss(outputs, batch, cfg)
        terms["loss_label"] = cfg.label_loss_coef * clip_aware_score_loss(logits[:, :Lv], labels_hd)

        total = sum(terms.values())
        # Detached 0-dim tensors, not floats: .item() per term would make the GPU wait at every
        # step; the loop sums them on the device and reads them once per epoch.
        logged = {k: v.detach() for k, v in terms.items()}
        logged["loss_overall"] = total.detach()
        return total, logged


# ----------------------------------------------------------------------------- inference

@torch.no_grad()
def predict(outputs, video_mask, meta=None, max_num_moment=None):
    """Moment windows and saliency from the model's outputs.

    Every valid candidate is decoded (start = t - d_s s, end = t + d_e s, in clips), scored with
    sigmoid(logit), and the `max_num_moment` (50) most confident are kept, best first (stable
    sort). Windows are normalised to [0, 1] of the duration and clamped there: the official code
    clamps to [0, duration] in seconds before post-processing.

    Args:
        outputs: the model's dict.
        video_mask: (B, Lv) True on real clips.
        meta: optional list of B dicts with "duration" (s) and "clip_len" (s). Given, a window in
            clips is normalised exactly as the official code does (x clip_len / duration);
            without it, by the clip count (exact whenever duration = n_clips * clip_len, i.e.
            99% of QVHighlights).
        max_num_moment: default: outputs["max_num_moment"] (Config, official 50).
    Returns:
        windows: list of B tensors (n_i, 3) [start, end, score]; saliency (B, Lv) (raw scores).
    """
    keep = outputs.get("max_num_moment", 50) if max_num_moment is None else max_num_moment
    spans = decode_windows(outputs["points"], outputs["distances"].float())        # (B, P, 2)
    scores = outputs["logits"].float().sigmoid()                                    # (B, P)
    n_clips = video_mask.sum(1)
    windows = []
    for b in range(len(scores)):
        valid = outputs["point_mask"][b]
        if meta is not None:
            span = spans[b, valid] * (meta[b]["clip_len"] / meta[b]["duration"])
        else:
            span = spans[b, valid] / n_clips[b]
        score = scores[b, valid]
        order = torch.sort(score, descending=True, stable=True).indices[:keep]
        windows.append(torch.cat([span[order].clamp(0, 1), score[order, None]], dim=1))  # (n, 3)
    return windows, outputs["saliency"]


def temporal_nms(windows, iou_threshold, mode="normal"):
    """FlashVTG's temporal NMS (the official inference.py, post_processing_mr_nms): suppressed
    windows are KEPT with their score set to 0 instead of being removed.

    Greedy, like every NMS: take the highest-scoring remaining window (the first one on a tie) and
    compare it with every window that comes after it, by the true IoU (intersection / union):
      mode "normal": a later window with IoU >= iou_threshold gets score 0 (inclusive test);
      mode "linear": every later window's score is multiplied by (1 - IoU) (soft-NMS; the
                     threshold is not used).
    Nothing is dropped, so the list keeps its length (50 windows); it is then sorted by descending
    score. In float32, as the official code (notes 28-29).

    Hand-worked example, threshold 0.7, windows in seconds:
        A [0, 10, 0.9], B [1, 10, 0.8], C [20, 30, 0.7], D [0, 8, 0.6]
      A is kept; IoU(A, B) = 9 / 10 = 0.9 >= 0.7 -> B = 0; IoU(A, C) = 0; IoU(A, D) = 8 / 10 = 0.8
      -> D = 0. Then C is the best remaining (0.7) and suppresses nothing new. Result:
        [[0, 10, 0.9], [20, 30, 0.7], [1, 10, 0.0], [0, 8, 0.0]]
      (a window at IoU exactly 0.7 is suppressed too: the test is >=).

    Args:
        windows: (N, 3) tensor or list of [start, end, score] rows (any time unit).
        iou_threshold: IoU at or above which a later window is zeroed ("normal").
        mode: "normal" or "linear".
    Returns:
        list of N [start, end, score] rows, sorted by descending score.
    """
    if mode not in ("normal", "linear"):
        raise ValueError(f"flashvtg.py temporal_nms: mode must be 'normal' or 'linear', "
                         f"got {mode!r}")
    rows = torch.as_tensor(windows, dtype=torch.float32).clone().reshape(-1, 3)   # (N, 3)
    for i in range(len(rows)):
        best = i + int(rows[i:, 2].argmax())                 # argmax returns the first maximum
        rows[[i, best]] = rows[[best, i]]                    # bring it to position i
        rest = rows[i + 1:]
        left = torch.maximum(rest[:, 0], rows[i, 0])
        right = torch.minimum(rest[:, 1], rows[i, 1])
        inter = (right - left).clamp(min=0)                  # (N - i - 1,)
        union = (rest[:, 1] - rest[:, 0]) + (rows[i, 1] - rows[i, 0]) - inter
        iou = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))
        if mode == "normal":
            rest[iou >= iou_threshold, 2] = 0.0
        else:
            rest[:, 2] *= 1 - iou
    order = torch.sort(rows[:, 2], descending=True, stable=True).indices
    return rows[order].tolist()


def nms(windows, cfg):
    """The training loop's NMS hook: the loop calls `module.nms(windows, cfg)` for a model module
    that defines `nms`, when cfg.nms_thd > 0, and writes the results beside the plain predictions.

    Contract:
        windows: ONE query's list of [start_s, end_s, score] rows, in seconds, already
            post-processed (common.postprocess_windows) and sorted by descending score.
        cfg: this file's Config; nms_thd is the IoU threshold (official 0.7).
    Returns the list of rows that replaces `windows` in the NMS predictions: here the same N rows,
    suppressed scores set to 0, re-sorted by score (temporal_nms, "normal" mode).
    """
    return temporal_nms(windows, cfg.nms_thd)


def build(cfg, video_dim, text_dim):
    """The model and its loss, as train.py builds every model: (FlashVTG, FlashVTGLoss)."""
    return FlashVTG(cfg, video_dim, text_dim), FlashVTGLoss(cfg)


# ----------------------------------------------------------------------------- Notes
# Where the official code differs from the paper, and we from it. Notes 1-15: the official code
# against the paper; we follow the code (it produced the published numbers; our parameter count
# equals the official model's). Notes 16-29: where we differ from the official code.
# Measured evidence: docs/flashvtg.md.
#
#  1. ACA (Eq. 1-3) has no query/key/value projections: the position-added clips are dotted directly
#     with [D~ + dummy positions; words]; only an output projection exists. Softmax over dummies and
#     words, values from the words only (as the paper says): a clip's word attention sums to < 1.
#  2. An ACA layer's FFN reads LN1(a) but its residual is added to the un-normalised a (CG-DETR's,
#     as QD-DETR's); residual branches use per-sample stochastic depth (DropPath), not dropout.
#  3. TFL (paper: F_1 = F): the official pyramid applies an IN-PLACE ReLU for its stride-1 level, so
#     every level (and the SampledNCE loss) sees ReLU(F). Level 2^p is its own stack of p
#     [Conv1d(k=2, s=2) -> LayerNorm -> ReLU] blocks on ReLU(F): parallel branches, not a cascade.
#  4. Moment head (paper Eq. 5: ReLU(Conv(ReLU(Conv F))) x C_k): Conv-ReLU-Conv, then exp(), times a
#     learnable per-level C_k (init 1). Outputs: distances to the start and to the end, in strides.
#  5. Score heads (paper: 2 conv layers, 1x5 kernel): QVH runs 1 temporal conv of kernel 5 and a
#     5-layer MLP (Config.kernel_size, num_conv_layers, num_mlp_layers; others: default_config). The
#     inter-scale conv slides across the seams between levels; x is unconstrained (init 0.5).
#  6. CAS loss (paper: per-query min-max normalisation): normalised with the min and max of the
#     WHOLE batch tensor, padding included, on the pre-sigmoid logits of level 1 (the first Lv
#     candidates).
#  7. Saliency loss: CG-DETR's composite (hinge + rank-contrastive + neg pairs) on the HD head, plus
#     the same terms and a BCE on the clips' total word attention (Config.lw_wattn; paper: its
#     supplement). QVH: 1 L_reg + 5 L_cls + 0.1 L_SNCE + 0.8 L_saliency + 4 L_CAS.
#  8. Inference: every candidate is decoded, the 50 most confident kept (Config.max_num_moment). NMS
#     0.7 (paper; Config.nms_thd) follows post-processing and zeroes suppressed scores instead of
#     removing windows (temporal_nms). Checkpoints are selected WITHOUT NMS, as official.
#  9. The learning rate is constant: the official loop calls StepLR.step(last_batch_loss), which
#     sets the epoch counter to the loss, so the rate only drops if a loss exceeds lr_drop (QVH 400:
#     never).
# 10. We keep the official Config.lr_drop and lr_gamma (0.5); with our per-epoch StepLR lr_drop is
#     >= the epochs (Charades: 50 = epochs, the drop would come after the last), so constant too.
# 11. The text position table (use_txt_pos off) exists but is never used, as in TR-DETR; kept for
#     the official parameter count (10,752 of 10,469,400 parameters).
# 12. A slip of the official saliency loss, kept (it shaped what was trained): in the attention part
#     the rank-contrastive term of the rows WITHOUT a real negative is added to the wrong variable,
#     so it is always dropped (saliency_composite_loss).
# 13. Another, kept too: in the main part that term is also dropped when exactly ONE such row exists
#     (a spurious extra dimension makes its softmax run over a single element).
# 14. TVSum (Config.mr_loss False; official data/HD.py): the score heads' BCE targets are the raw
#     saliency labels (0..12), not 0/1. For a target y > 1 the BCE, (1 - y) x + log(1 + e^-x) for
#     large x, has no minimum: it falls without end as the logit x grows.
# 15. So the logits grow at every step and pull the shared encoder along; the val video's HD ranking
#     stops changing after a few dozen epochs. Kept: it is the official TVSum recipe. With its
#     protocol (the best of 600 evaluations), the selected epoch is one of the first few.
# 16. ACA mask (Config.t2v_mask_bug): the official layer also passes attn_mask = outer(clip pad, key
#     pad), tiled head-major but read batch-major (TR-DETR's slip): item b, head h gets the mask of
#     item (b * nhead + h) mod B, hiding real pairs of b where another item is padded.
# 17. By default we use the key padding mask alone; t2v_mask_bug = True reproduces the slip (in the
#     negative pass over the whole batch; official: over the rows with a real negative only, so the
#     two differ when some rows have none). Not negligible on padded batches.
# 18. Negative pairs (Config.use_neg): each sample also runs with the next sample's text. The
#     official model skips rows whose "original video" is the next row's (Config.neg_strip_segment:
#     QVH vids minus _start_end, so two 150-s segments of one YouTube video match; else whole vids).
# 19. Our model sees only tensors, not vids, so it runs the negative pass for every row and the loss
#     keeps the rows with a real negative (batch["meta"]). Without the mask bug every row is
#     independent, so the losses are the same; only the random dropout draws differ.
# 20. Label assignment's GT windows come from batch["span_targets"] (normalised by the loaded clip
#     count): x n_clips gives seconds / clip_len, the official units, rounded to 1e-4 clip so that
#     float error never moves a window edge across a point (gt_windows_in_clips).
# 21. data.py keeps at most 5 GT windows per query (random if more) and 32 query tokens; the
#     official loader keeps every window (3.6% of QVH train queries have more than 5) and 40 tokens
#     on QVH: data_settings("qvh") applies both.
# 22. Degenerate batches: the official L1 loss is 0/0 = NaN when no point is positive, the CAS loss
#     NaN when all labels (or all logits) in the batch are equal; we return 0 for those terms.
#     Neither happens in the official runs.
# 23. Layers are built independently (the official code deep-copies one layer: its two dummy-encoder
#     layers start equal). Else the official inits: trunc_normal(std 0.02) ACA/encoder matrices,
#     normal(std 0.02) token types, normal(std 1) dummies and positions, torch defaults elsewhere.
# 24. The score heads are Conv1d: the official Conv2d with a (1, k) kernel on a height-1 map is the
#     same function with the same parameters. Their width follows hidden_dim (official: a fixed 256,
#     the same).
# 25. The official evaluation runs one query at a time (asserted). predict handles padded batches
#     (drops candidates on padding), but the HD head averages over padded clips and the inter-scale
#     head slides over them, so Config.eval_batch_size is 1, as official.
# 26. Data (data.py, every model): the official loader draws the random saliency pairs ONCE at
#     preload (data.py: every epoch, like Moment-DETR's) and builds Charades-STA clip labels with
#     clip length duration / n_clips (data.py: 1 s; at most one clip apart).
# 27. predict normalises windows by the clip count (the loop multiplies by the duration); the
#     official code multiplies clips by clip_len and clamps to the duration. Equal when duration =
#     n_clips x clip_len (99% of QVH); predict(meta=...) does the official arithmetic.
# 28. temporal_nms sorts stably (the official sort is not: only windows with equal scores move, in
#     practice the zeroed ones, which the metrics see last) and computes in float32 as the official
#     code does: 0.9123 comes back as 0.9122999906539917, as in the official NMS files.
# 29. A zero-length window (start = end, possible after rounding to the clip grid) has IoU 0 with
#     everything in temporal_nms; the official 0 / 0 = NaN passes no threshold test (the same result
#     in "normal" mode; in "linear" mode it would make scores NaN).
