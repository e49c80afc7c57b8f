/* fdq board kernels: fused preprocessing and decode + NMS for SSD-style face detectors.
 *
 * Plain C99 + libm, compiled on the board at first use by fdq.device.kernels and loaded with
 * ctypes. Every kernel reproduces the numpy reference in fdq.device (preprocess.py, decode.py,
 * nms.py) with the same float32 operations in the same order, so results match it.
 * Arrays are C-contiguous; indices are int64 to match numpy's default integer.
 */
#ifndef FDQ_KERNELS_H
#define FDQ_KERNELS_H

#include <stdint.h>

/* HWC BGR uint8 -> NCHW float32 (batch 1) minus the per-channel mean. */
void fdq_normalize_u8(const uint8_t *src, int64_t height, int64_t width,
                       float mean_b, float mean_g, float mean_r, float *dst);

/* Same for the float32 HWC image the reference protocol resizes. */
void fdq_normalize_f32(const float *src, int64_t height, int64_t width,
                       float mean_b, float mean_g, float mean_r, float *dst);

/* HWC BGR uint8 -> quantized uint8 input of an int8 model, as torch.quantize_per_tensor:
 * q = clamp(nearbyint((x - mean) * (1 / scale)) + zero_point, 0, 255). The output keeps the
 * interleaved HWC order (dst[i] from src[i]): the channels-last (NHWC) memory of the NCHW tensor,
 * which x86 / onednn quantized convolutions read without the copy an NCHW input costs. */
void fdq_quantize_u8(const uint8_t *src, int64_t height, int64_t width,
                     float mean_b, float mean_g, float mean_r, float scale, int32_t zero_point, uint8_t *dst);

/* Number of scores strictly above threshold: sizes the outputs of fdq_decode. */
int64_t fdq_count_above(const float *scores, int64_t n, float threshold);

/* Decode the anchors whose score is strictly above threshold, in ascending anchor order.
 * loc (n,4), scores (n), landm (n,10), priors (n,4) as (cx, cy, w, h); (sx, sy) turns normalised
 * coordinates into original-image pixels. Writes index, score, box (x1, y1, x2, y2) and 5 landmark
 * points per candidate (outputs sized by fdq_count_above) and returns the candidate count. */
int64_t fdq_decode(const float *loc, const float *scores, const float *landm, const float *priors,
                   int64_t n, float var0, float var1, float sx, float sy, float threshold,
                   int64_t *index, float *cand_scores, float *boxes, float *points);

/* Sort by descending score (ties: ascending position), then greedy NMS with the +1 pixel
 * convention, suppressing IoU > iou_threshold. Writes kept positions into boxes/scores (count
 * entries at most) and returns how many were kept, or -1 if memory ran out. */
int64_t fdq_nms(const float *boxes, const float *scores, int64_t count, float iou_threshold, int64_t *keep);

/* fdq_decode + fdq_nms in one call (one crossing from Python instead of several): writes one row
 * per kept detection, by descending score, of 15 floats (x1, y1, x2, y2, score, 10 landmark
 * coordinates) into out (room for n rows) and returns the kept count, or -1 if memory ran out. */
int64_t fdq_postprocess(const float *loc, const float *scores, const float *landm, const float *priors,
                        int64_t n, float var0, float var1, float sx, float sy, float score_threshold,
                        float iou_threshold, float *out);

#endif
