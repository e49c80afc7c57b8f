/* fdq board kernels; see fdq_kernels.h. Matching numpy bit for bit needs three things:
 * float (not double) arithmetic, numpy's order of operations, and no fused multiply-add
 * (the build passes -ffp-contract=off; the pragma covers compilers that honour it). */
#include "fdq_kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__clang__) || !defined(__GNUC__) /* GCC ignores it (and warns under -Wall) */
#pragma STDC FP_CONTRACT OFF
#endif

void fdq_normalize_u8(const uint8_t *src, int64_t height, int64_t width,
                       float mean_b, float mean_g, float mean_r, float *dst)
{
    const int64_t plane = height * width;
    float *restrict b = dst, *restrict g = dst + plane, *restrict r = dst + 2 * plane;
    for (int64_t i = 0; i < plane; ++i) {
        b[i] = (float)src[3 * i] - mean_b;
        g[i] = (float)src[3 * i + 1] - mean_g;
        r[i] = (float)src[3 * i + 2] - mean_r;
    }
}

void fdq_normalize_f32(const float *src, int64_t height, int64_t width,
                       float mean_b, float mean_g, float mean_r, float *dst)
{
    const int64_t plane = height * width;
    float *restrict b = dst, *restrict g = dst + plane, *restrict r = dst + 2 * plane;
    for (int64_t i = 0; i < plane; ++i) {
        b[i] = src[3 * i] - mean_b;
        g[i] = src[3 * i + 1] - mean_g;
        r[i] = src[3 * i + 2] - mean_r;
    }
}

/* torch (fbgemm, its ARM path and the generic quantize_val alike) multiplies by 1.0f / scale,
 * rounds half to even, then adds the zero point and saturates. */
static inline uint8_t quantize_one(float x, float inv_scale, float zero_point)
{
    float q = nearbyintf(x * inv_scale) + zero_point;
    q = q < 0.0f ? 0.0f : q;
    q = q > 255.0f ? 255.0f : q;
    return (uint8_t)q;
}

/* A uint8 channel value has 256 possible results: a table per channel, filled with quantize_one
 * itself (so the values are the same), turns the per-element float multiply and rounding into one
 * lookup. Counted on a 320x240 frame (GCC 12 -O3): x86-64 6.8 -> 4.4 instructions a value (callgrind),
 * the emulated Cortex-A72 4.3 either way (the qemu counter): it pays on x86 and costs nothing on ARM. */
void fdq_quantize_u8(const uint8_t *src, int64_t height, int64_t width,
                     float mean_b, float mean_g, float mean_r, float scale, int32_t zero_point, uint8_t *dst)
{
    const int64_t plane = height * width;
    const float inv = 1.0f / scale, zp = (float)zero_point;
    uint8_t lut_b[256], lut_g[256], lut_r[256];
    for (int v = 0; v < 256; ++v) {
        lut_b[v] = quantize_one((float)v - mean_b, inv, zp);
        lut_g[v] = quantize_one((float)v - mean_g, inv, zp);
        lut_r[v] = quantize_one((float)v - mean_r, inv, zp);
    }
    uint8_t *restrict out = dst; /* same interleaved order as src: no transpose */
    for (int64_t i = 0; i < plane; ++i) {
        out[3 * i] = lut_b[src[3 * i]];
        out[3 * i + 1] = lut_g[src[3 * i + 1]];
        out[3 * i + 2] = lut_r[src[3 * i + 2]];
    }
}

int64_t fdq_count_above(const float *scores, int64_t n, float threshold)
{
    int64_t count = 0;
    for (int64_t i = 0; i < n; ++i)
        count += scores[i] > threshold;
    return count;
}

int64_t fdq_decode(const float *loc, const float *scores, const float *landm, const float *priors,
                   int64_t n, float var0, float var1, float sx, float sy, float threshold,
                   int64_t *index, float *cand_scores, float *boxes, float *points)
{
    int64_t k = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (!(scores[i] > threshold))
            continue;
        const float *p = priors + 4 * i, *l = loc + 4 * i, *m = landm + 10 * i;
        /* decode_boxes: centre = p_xy + l_xy * v0 * p_wh; size = p_wh * exp(l_wh * v1). */
        const float cx = p[0] + l[0] * var0 * p[2];
        const float cy = p[1] + l[1] * var0 * p[3];
        const float w = p[2] * expf(l[2] * var1);
        const float h = p[3] * expf(l[3] * var1);
        const float x1 = cx - w / 2.0f, y1 = cy - h / 2.0f;
        float *box = boxes + 4 * k, *pt = points + 10 * k;
        box[0] = x1 * sx;
        box[1] = y1 * sy;
        box[2] = (x1 + w) * sx;
        box[3] = (y1 + h) * sy;
        /* decode_landmarks: p_xy + l * v0 * p_wh per point. */
        for (int j = 0; j < 5; ++j) {
            pt[2 * j] = (p[0] + m[2 * j] * var0 * p[2]) * sx;
            pt[2 * j + 1] = (p[1] + m[2 * j + 1] * var0 * p[3]) * sy;
        }
        index[k] = i;
        cand_scores[k] = scores[i];
        ++k;
    }
    return k;
}

/* Stable merge sort of positions by descending score: ties keep ascending position, like
 * np.argsort(-scores, kind="stable"). */
static void sort_by_score(int64_t *order, int64_t *tmp, int64_t count, const float *scores)
{
    int64_t *src = order, *dst = tmp;
    for (int64_t run = 1; run < count; run *= 2) {
        for (int64_t lo = 0; lo < count; lo += 2 * run) {
            const int64_t mid = lo + run < count ? lo + run : count;
            const int64_t hi = lo + 2 * run < count ? lo + 2 * run : count;
            int64_t a = lo, b = mid, out = lo;
            while (a < mid && b < hi)
                dst[out++] = scores[src[b]] > scores[src[a]] ? src[b++] : src[a++];
            while (a < mid)
                dst[out++] = src[a++];
            while (b < hi)
                dst[out++] = src[b++];
        }
        int64_t *swap = src;
        src = dst;
        dst = swap;
    }
    if (src != order)
        memcpy(order, src, (size_t)count * sizeof *order);
}

int64_t fdq_nms(const float *boxes, const float *scores, int64_t count, float iou_threshold, int64_t *keep)
{
    if (count <= 0)
        return 0;
    int64_t *order = malloc(2 * (size_t)count * sizeof *order);
    float *coords = malloc(5 * (size_t)count * sizeof *coords);
    int32_t *suppressed = calloc((size_t)count, sizeof *suppressed);
    if (!order || !coords || !suppressed) {
        free(order);
        free(coords);
        free(suppressed);
        return -1;
    }
    for (int64_t i = 0; i < count; ++i)
        order[i] = i;
    sort_by_score(order, order + count, count, scores);

    /* Sorted structure-of-arrays copies and 32-bit flags keep the inner loop contiguous and
     * vectorisable; it visits already suppressed boxes too, which is cheaper than skipping them. */
    float *restrict x1 = coords, *restrict y1 = coords + count, *restrict x2 = coords + 2 * count;
    float *restrict y2 = coords + 3 * count, *restrict area = coords + 4 * count;
    for (int64_t i = 0; i < count; ++i) {
        const float *b = boxes + 4 * order[i];
        x1[i] = b[0];
        y1[i] = b[1];
        x2[i] = b[2];
        y2[i] = b[3];
        area[i] = (x2[i] - x1[i] + 1.0f) * (y2[i] - y1[i] + 1.0f);
    }

    int64_t kept = 0;
    for (int64_t i = 0; i < count; ++i) {
        if (suppressed[i])
            continue;
        keep[kept++] = order[i];
        const float ax1 = x1[i], ay1 = y1[i], ax2 = x2[i], ay2 = y2[i], aarea = area[i];
        for (int64_t j = i + 1; j < count; ++j) {
            const float xx1 = ax1 > x1[j] ? ax1 : x1[j];
            const float yy1 = ay1 > y1[j] ? ay1 : y1[j];
            const float xx2 = ax2 < x2[j] ? ax2 : x2[j];
            const float yy2 = ay2 < y2[j] ? ay2 : y2[j];
            float w = xx2 - xx1 + 1.0f, h = yy2 - yy1 + 1.0f;
            w = w > 0.0f ? w : 0.0f;
            h = h > 0.0f ? h : 0.0f;
            const float inter = w * h;
            suppressed[j] |= inter / (aarea + area[j] - inter) > iou_threshold;
        }
    }
    free(order);
    free(coords);
    free(suppressed);
    return kept;
}

int64_t fdq_postprocess(const float *loc, const float *scores, const float *landm, const float *priors,
                        int64_t n, float var0, float var1, float sx, float sy, float score_threshold,
                        float iou_threshold, float *out)
{
    const int64_t count = fdq_count_above(scores, n, score_threshold);
    if (count == 0)
        return 0;
    int64_t *index = malloc(2 * (size_t)count * sizeof *index);
    float *values = malloc(15 * (size_t)count * sizeof *values);
    if (!index || !values) {
        free(index);
        free(values);
        return -1;
    }
    int64_t *keep = index + count;
    float *cand_scores = values, *boxes = values + count, *points = values + 5 * count;
    fdq_decode(loc, scores, landm, priors, n, var0, var1, sx, sy, score_threshold,
               index, cand_scores, boxes, points);
    const int64_t kept = fdq_nms(boxes, cand_scores, count, iou_threshold, keep);
    for (int64_t k = 0; k < kept; ++k) {
        const int64_t c = keep[k];
        float *row = out + 15 * k;
        memcpy(row, boxes + 4 * c, 4 * sizeof *row);
        row[4] = cand_scores[c];
        memcpy(row + 5, points + 10 * c, 10 * sizeof *row);
    }
    free(index);
    free(values);
    return kept;
}
