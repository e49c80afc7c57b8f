"""Training losses for quantization-aware fine-tuning of the face detectors.

* :func:`match`: SSD / RetinaFace anchor matching (IoU threshold 0.35, every face also gets its
  best anchor) and target encoding with the variances (0.1, 0.2) of :mod:`fdq.device.decode`.
* :func:`multibox_loss`: smooth-L1 box loss on positive anchors, cross-entropy with 3:1 hard negative
  mining, smooth-L1 landmark loss on the positives whose face has landmarks; each divided by the number
  of positives.
* :func:`distillation_loss`: a frozen float teacher's outputs as soft targets: KL divergence of the
  2-way face / background distributions on every anchor, and smooth-L1 on the box (and landmark)
  regressions of the anchors where the teacher is confident.
* :func:`output_match_loss`: L1 between the raw outputs (face logit, box offsets) on the anchors the
  teacher scores >= 0.1: the int8-against-float output error of the calibration report, as a loss.

All tensors are batched: ``loc`` (B, N, 4), ``logits`` (B, N, 2), ``landm`` (B, N, 10), priors (N, 4) in
normalised (cx, cy, w, h) form as returned by :func:`fdq.device.anchors.prior_boxes`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

VARIANCES = (0.1, 0.2)


def point_form(priors: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    return torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], dim=1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(K, 4) x (N, 4) corner boxes -> (K, N) IoU (continuous coordinates)."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-12)


def encode(matched: torch.Tensor, priors: torch.Tensor, variances: Sequence[float] = VARIANCES) -> torch.Tensor:
    """Corner boxes matched to each prior -> regression targets (inverse of ``decode_boxes``)."""
    centers = ((matched[:, :2] + matched[:, 2:]) / 2 - priors[:, :2]) / (variances[0] * priors[:, 2:])
    sizes = ((matched[:, 2:] - matched[:, :2]).clamp(min=1e-8) / priors[:, 2:]).log() / variances[1]
    return torch.cat([centers, sizes], dim=1)


def encode_landmarks(points: torch.Tensor, priors: torch.Tensor,
                     variances: Sequence[float] = VARIANCES) -> torch.Tensor:
    """(N, 10) points (x0, y0, ...) -> regression targets (inverse of ``decode_landmarks``)."""
    p = points.reshape(-1, 5, 2)
    return ((p - priors[:, None, :2]) / (variances[0] * priors[:, None, 2:])).reshape(-1, 10)


@dataclass
class MatchTargets:
    """Per-anchor targets of one image."""

    loc: torch.Tensor          # (N, 4) encoded box targets (meaningful where ``labels`` is 1)
    labels: torch.Tensor       # (N,) int64, 1 face, 0 background
    landm: torch.Tensor        # (N, 10) encoded landmark targets
    landm_valid: torch.Tensor  # (N,) bool: positive anchor whose face has landmarks


def match(boxes: torch.Tensor, priors: torch.Tensor, threshold: float = 0.35,
          variances: Sequence[float] = VARIANCES, landmarks: Optional[torch.Tensor] = None,
          min_best_overlap: float = 0.2) -> MatchTargets:
    """RetinaFace matching of (K, 4) normalised corner ``boxes`` to (N, 4) priors.

    An anchor is positive if its best face overlaps it by ``>= threshold``; in addition every face whose
    best anchor overlaps it by at least ``min_best_overlap`` claims that anchor. ``landmarks`` (K, 10)
    normalised points, with any negative coordinate meaning "no landmarks" (the WIDER convention -1).
    """
    n = priors.shape[0]
    dev = priors.device
    empty = MatchTargets(torch.zeros(n, 4, device=dev), torch.zeros(n, dtype=torch.long, device=dev),
                         torch.zeros(n, 10, device=dev), torch.zeros(n, dtype=torch.bool, device=dev))
    if boxes.numel() == 0:
        return empty
    overlaps = box_iou(boxes, point_form(priors))                 # (K, N)
    best_prior_overlap, best_prior = overlaps.max(dim=1)          # per face
    valid = best_prior_overlap >= min_best_overlap
    if not bool(valid.any()):
        return empty
    best_truth_overlap, best_truth = overlaps.max(dim=0)          # per anchor
    for k in torch.nonzero(valid).flatten().tolist():             # each valid face keeps its best anchor
        best_truth_overlap[best_prior[k]] = 2.0
        best_truth[best_prior[k]] = k
    labels = (best_truth_overlap >= threshold).long()
    loc = encode(boxes[best_truth], priors, variances)
    if landmarks is not None and landmarks.numel():
        pts = landmarks[best_truth]
        landm = encode_landmarks(pts, priors, variances)
        landm_valid = (labels > 0) & (pts >= 0).all(dim=1)
    else:
        landm = torch.zeros(n, 10, device=dev)
        landm_valid = torch.zeros(n, dtype=torch.bool, device=dev)
    return MatchTargets(loc, labels, landm, landm_valid)


def stack_targets(targets: Sequence[MatchTargets]) -> MatchTargets:
    """Per-image targets -> batched (B, N, ...) targets."""
    return MatchTargets(torch.stack([t.loc for t in targets]), torch.stack([t.labels for t in targets]),
                        torch.stack([t.landm for t in targets]), torch.stack([t.landm_valid for t in targets]))


def multibox_loss(loc: torch.Tensor, logits: torch.Tensor, landm: torch.Tensor, targets: MatchTargets,
                  neg_pos_ratio: int = 3, valid: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """SSD / RetinaFace multibox loss of batched predictions against batched :class:`MatchTargets`.

    ``valid`` (B, N) bool marks the anchors that may be used at all (e.g. not in batch padding);
    default all. Returns {"loc", "conf", "landm", "total"} (total = loc + conf + landm, the RetinaFace
    weighting with loc weight 1), each normalised by the number of positive anchors (at least 1).
    Hard negative mining keeps, per image, the ``neg_pos_ratio`` x positives background anchors with
    the highest loss (at least ``neg_pos_ratio`` of them when an image has no face, so that false
    positives on faceless images are still penalised).
    """
    labels = targets.labels
    if valid is None:
        valid = torch.ones_like(labels, dtype=torch.bool)
    pos = (labels > 0) & valid
    num_pos = pos.sum().clamp(min=1).float()

    loss_l = F.smooth_l1_loss(loc[pos], targets.loc[pos], reduction="sum") / num_pos
    lv = targets.landm_valid & pos
    loss_landm = (F.smooth_l1_loss(landm[lv], targets.landm[lv], reduction="sum") / lv.sum().clamp(min=1).float()
                  if bool(lv.any()) else landm.sum() * 0.0)   # zero, but through the landmark head (DDP)

    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    ce = ce.reshape(labels.shape)
    with torch.no_grad():
        mining = ce.detach().clone()
        mining[pos | ~valid] = -1.0                                # never pick positives or padding
        order = mining.argsort(dim=1, descending=True)
        rank = order.argsort(dim=1)
        n_valid_neg = ((~pos) & valid).sum(dim=1, keepdim=True)
        num_neg = (neg_pos_ratio * pos.sum(dim=1, keepdim=True).clamp(min=1)).clamp(max=n_valid_neg)
        neg = (rank < num_neg) & ~pos & valid
    loss_c = ce[pos | neg].sum() / num_pos
    return {"loc": loss_l, "conf": loss_c, "landm": loss_landm, "total": loss_l + loss_c + loss_landm}


def distillation_loss(student: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                      teacher: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                      confident: float = 0.5, temperature: float = 1.0,
                      valid: Optional[torch.Tensor] = None,
                      box_weight: float = 1.0, landm_weight: float = 0.5,
                      min_faces: float = 8.0) -> Dict[str, torch.Tensor]:
    """Soft-target loss between a student ``(loc, logits, landm)`` and a frozen teacher.

    Both score tensors are logits (B, N, 2) (a model in training mode with BatchNorm in eval mode gives
    them; ``log`` of an eval-mode model's softmax output works as well). Terms:

    * ``score``: KL(teacher || student) of the 2-way softmax at ``temperature`` (times T^2), summed over
      the anchors and divided by the number of confident anchors (teacher face score >= ``confident``),
      the same normaliser as the box term, so both are per-face quantities. The normaliser is at least
      ``min_faces`` per image: on an image where the teacher sees no face a division by ~1 would turn the
      summed background KL into huge gradients (a small input size made fine-tuning diverge);
    * ``loc`` / ``landm``: smooth-L1 between the regressions on the confident anchors, weighted by the
      teacher's face score.

    ``valid`` (B, N) bool excludes anchors (batch padding). Returns {"score", "loc", "landm", "total"}.
    """
    s_loc, s_logits, s_landm = student
    t_loc, t_scores, t_landm = (t.detach() for t in teacher)
    t_logp = F.log_softmax(t_scores / temperature, dim=-1)
    s_logp = F.log_softmax(s_logits / temperature, dim=-1)
    if valid is None:
        valid = torch.ones(s_logits.shape[:2], dtype=torch.bool, device=s_logits.device)
    t_face = F.softmax(t_scores, dim=-1)[..., 1]
    conf = (t_face >= confident) & valid
    norm = conf.sum().float().clamp(min=max(1.0, min_faces * s_logits.shape[0]))

    kl = (t_logp.exp() * (t_logp - s_logp)).sum(dim=-1)              # (B, N)
    score = (kl * valid).sum() * (temperature ** 2) / norm
    w = t_face[conf]
    if bool(conf.any()):
        loc = (F.smooth_l1_loss(s_loc[conf], t_loc[conf], reduction="none").sum(-1) * w).sum() / norm
        landm = (F.smooth_l1_loss(s_landm[conf], t_landm[conf], reduction="none").sum(-1) * w).sum() / norm
    else:
        loc, landm = s_loc.sum() * 0.0, s_landm.sum() * 0.0   # zero, but through both heads (DDP)
    total = score + box_weight * loc + landm_weight * landm
    return {"score": score, "loc": loc, "landm": landm, "total": total}


def output_match_loss(student: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                      teacher: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                      min_score: float = 0.1, valid: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Mean |student - teacher| of the face logit and of the box offsets on the anchors the teacher
    scores >= ``min_score``: what the calibration report's ``out err`` measures on int8 against float.

    The KL and score-weighted smooth-L1 of :func:`distillation_loss` barely pull on the mid-score anchors
    (smooth-L1 of an offset error of 0.05 has a gradient of 0.05, times a weight of 0.1-0.5), which
    are most of those the output error counts; L1 gives every counted anchor the same pull.
    Returns {"logit", "loc", "total"} (zero, through both heads, where no anchor is counted).
    """
    s_loc, s_logits = student[0], student[1]
    t_loc, t_logits = teacher[0].detach(), teacher[1].detach()
    keep = F.softmax(t_logits, dim=-1)[..., 1] >= min_score
    if valid is not None:
        keep = keep & valid
    if not bool(keep.any()):
        zero = s_loc.sum() * 0.0 + s_logits.sum() * 0.0
        return {"logit": zero, "loc": zero, "total": zero}
    margin = s_logits[..., 1] - s_logits[..., 0]
    t_margin = t_logits[..., 1] - t_logits[..., 0]
    logit = (margin[keep] - t_margin[keep]).abs().mean()
    loc = (s_loc[keep] - t_loc[keep]).abs().mean()
    return {"logit": logit, "loc": loc, "total": logit + loc}

