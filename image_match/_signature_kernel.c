/*
 * The compiled signature kernel: image-match 1.x's signature (goldberg.signature_from_grey with
 * variant="1.x") computed in one call, from 8-bit pixels or a grey array.
 *
 * It is an optimization of the numpy reference in goldberg.py and loading.py, which stays the
 * definition: every floating-point operation that decides a signature is the reference's, in the
 * reference's order, so that the signatures are equal bit for bit (tests/test_kernel.py). Where
 * the reference's order is numpy's own (its sums of a row's variation), the kernel adds in an
 * order of its own: see goldberg._variations for why the crop cannot tell.
 *
 * What the kernel saves is numpy's cost per call (a signature is a few dozen calls on small
 * arrays) and the float copy of the image: grey levels are made from 8-bit pixels a row at a
 * time, by the tables of loading (GREY_TABLES: 1.x's float64 grey of red, green and blue;
 * YCBCR_GREY_TABLES: the same weights on a JPEG's Y, Cb and Cr; DRAFT_GREY_TABLE: 8-bit grey
 * in float32).
 *
 * Python entry point: signature(...), see its docstring below; image_match/kernel.py wraps it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The reference's arithmetic is IEEE single and double precision, each operation rounded on its
 * own. Excess precision (x87) or fused multiply-adds would round differently; the build asks
 * for -ffp-contract=off, and these refuse a build that could not match (the package then uses
 * the numpy reference). */
#if defined(__FAST_MATH__)
#error "the signature kernel needs IEEE arithmetic: build it without -ffast-math"
#endif
#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "the signature kernel needs float and double arithmetic without excess precision"
#endif
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* How grey levels are made of the pixels (image_match/kernel.py maps GreySource rules here). */
enum rule {
    GREY_U8 = 0,  /* the uint8 array is the grey (1.x's 0-255 scale; differences wrap mod 256) */
    GREY_F32 = 1, /* the float32 array is the grey */
    GREY_F64 = 2, /* the float64 array is the grey */
    DRAFT8 = 3,   /* uint8 grey v -> float32 table[v] */
    TABLES3 = 4   /* three uint8 channels a, b, c -> (table[a] + table[256 + b]) + table[512 + c]
                     (red, green, blue, or a draft decode's Y, Cb, Cr) */
};

/* ---- Apache Arrow's C data interface (a stable ABI), to read a PIL image without a copy ---- */

struct ArrowSchema {
    const char *format;
    const char *name;
    const char *metadata;
    int64_t flags;
    int64_t n_children;
    struct ArrowSchema **children;
    struct ArrowSchema *dictionary;
    void (*release)(struct ArrowSchema *);
    void *private_data;
};

struct ArrowArray {
    int64_t length;
    int64_t null_count;
    int64_t offset;
    int64_t n_buffers;
    int64_t n_children;
    const void **buffers;
    struct ArrowArray **children;
    struct ArrowArray *dictionary;
    void (*release)(struct ArrowArray *);
    void *private_data;
};

/* ---- the pixels ---------------------------------------------------------------------------- */

typedef struct {
    const char *base;             /* pixel (0, 0) */
    Py_ssize_t height, width;
    Py_ssize_t row_stride, column_stride, channel_stride; /* bytes */
    int rule;
    const float *table32;         /* DRAFT8: 256 values */
    const double *table64;        /* TABLES3: 3 x 256 values */
} Source;

/* Row i of a float32 grey, as a pointer into the source where it is contiguous, else filled
 * into buffer (columns [0, width)). */
static const float *
row_f32(const Source *s, Py_ssize_t i, Py_ssize_t width, float *buffer)
{
    const char *row = s->base + i * s->row_stride;
    Py_ssize_t j;
    if (s->rule == GREY_F32) {
        if (s->column_stride == (Py_ssize_t)sizeof(float)) {
            return (const float *)row;
        }
        for (j = 0; j < width; j++) {
            buffer[j] = *(const float *)(row + j * s->column_stride);
        }
        return buffer;
    }
    /* DRAFT8 */
    if (s->column_stride == 1) {
        const unsigned char *p = (const unsigned char *)row;
        for (j = 0; j < width; j++) {
            buffer[j] = s->table32[p[j]];
        }
    }
    else {
        for (j = 0; j < width; j++) {
            buffer[j] = s->table32[*(const unsigned char *)(row + j * s->column_stride)];
        }
    }
    return buffer;
}

static const double *
row_f64(const Source *s, Py_ssize_t i, Py_ssize_t width, double *buffer)
{
    const char *row = s->base + i * s->row_stride;
    Py_ssize_t j;
    if (s->rule == GREY_F64) {
        if (s->column_stride == (Py_ssize_t)sizeof(double)) {
            return (const double *)row;
        }
        for (j = 0; j < width; j++) {
            buffer[j] = *(const double *)(row + j * s->column_stride);
        }
        return buffer;
    }
    /* TABLES3: the reference adds (first + second) + third, as (red + green) + blue. */
    {
        const double *first = s->table64, *second = s->table64 + 256, *third = s->table64 + 512;
        const Py_ssize_t cs = s->column_stride, ch = s->channel_stride;
        const unsigned char *p = (const unsigned char *)row;
        for (j = 0; j < width; j++, p += cs) {
            buffer[j] = (first[p[0]] + second[p[ch]]) + third[p[2 * ch]];
        }
    }
    return buffer;
}

static const unsigned char *
row_u8(const Source *s, Py_ssize_t i, Py_ssize_t width, unsigned char *buffer)
{
    const char *row = s->base + i * s->row_stride;
    Py_ssize_t j;
    if (s->column_stride == 1) {
        return (const unsigned char *)row;
    }
    for (j = 0; j < width; j++) {
        buffer[j] = *(const unsigned char *)(row + j * s->column_stride);
    }
    return buffer;
}

static int
is_float32_domain(const Source *s)
{
    return s->rule == GREY_F32 || s->rule == DRAFT8;
}

static int
is_float64_domain(const Source *s)
{
    return s->rule == GREY_F64 || s->rule == TABLES3;
}

/* ---- step 1: the crop window ----------------------------------------------------------------- */

/* The sum of |row[j + 1] - row[j]| along a row, each difference in the row's own type, added in
 * double in an order of its own (see goldberg._variations: the order does not matter here).
 * The differences are made in a vectorizable loop, then added in four independent sums (one
 * would be a chain of dependent additions). differences: width doubles. */
static double
sum_of_four(const double *values, Py_ssize_t count)
{
    double a = 0.0, b = 0.0, c = 0.0, d = 0.0;
    Py_ssize_t j;
    for (j = 0; j + 4 <= count; j += 4) {
        a += values[j];
        b += values[j + 1];
        c += values[j + 2];
        d += values[j + 3];
    }
    for (; j < count; j++) {
        a += values[j];
    }
    return (a + b) + (c + d);
}

static double
row_sum_f32(const float *row, Py_ssize_t width, double *differences)
{
    Py_ssize_t j;
    for (j = 0; j + 1 < width; j++) {
        differences[j] = (double)fabsf(row[j + 1] - row[j]);
    }
    return sum_of_four(differences, width - 1);
}

static double
row_sum_f64(const double *row, Py_ssize_t width, double *differences)
{
    Py_ssize_t j;
    for (j = 0; j + 1 < width; j++) {
        differences[j] = fabs(row[j + 1] - row[j]);
    }
    return sum_of_four(differences, width - 1);
}

/* Row and column variations (goldberg._variations): absolute differences in the grey's own type,
 * float ones summed in double. Integer sums are exact; they are returned as doubles (exact below
 * 2**53: 255 per difference, at most a few billion pixels). Returns 0, or -1 when a sum is not
 * finite (a NaN or an infinity in the grey: the reference decides what that gives). */
static int
variations(const Source *s, double *row_variation, double *column_variation, double *scratch)
{
    const Py_ssize_t height = s->height, width = s->width;
    Py_ssize_t i, j;

    if (is_float32_domain(s)) {
        float *buffers = (float *)scratch;         /* two rows */
        double *differences = scratch + width;     /* one row's */
        const float *previous = NULL;
        for (j = 0; j < width; j++) {
            column_variation[j] = 0.0;
        }
        for (i = 0; i < height; i++) {
            const float *row = row_f32(s, i, width, buffers + (i & 1) * width);
            row_variation[i] = row_sum_f32(row, width, differences);
            if (previous != NULL) {
                for (j = 0; j < width; j++) {
                    column_variation[j] += (double)fabsf(row[j] - previous[j]);
                }
            }
            previous = row;
        }
    }
    else if (is_float64_domain(s)) {
        double *buffers = scratch;                 /* two rows */
        double *differences = scratch + 2 * width; /* one row's */
        const double *previous = NULL;
        for (j = 0; j < width; j++) {
            column_variation[j] = 0.0;
        }
        for (i = 0; i < height; i++) {
            const double *row = row_f64(s, i, width, buffers + (i & 1) * width);
            row_variation[i] = row_sum_f64(row, width, differences);
            if (previous != NULL) {
                for (j = 0; j < width; j++) {
                    column_variation[j] += fabs(row[j] - previous[j]);
                }
            }
            previous = row;
        }
    }
    else {
        /* 8-bit grey: the differences wrap around modulo 256, as numpy's uint8 subtraction. */
        unsigned char *buffers = (unsigned char *)scratch;
        uint64_t *columns = (uint64_t *)((double *)scratch + 2 * width);
        const unsigned char *previous = NULL;
        for (j = 0; j < width; j++) {
            columns[j] = 0;
        }
        for (i = 0; i < height; i++) {
            const unsigned char *row = row_u8(s, i, width, buffers + (i & 1) * width);
            uint64_t total = 0;
            for (j = 0; j + 1 < width; j++) {
                total += (unsigned char)(row[j + 1] - row[j]);
            }
            row_variation[i] = (double)total;
            if (previous != NULL) {
                for (j = 0; j < width; j++) {
                    columns[j] += (unsigned char)(row[j] - previous[j]);
                }
            }
            previous = row;
        }
        for (j = 0; j < width; j++) {
            column_variation[j] = (double)columns[j];
        }
        return 0;
    }
    for (i = 0; i < height; i++) {
        if (!isfinite(row_variation[i])) {
            return -1;
        }
    }
    for (j = 0; j < width; j++) {
        if (!isfinite(column_variation[j])) {
            return -1;
        }
    }
    return 0;
}

/* goldberg.percentiles_of_sorted, for one percentile. */
static double
percentile_of_sorted(const double *values, Py_ssize_t count, double percentile)
{
    const Py_ssize_t last = count - 1;
    const double virtual_index = (double)last * (percentile / 100.0);
    Py_ssize_t below = (Py_ssize_t)floor(virtual_index);
    double weight, low, high, step;
    if (below < 0) {
        below = 0;
    }
    if (below > last) {
        below = last;
    }
    weight = virtual_index - (double)below;
    low = values[below];
    high = values[below + 1 < last ? below + 1 : last]; /* min(below + 1, last) */
    step = high - low;
    return weight >= 0.5 ? high - step * (1 - weight) : low + step * weight;
}

/* numpy.searchsorted on a sorted array: side "right" counts the values <= value, "left" < value. */
static Py_ssize_t
count_at_most(const double *values, Py_ssize_t count, double value)
{
    Py_ssize_t low = 0, high = count;
    while (low < high) {
        Py_ssize_t middle = low + (high - low) / 2;
        if (values[middle] <= value) {
            low = middle + 1;
        }
        else {
            high = middle;
        }
    }
    return low;
}

static Py_ssize_t
count_below(const double *values, Py_ssize_t count, double value)
{
    Py_ssize_t low = 0, high = count;
    while (low < high) {
        Py_ssize_t middle = low + (high - low) / 2;
        if (values[middle] < value) {
            low = middle + 1;
        }
        else {
            high = middle;
        }
    }
    return low;
}

/* goldberg._crop_limits_1x: variation becomes its running total in place. */
static void
crop_limits(double *variation, Py_ssize_t size, double lower, double upper, Py_ssize_t *low,
            Py_ssize_t *high)
{
    Py_ssize_t i;
    double low_value, high_value;
    for (i = 1; i < size; i++) {
        variation[i] = variation[i - 1] + variation[i];
    }
    low_value = percentile_of_sorted(variation, size, lower);
    high_value = percentile_of_sorted(variation, size, upper);
    *low = count_at_most(variation, size, low_value);
    *high = count_below(variation, size, high_value);
    if (*low > *high) { /* featureless along this axis */
        *low = (Py_ssize_t)(lower / 100.0 * (double)size);
        *high = (Py_ssize_t)(upper / 100.0 * (double)size);
    }
}

/* ---- steps 2-3: grid, squares and their mean grey levels ------------------------------------- */

/* goldberg.grid_points ("1.x") then square_spans ("1.x") along one axis. */
static void
square_spans(Py_ssize_t low, Py_ssize_t high, Py_ssize_t n, Py_ssize_t P, Py_ssize_t size,
             Py_ssize_t *starts, Py_ssize_t *stops)
{
    const double first = (double)low;
    const double step = ((double)high - first) / (double)(n + 1);
    Py_ssize_t index;
    for (index = 1; index <= n; index++) {
        const double centre = floor((double)index * step + first);
        double start = floor(centre - (double)P / 2.0);
        Py_ssize_t begin;
        if (start < 0) {
            start = 0;
        }
        begin = (Py_ssize_t)start;
        starts[index - 1] = begin;
        stops[index - 1] = begin + P < size ? begin + P : size;
    }
}

/* goldberg._pixel_block_means: squares on the pixels of the grey itself. Each band of squares'
 * rows are summed down each column (from the top, in double), the columns' running totals give
 * each square's sum. */
static void
pixel_block_means(const Source *s, Py_ssize_t n, const Py_ssize_t *row_starts,
                  const Py_ssize_t *row_stops, const Py_ssize_t *column_starts,
                  const Py_ssize_t *column_stops, double *means, double *scratch)
{
    /* scratch: 3 * (width + 1) doubles */
    Py_ssize_t band, i, j, k, reach = 0;
    double *sums = scratch, *cumulative = scratch + s->width + 1;
    void *buffer = scratch + 2 * (s->width + 1);
    for (k = 0; k < n; k++) {
        if (column_stops[k] > reach) {
            reach = column_stops[k];
        }
    }
    for (band = 0; band < n; band++) {
        for (j = 0; j < reach; j++) {
            sums[j] = 0.0;
        }
        for (i = row_starts[band]; i < row_stops[band]; i++) {
            if (is_float64_domain(s)) {
                const double *row = row_f64(s, i, reach, (double *)buffer);
                for (j = 0; j < reach; j++) {
                    sums[j] += row[j];
                }
            }
            else if (is_float32_domain(s)) {
                const float *row = row_f32(s, i, reach, (float *)buffer);
                for (j = 0; j < reach; j++) {
                    sums[j] += (double)row[j];
                }
            }
            else {
                const unsigned char *row = row_u8(s, i, reach, (unsigned char *)buffer);
                for (j = 0; j < reach; j++) {
                    sums[j] += (double)row[j];
                }
            }
        }
        /* numpy.cumsum, after a leading 0 */
        cumulative[0] = 0.0;
        if (reach > 0) {
            cumulative[1] = sums[0];
        }
        for (j = 1; j < reach; j++) {
            cumulative[j + 1] = cumulative[j] + sums[j];
        }
        for (k = 0; k < n; k++) {
            const double square = cumulative[column_stops[k]] - cumulative[column_starts[k]];
            const Py_ssize_t area = (row_stops[band] - row_starts[band])
                                    * (column_stops[k] - column_starts[k]);
            means[band * n + k] = square / (double)area;
        }
    }
}

/* goldberg._coverage for one pixel [pixel, pixel + 1) and one span [low, high). */
static double
coverage(Py_ssize_t pixel, double low, double high)
{
    const double end = (double)(pixel + 1) < high ? (double)(pixel + 1) : high;
    const double begin = (double)pixel > low ? (double)pixel : low;
    const double covered = end - begin;
    return covered > 0 ? covered : 0.0;
}

/* goldberg.block_means with a reduced decode: squares in the original's coordinates, each pixel
 * weighed by the area it shares with a square. Terms of zero weight, which the reference adds
 * too, change nothing but the sign of a zero sum. */
static void
area_block_means(const Source *s, Py_ssize_t original_height, Py_ssize_t original_width,
                 Py_ssize_t n, const Py_ssize_t *row_starts, const Py_ssize_t *row_stops,
                 const Py_ssize_t *column_starts, const Py_ssize_t *column_stops, double *means,
                 double *scratch)
{
    /* scratch: 2 * width doubles */
    const Py_ssize_t height = s->height, width = s->width;
    const double row_scale = (double)height / (double)original_height;
    const double column_scale = (double)width / (double)original_width;
    double *band_sums = scratch;
    void *buffer = scratch + width;
    Py_ssize_t band, k, m, j;
    for (band = 0; band < n; band++) {
        const double top = (double)row_starts[band] * row_scale;
        const double bottom = (double)row_stops[band] * row_scale;
        const Py_ssize_t first = (Py_ssize_t)floor(top);
        const Py_ssize_t last = (Py_ssize_t)ceil(bottom); /* touched rows: [first, last) */
        for (j = 0; j < width; j++) {
            band_sums[j] = 0.0;
        }
        for (m = first; m < last; m++) {
            const double weight = coverage(m, top, bottom);
            const Py_ssize_t i = m < height - 1 ? m : height - 1;
            if (weight == 0.0) {
                continue;
            }
            if (is_float64_domain(s)) {
                const double *row = row_f64(s, i, width, (double *)buffer);
                for (j = 0; j < width; j++) {
                    band_sums[j] += weight * row[j];
                }
            }
            else if (is_float32_domain(s)) {
                const float *row = row_f32(s, i, width, (float *)buffer);
                for (j = 0; j < width; j++) {
                    band_sums[j] += weight * (double)row[j];
                }
            }
            else {
                const unsigned char *row = row_u8(s, i, width, (unsigned char *)buffer);
                for (j = 0; j < width; j++) {
                    band_sums[j] += weight * (double)row[j];
                }
            }
        }
        for (k = 0; k < n; k++) {
            const double left = (double)column_starts[k] * column_scale;
            const double right = (double)column_stops[k] * column_scale;
            const double area = (bottom - top) * (right - left);
            Py_ssize_t begin = (Py_ssize_t)floor(left), end = (Py_ssize_t)ceil(right);
            double total = 0.0;
            if (begin < 0) {
                begin = 0;
            }
            if (end > width) {
                end = width;
            }
            for (j = begin; j < end; j++) {
                const double weight = coverage(j, left, right);
                if (weight != 0.0) {
                    total += band_sums[j] * weight;
                }
            }
            means[band * n + k] = total / (area > 0 ? area : 1.0);
        }
    }
}

/* ---- steps 4-5: neighbour differences and their codes ---------------------------------------- */

static const int NEIGHBOURS[8][2] = {{-1, -1}, {-1, 0}, {-1, 1}, {0, -1},
                                     {0, 1},   {1, -1}, {1, 0},  {1, 1}};
static const int AXIAL[4][2] = {{-1, 0}, {0, -1}, {0, 1}, {1, 0}};

/* Sort positive doubles ascending, by the bits of their representation (which order positive
 * doubles as numbers), a byte at a time from the lowest: no comparisons to mispredict, which
 * on a few hundred values cost more than the arithmetic. tmp: count values. */
static void
sort_positive(double *values, Py_ssize_t count, double *tmp)
{
    uint64_t *keys = (uint64_t *)values, *other = (uint64_t *)tmp;
    int shift;
    Py_ssize_t i;
    for (shift = 0; shift < 64; shift += 8) {
        Py_ssize_t offsets[256] = {0}, total = 0;
        int digit;
        uint64_t *swap;
        for (i = 0; i < count; i++) {
            offsets[(keys[i] >> shift) & 0xff]++;
        }
        if (offsets[(keys[0] >> shift) & 0xff] == count) {
            continue; /* every key has this byte: the order stays */
        }
        for (digit = 0; digit < 256; digit++) {
            const Py_ssize_t here = offsets[digit];
            offsets[digit] = total;
            total += here;
        }
        for (i = 0; i < count; i++) {
            other[offsets[(keys[i] >> shift) & 0xff]++] = keys[i];
        }
        swap = keys;
        keys = other;
        other = swap;
    }
    if (keys != (uint64_t *)values) {
        memcpy(values, keys, sizeof(double) * (size_t)count);
    }
}

/* goldberg.neighbour_differences then quantize_differences ("1.x"), into codes. Returns 0, or 1
 * when a value is not finite or a code does not fit int8 (the reference decides then). */
#define CUTOFFS_MAX 256 /* n_levels + 1 at most; the wrapper declines more */

static int
signature_codes(const double *means, Py_ssize_t n, int diagonal, double tolerance,
                const double *levels, Py_ssize_t n_levels, signed char *codes, double *values,
                double *ordered, double *tmp)
{
    const int k = diagonal ? 8 : 4;
    const int (*offsets)[2] = diagonal ? NEIGHBOURS : AXIAL;
    const Py_ssize_t count = n * n * k;
    Py_ssize_t r, c, i, negatives, positives, level;
    double cutoffs[CUTOFFS_MAX];
    int o;

    for (r = 0; r < n * n; r++) {
        if (!isfinite(means[r])) {
            return 1;
        }
    }
    for (r = 0; r < n; r++) {
        for (c = 0; c < n; c++) {
            for (o = 0; o < k; o++) {
                const Py_ssize_t nr = r + offsets[o][0], nc = c + offsets[o][1];
                double difference = 0.0;
                if (nr >= 0 && nr < n && nc >= 0 && nc < n) {
                    difference = means[r * n + c] - means[nr * n + nc];
                }
                if (!isfinite(difference)) {
                    return 1;
                }
                if (fabs(difference) < tolerance) {
                    difference = 0.0;
                }
                values[(r * n + c) * k + o] = difference;
            }
        }
    }
    /* The negative values, then the positive ones, in ordered (the zeros are in neither). */
    /* The positive values, then the negative ones as magnitudes, in ordered (the zeros are in
     * neither), without branches (the signs are a coin toss): each value is written, and kept
     * by moving on; so ordered has room for count + 1. */
    positives = 0;
    negatives = 0;
    for (i = 0; i < count; i++) {
        ordered[positives] = values[i];
        positives += values[i] > 0.0;
    }
    for (i = 0; i < count; i++) {
        ordered[positives + negatives] = -values[i];
        negatives += values[i] < 0.0;
    }
    if (positives > 0) {
        const double *positive = ordered;
        sort_positive(ordered, positives, tmp);
        for (level = 0; level <= n_levels; level++) {
            cutoffs[level] = percentile_of_sorted(positive, positives, levels[level]);
        }
        for (level = 0; level < n_levels; level++) {
            const double low = cutoffs[level], high = cutoffs[level + 1];
            const double code = (double)(level + 1);
            for (i = 0; i < count; i++) {
                const double value = values[i];
                values[i] = (value >= low) & (value <= high) ? code : value;
            }
        }
    }
    if (negatives > 0) {
        /* The negative values ascending, from their magnitudes descending (negation is exact);
         * 1.x takes the levels in reverse for them: from the one closest to 0. */
        double *negative = tmp;
        sort_positive(ordered + positives, negatives, tmp);
        for (i = 0; i < negatives; i++) {
            negative[i] = -ordered[positives + negatives - 1 - i];
        }
        for (level = 0; level <= n_levels; level++) {
            cutoffs[level] = percentile_of_sorted(negative, negatives, levels[n_levels - level]);
        }
        for (level = 0; level < n_levels; level++) {
            const double high = cutoffs[level], low = cutoffs[level + 1];
            const double code = -(double)(level + 1);
            for (i = 0; i < count; i++) {
                const double value = values[i];
                values[i] = (value <= high) & (value >= low) ? code : value;
            }
        }
    }
    for (i = 0; i < count; i++) {
        if (!(values[i] > -129.0 && values[i] < 128.0)) {
            return 1;
        }
        codes[i] = (signed char)values[i];
    }
    return 0;
}

/* ---- the pixels' memory ---------------------------------------------------------------------- */

typedef struct {
    Py_buffer view;      /* a buffer-protocol array, or */
    int has_view;
} Held;

/* Fill s->base and strides from a numpy array (any strides) or from (schema capsule, array
 * capsule, height, width) of a PIL image's Arrow export. Returns 0, 1 to decline (a layout the
 * kernel does not read), -1 on a Python error. */
static int
open_pixels(PyObject *pixels, Source *s, Held *held)
{
    const int channels = s->rule == TABLES3 ? 3 : 1;
    held->has_view = 0;
    if (PyTuple_Check(pixels)) {
        PyObject *schema_capsule, *array_capsule;
        Py_ssize_t height, width;
        struct ArrowSchema *schema;
        struct ArrowArray *array;
        const unsigned char *data;
        if (!PyArg_ParseTuple(pixels, "OOnn", &schema_capsule, &array_capsule, &height, &width)) {
            return -1;
        }
        schema = (struct ArrowSchema *)PyCapsule_GetPointer(schema_capsule, "arrow_schema");
        array = (struct ArrowArray *)PyCapsule_GetPointer(array_capsule, "arrow_array");
        if (schema == NULL || array == NULL) {
            return -1;
        }
        if (s->rule != DRAFT8 && s->rule != TABLES3 && s->rule != GREY_U8) {
            return 1;
        }
        if (array->length != height * width || array->null_count != 0 || height <= 0
            || width <= 0) {
            return 1;
        }
        if (channels == 1) {
            if (strcmp(schema->format, "C") != 0 || array->n_buffers != 2
                || array->buffers[1] == NULL) {
                return 1;
            }
            data = (const unsigned char *)array->buffers[1] + array->offset;
            s->column_stride = 1;
        }
        else {
            const struct ArrowArray *child;
            if (strcmp(schema->format, "+w:4") != 0 || schema->n_children != 1
                || strcmp(schema->children[0]->format, "C") != 0 || array->n_children != 1) {
                return 1;
            }
            child = array->children[0];
            if (child->n_buffers != 2 || child->buffers[1] == NULL || child->null_count != 0
                || child->length < 4 * (array->offset + array->length)) {
                return 1;
            }
            data = (const unsigned char *)child->buffers[1] + child->offset + 4 * array->offset;
            s->column_stride = 4;
        }
        s->base = (const char *)data;
        s->height = height;
        s->width = width;
        s->row_stride = width * s->column_stride;
        s->channel_stride = 1;
        return 0;
    }
    if (PyObject_GetBuffer(pixels, &held->view, PyBUF_RECORDS_RO) < 0) {
        return -1;
    }
    held->has_view = 1;
    {
        const Py_buffer *v = &held->view;
        const char *format = v->format ? v->format : "B";
        char expected;
        Py_ssize_t itemsize;
        if (format[0] == '<' || format[0] == '=' || format[0] == '@') {
            format++;
        }
        switch (s->rule) {
        case GREY_F32:
            expected = 'f';
            itemsize = 4;
            break;
        case GREY_F64:
            expected = 'd';
            itemsize = 8;
            break;
        default:
            expected = 'B';
            itemsize = 1;
        }
        if (format[0] != expected || format[1] != '\0' || v->itemsize != itemsize
            || v->ndim != (channels == 3 ? 3 : 2) || v->shape[0] <= 0 || v->shape[1] <= 0
            || (channels == 3 && v->shape[2] < 3)) {
            return 1;
        }
        s->base = (const char *)v->buf;
        s->height = v->shape[0];
        s->width = v->shape[1];
        s->row_stride = v->strides[0];
        s->column_stride = v->strides[1];
        s->channel_stride = channels == 3 ? v->strides[2] : 0;
    }
    return 0;
}

/* A C-contiguous buffer of at least count items of itemsize bytes, or NULL with an error. */
static int
contiguous_buffer(PyObject *object, Py_buffer *view, Py_ssize_t count, Py_ssize_t itemsize,
                  int writable, const char *name)
{
    if (PyObject_GetBuffer(object, view, writable ? PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS
                                                  : PyBUF_C_CONTIGUOUS) < 0) {
        return -1;
    }
    if (view->len < count * itemsize) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "%s: need %zd bytes, got %zd", name, count * itemsize,
                     view->len);
        return -1;
    }
    return 0;
}

/* ---- the Python entry point ------------------------------------------------------------------ */

PyDoc_STRVAR(signature_doc,
"signature(pixels, rule, table, original_height, original_width, n, crop, lower, upper,\n"
"          fix_ratio, P, diagonal, tolerance, levels, out) -> bool\n"
"\n"
"Write the 1.x signature of a grey source into out (int8, n * n * 8 or n * n * 4).\n"
"pixels: an array, or (arrow schema capsule, arrow array capsule, height, width).\n"
"rule: 0 uint8 grey, 1 float32 grey, 2 float64 grey, 3 draft 8-bit grey (table: 256 float32),\n"
"4 three 8-bit channels (table: 3 x 256 float64). P: 0 for the size's own. levels: n_levels + 1 float64\n"
"percentiles. False when the kernel declines the input (a layout it does not read, a value\n"
"that is not finite): the numpy reference signs it then.");

static PyObject *
signature(PyObject *self, PyObject *args)
{
    PyObject *pixels, *table_object, *levels_object, *out_object;
    int rule, crop, fix_ratio, diagonal;
    Py_ssize_t original_height, original_width, n, P;
    double lower, upper, tolerance;
    Source s;
    Held held;
    Py_buffer table, levels, out;
    int status, declined = 0;
    Py_ssize_t n_levels, k, count;
    Py_ssize_t window[2][2];
    Py_ssize_t *spans = NULL;
    double *work = NULL;
    double *scratch = NULL;
    int failed = 0;

    if (!PyArg_ParseTuple(args, "OiOnnnpddpnpdOO", &pixels, &rule, &table_object,
                          &original_height, &original_width, &n, &crop, &lower, &upper,
                          &fix_ratio, &P, &diagonal, &tolerance, &levels_object, &out_object)) {
        return NULL;
    }
    if (rule < GREY_U8 || rule > TABLES3 || n < 2 || P < 0 || original_height <= 0
        || original_width <= 0) {
        PyErr_SetString(PyExc_ValueError, "signature: invalid parameters");
        return NULL;
    }
    memset(&s, 0, sizeof(s));
    s.rule = rule;
    k = diagonal ? 8 : 4;
    count = n * n * k;

    status = open_pixels(pixels, &s, &held);
    if (status != 0) {
        if (held.has_view) {
            PyBuffer_Release(&held.view);
        }
        if (status < 0) {
            return NULL;
        }
        Py_RETURN_FALSE;
    }
    table.obj = levels.obj = out.obj = NULL;
    if (rule == DRAFT8 || rule == TABLES3) {
        if (contiguous_buffer(table_object, &table, rule == DRAFT8 ? 256 : 768,
                              rule == DRAFT8 ? 4 : 8, 0, "table") < 0) {
            failed = 1;
            goto done;
        }
        s.table32 = (const float *)table.buf;
        s.table64 = (const double *)table.buf;
    }
    if (PyObject_GetBuffer(levels_object, &levels, PyBUF_C_CONTIGUOUS) < 0) {
        failed = 1;
        goto done;
    }
    n_levels = levels.len / (Py_ssize_t)sizeof(double) - 1;
    if (n_levels < 1) {
        PyErr_SetString(PyExc_ValueError, "signature: need at least two levels");
        failed = 1;
        goto done;
    }
    if (n_levels + 1 > CUTOFFS_MAX) {
        declined = 1;
        goto done;
    }
    if (contiguous_buffer(out_object, &out, count, 1, 1, "out") < 0) {
        failed = 1;
        goto done;
    }

    spans = (Py_ssize_t *)PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(4 * n));
    work = (double *)PyMem_Malloc(sizeof(double) * (size_t)(n * n + 3 * count + 1
                                                           + s.height + s.width));
    scratch = (double *)PyMem_Malloc(sizeof(double) * (size_t)(3 * (s.width + 1)));
    if (spans == NULL || work == NULL || scratch == NULL) {
        PyErr_NoMemory();
        failed = 1;
        goto done;
    }

    Py_BEGIN_ALLOW_THREADS
    {
        double *means = work;
        double *values = means + n * n;
        double *ordered = values + count;
        double *tmp = ordered + count + 1; /* ordered: count + 1 (see signature_codes) */
        double *row_variation = tmp + count;
        double *column_variation = row_variation + s.height;
        const int reduced = original_height != s.height || original_width != s.width;
        Py_ssize_t size;

        /* step 1 */
        if (!crop) {
            window[0][0] = 0;
            window[0][1] = original_height;
            window[1][0] = 0;
            window[1][1] = original_width;
            if (s.rule == GREY_F32 || s.rule == GREY_F64) {
                /* no variation pass to notice a value that is not finite */
                Py_ssize_t i, j;
                for (i = 0; i < s.height && !declined; i++) {
                    for (j = 0; j < s.width; j++) {
                        const char *p = s.base + i * s.row_stride + j * s.column_stride;
                        if (!isfinite(s.rule == GREY_F32 ? (double)*(const float *)p
                                                         : *(const double *)p)) {
                            declined = 1;
                            break;
                        }
                    }
                }
            }
        }
        else if (variations(&s, row_variation, column_variation, scratch) < 0) {
            declined = 1;
        }
        else {
            crop_limits(row_variation, s.height, lower, upper, &window[0][0], &window[0][1]);
            crop_limits(column_variation, s.width, lower, upper, &window[1][0], &window[1][1]);
            if (fix_ratio) {
                /* the wider range for both axes, cut to each axis's size */
                const int axis = window[0][1] - window[0][0] > window[1][1] - window[1][0] ? 0 : 1;
                const Py_ssize_t low = window[axis][0], high = window[axis][1];
                const Py_ssize_t sizes[2] = {s.height, s.width};
                int other;
                for (other = 0; other < 2; other++) {
                    window[other][0] = low < sizes[other] ? low : sizes[other];
                    window[other][1] = high < sizes[other] ? high : sizes[other];
                }
            }
            if (reduced) {
                /* goldberg._scale_window: Python's round() is round-half-even, as rint. */
                const Py_ssize_t full[2] = {original_height, original_width};
                const Py_ssize_t part[2] = {s.height, s.width};
                int axis, end;
                for (axis = 0; axis < 2; axis++) {
                    for (end = 0; end < 2; end++) {
                        window[axis][end] = (Py_ssize_t)rint(
                            (double)(window[axis][end] * full[axis]) / (double)part[axis]);
                    }
                }
            }
        }

        if (!declined) {
            /* steps 2-3 */
            size = original_height < original_width ? original_height : original_width;
            if (P == 0) {
                P = (Py_ssize_t)(0.5 + (double)size / 20.0);
                if (P < 2) {
                    P = 2;
                }
            }
            square_spans(window[0][0], window[0][1], n, P, original_height, spans, spans + n);
            square_spans(window[1][0], window[1][1], n, P, original_width, spans + 2 * n,
                         spans + 3 * n);
            /* Every square inside the image, or the memory read would not be the image's (the
             * reference would fail or read garbage: it decides). */
            for (size = 0; size < n && !declined; size++) {
                declined = !(spans[size] >= 0 && spans[size] < spans[n + size]
                             && spans[n + size] <= original_height && spans[2 * n + size] >= 0
                             && spans[2 * n + size] < spans[3 * n + size]
                             && spans[3 * n + size] <= original_width);
            }
        }
        if (!declined) {
            if (reduced) {
                area_block_means(&s, original_height, original_width, n, spans, spans + n,
                                 spans + 2 * n, spans + 3 * n, means, scratch);
            }
            else {
                pixel_block_means(&s, n, spans, spans + n, spans + 2 * n, spans + 3 * n, means,
                                  scratch);
            }
        }
        /* steps 4-5 */
        if (!declined
            && signature_codes(means, n, diagonal, tolerance, (const double *)levels.buf,
                               n_levels, (signed char *)out.buf, values, ordered, tmp) != 0) {
            declined = 1;
        }
    }
    Py_END_ALLOW_THREADS

done:
    PyMem_Free(spans);
    PyMem_Free(work);
    PyMem_Free(scratch);
    if (table.obj != NULL) {
        PyBuffer_Release(&table);
    }
    if (levels.obj != NULL) {
        PyBuffer_Release(&levels);
    }
    if (out.obj != NULL) {
        PyBuffer_Release(&out);
    }
    if (held.has_view) {
        PyBuffer_Release(&held.view);
    }
    if (failed) {
        return NULL;
    }
    return PyBool_FromLong(!declined);
}

static PyMethodDef methods[] = {
    {"signature", signature, METH_VARARGS, signature_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_signature_kernel",
    "image-match's compiled signature kernel; image_match.kernel is its interface.", -1, methods,
};

PyMODINIT_FUNC
PyInit__signature_kernel(void)
{
    return PyModule_Create(&module);
}
