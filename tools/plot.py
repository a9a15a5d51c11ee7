"""Pictures of predictions: one standalone SVG per query, drawn from a predictions file and the
ground truth (no model, no plotting library).

    python tools/plot.py --preds results/trdetr_synthetic/val_preds.jsonl \
                         --gt features/synthetic/highlight_val_release.jsonl --qids 1002
    python tools/plot.py --preds RUN/val_preds.jsonl --gt ANNOTATIONS.jsonl --first 5 --out plots/

Each picture: over the video's time axis, the ground-truth windows (green bands), the annotators'
mean score per clip (grey bars; QVHighlights 0..4, TVSum 1..5, none for Charades-STA) and the
predicted saliency (blue, min-max scaled: only its ranking matters to the metrics); below, the
top-3 predicted windows with their scores (orange), the best first.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # repo root

import metrics  # noqa: E402


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preds", required=True, help="predictions, official submission format (jsonl)")
    p.add_argument("--gt", required=True, help="the split's annotations (jsonl)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--qids", type=int, nargs="+", metavar="QID", help="these queries")
    which.add_argument("--first", type=int, default=5, metavar="N",
                       help="the first N queries of --preds (default 5)")
    p.add_argument("--out", help="folder for <qid>.svg (default: plots/ beside --preds)")
    p.add_argument("--clip-len", type=float, default=None,
                   help="seconds per clip (default: 1 for Charades-STA, else 2)")
    args = p.parse_args(argv)
    try:
        rows, gt = metrics.read_jsonl(args.preds), metrics.read_jsonl(args.gt)
    except (OSError, metrics.MetricsInputError) as err:
        raise SystemExit(f"error: {err}") from None
    gt_by_qid = {g["qid"]: g for g in gt}
    clip_len = args.clip_len or (1 if metrics.detect_dataset(gt) == "charades" else 2)
    if args.qids:
        missing = [q for q in args.qids if q not in {r["qid"] for r in rows}]
        if missing:
            raise SystemExit(f"--qids: {missing} not in {args.preds}")
        chosen = [r for r in rows if r["qid"] in set(args.qids)]
    else:
        chosen = rows[:args.first]
    no_gt = [r["qid"] for r in chosen if r["qid"] not in gt_by_qid]
    if no_gt:
        raise SystemExit(f"{args.gt} has no line for the qid(s) {no_gt}: is it the same split?")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.preds)), "plots")
    os.makedirs(out, exist_ok=True)
    for row in chosen:
        metrics.write_text_atomic(os.path.join(out, f"{row['qid']}.svg"),
                                  prediction_svg(row, gt_by_qid[row["qid"]], clip_len))
    print(f"{len(chosen)} plots in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
