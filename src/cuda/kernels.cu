// longquant's CUDA kernels, compiled at run time by NVRTC for the GPU present (src/cuda/gpu.rs).
// No headers: halves are carried as unsigned short and converted with PTX `cvt`, so NVRTC needs
// nothing but itself. Compiled with --fmad=false: products and sums round as written, so the
// dequantizers give the CPU's values exactly (fmaf is used where the CPU fuses).
//
// Layouts (row-major, as on the CPU): activations [token][feature]; K/V cache of one layer
// [kv_head][position][head_dim] in f16; attention scores of one KV head's query group
// [member][query][key] in f32.

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("{cvt.f32.f16 %0, %1;}" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("{cvt.rn.f16.f32 %0, %1;}" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ float bf2f(u16 h) { return __int_as_float(((u32)h) << 16); }
__device__ __forceinline__ u16 ld16(const u8* p) { return (u16)p[0] | ((u16)p[1] << 8); }
__device__ __forceinline__ float ldh(const u8* p) { return h2f(ld16(p)); }

// ---- dequantization to f16: one thread per output value; `n` values, rows back to back ----

#define NEG_INF __int_as_float(0xff800000)

#define DQ_BEGIN(name)                                                              \
    extern "C" __global__ void name(const u8* __restrict__ src, u16* __restrict__ dst, i64 n) { \
        i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x;                         \
        if (e >= n) return;

extern "C" __global__ void dq_f32(const u8* __restrict__ src, u16* __restrict__ dst, i64 n) {
    i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    dst[e] = f2h(((const float*)src)[e]);
}

extern "C" __global__ void dq_f16(const u8* __restrict__ src, u16* __restrict__ dst, i64 n) {
    i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    dst[e] = ((const u16*)src)[e];
}

DQ_BEGIN(dq_bf16)
    dst[e] = f2h(bf2f(((const u16*)src)[e]));
}

// Q4_0: {f16 d; u8 qs[16]}: value j = d * (nibble - 8), low nibbles first.
DQ_BEGIN(dq_q4_0)
    const u8* b = src + (e / 32) * 18;
    int j = e % 32;
    int q = j < 16 ? (b[2 + j] & 0xF) : (b[2 + j - 16] >> 4);
    dst[e] = f2h(ldh(b) * (float)(q - 8));
}

// Q4_1: {f16 d; f16 m; u8 qs[16]}: d * nibble + m.
DQ_BEGIN(dq_q4_1)
    const u8* b = src + (e / 32) * 20;
    int j = e % 32;
    int q = j < 16 ? (b[4 + j] & 0xF) : (b[4 + j - 16] >> 4);
    dst[e] = f2h(ldh(b) * (float)q + ldh(b + 2));
}

// Q5_0: {f16 d; u8 qh[4]; u8 qs[16]}: the fifth bit of value j is bit j of qh.
DQ_BEGIN(dq_q5_0)
    const u8* b = src + (e / 32) * 22;
    int j = e % 32;
    u32 qh = (u32)b[2] | ((u32)b[3] << 8) | ((u32)b[4] << 16) | ((u32)b[5] << 24);
    int lo = j < 16 ? (b[6 + j] & 0xF) : (b[6 + j - 16] >> 4);
    int q = lo | (((qh >> j) & 1) << 4);
    dst[e] = f2h(ldh(b) * (float)(q - 16));
}

// Q5_1: {f16 d; f16 m; u8 qh[4]; u8 qs[16]}.
DQ_BEGIN(dq_q5_1)
    const u8* b = src + (e / 32) * 24;
    int j = e % 32;
    u32 qh = (u32)b[4] | ((u32)b[5] << 8) | ((u32)b[6] << 16) | ((u32)b[7] << 24);
    int lo = j < 16 ? (b[8 + j] & 0xF) : (b[8 + j - 16] >> 4);
    int q = lo | (((qh >> j) & 1) << 4);
    dst[e] = f2h(ldh(b) * (float)q + ldh(b + 2));
}

// Q8_0: {f16 d; i8 qs[32]}.
DQ_BEGIN(dq_q8_0)
    const u8* b = src + (e / 32) * 34;
    int j = e % 32;
    dst[e] = f2h(ldh(b) * (float)(i8)b[2 + j]);
}

// Q2_K: {u8 scales[16]; u8 qs[64]; f16 d; f16 dmin}. Value e of the super-block: half h
// (128 values), 2-bit plane j (shift 2j), lane l of 32; scale byte h*8 + 2j + l/16 holds the
// scale (low nibble) and the min (high nibble).
DQ_BEGIN(dq_q2_k)
    const u8* b = src + (e / 256) * 84;
    int i = e % 256, h = i / 128, j = (i % 128) / 32, l = i % 32;
    u8 sc = b[h * 8 + 2 * j + l / 16];
    int q = (b[16 + h * 32 + l] >> (2 * j)) & 3;
    float d = ldh(b + 80), dmin = ldh(b + 82);
    float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
    dst[e] = f2h(dl * (float)q - ml);
}

// Q3_K: {u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d}: 16 six-bit scales (low four bits in
// scales[0..8], nibble per half, high two bits in scales[8..12]), minus 32; the value is the
// 2-bit plane minus 4 where the hmask bit (1 << (4h + j)) is clear.
DQ_BEGIN(dq_q3_k)
    const u8* b = src + (e / 256) * 110;
    int i = e % 256, h = i / 128, j = (i % 128) / 32, l = i % 32;
    int is = h * 8 + 2 * j + l / 16;
    const u8* s = b + 96;
    int lo4 = (s[is % 8] >> (4 * (is / 8))) & 0xF;
    int hi2 = (s[8 + is % 4] >> (2 * (is / 4))) & 3;
    int sc = (lo4 | (hi2 << 4)) - 32;
    int q = (b[32 + h * 32 + l] >> (2 * j)) & 3;
    if (!(b[l] & (1 << (4 * h + j)))) q -= 4;
    float dl = ldh(b + 108) * (float)sc;
    dst[e] = f2h(dl * (float)q);
}

// The 6-bit scale and min of sub-block j (0..8) of a Q4_K/Q5_K super-block (12 packed bytes).
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q4_K: {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}: 64-value chunks c, low nibbles then high.
DQ_BEGIN(dq_q4_k)
    const u8* b = src + (e / 256) * 144;
    int i = e % 256, c = i / 64, hi = (i % 64) / 32, l = i % 32;
    int sc, m;
    scale_min_k4(2 * c + hi, b + 4, &sc, &m);
    u8 qb = b[16 + c * 32 + l];
    int q = hi ? (qb >> 4) : (qb & 0xF);
    float d1 = ldh(b) * (float)sc, m1 = ldh(b + 2) * (float)m;
    dst[e] = f2h(d1 * (float)q - m1);
}

// Q5_K: {f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}: fifth bit (2c + hi) of qh[l].
DQ_BEGIN(dq_q5_k)
    const u8* b = src + (e / 256) * 176;
    int i = e % 256, c = i / 64, hi = (i % 64) / 32, l = i % 32;
    int sc, m;
    scale_min_k4(2 * c + hi, b + 4, &sc, &m);
    u8 qb = b[48 + c * 32 + l];
    int q = (hi ? (qb >> 4) : (qb & 0xF)) + (((b[16 + l] >> (2 * c + hi)) & 1) << 4);
    float d1 = ldh(b) * (float)sc, m1 = ldh(b + 2) * (float)m;
    dst[e] = f2h(d1 * (float)q - m1);
}

// Q6_K: {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}: half h, quarter k (32 values), lane l.
DQ_BEGIN(dq_q6_k)
    const u8* b = src + (e / 256) * 210;
    int i = e % 256, h = i / 128, k = (i % 128) / 32, l = i % 32;
    u8 qlb = b[h * 64 + l + (k & 1) * 32];
    int lo = k < 2 ? (qlb & 0xF) : (qlb >> 4);
    int hb = (b[128 + h * 32 + l] >> (2 * k)) & 3;
    int q = (lo | (hb << 4)) - 32;
    float sc = (float)(i8)b[192 + h * 8 + l / 16 + 2 * k];
    dst[e] = f2h(ldh(b + 208) * sc * (float)q);
}

__constant__ float IQ4NL_VALUES[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                        1,    13,   25,  38,  53,  69,  89,  113};

// IQ4_NL: {f16 d; u8 qs[16]}: d * table[nibble].
DQ_BEGIN(dq_iq4_nl)
    const u8* b = src + (e / 32) * 18;
    int j = e % 32;
    int q = j < 16 ? (b[2 + j] & 0xF) : (b[2 + j - 16] >> 4);
    dst[e] = f2h(ldh(b) * IQ4NL_VALUES[q]);
}

// IQ4_XS: {f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]}: 8 sub-blocks of 32 with 6-bit
// scales (low nibble from scales_l, two high bits from scales_h) minus 32.
DQ_BEGIN(dq_iq4_xs)
    const u8* b = src + (e / 256) * 136;
    int i = e % 256, ib = i / 32, j = i % 32;
    u16 sh = ld16(b + 2);
    int ls = ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xF) | (((sh >> (2 * ib)) & 3) << 4);
    float dl = ldh(b) * (float)(ls - 32);
    const u8* qs = b + 8 + ib * 16;
    int q = j < 16 ? (qs[j] & 0xF) : (qs[j - 16] >> 4);
    dst[e] = f2h(dl * IQ4NL_VALUES[q]);
}

// ---- elementwise and row kernels ----

// y = f16(x).
extern "C" __global__ void to_f16(const float* __restrict__ x, u16* __restrict__ y, i64 n) {
    i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (e < n) y[e] = f2h(x[e]);
}

// x += y.
extern "C" __global__ void add_in_place(float* __restrict__ x, const float* __restrict__ y, i64 n) {
    i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (e < n) x[e] = x[e] + y[e];
}

// Block-wide sum over 256 threads (f64), result in every thread.
__device__ double block_sum_d(double v, double* sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    double t = 0.0;
    if (threadIdx.x < 32) {
        t = threadIdx.x < blockDim.x / 32 ? sh[threadIdx.x] : 0.0;
        for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffff, t, o);
        if (threadIdx.x == 0) sh[0] = t;
    }
    __syncthreads();
    return sh[0];
}

__device__ float block_max_f(float v, float* sh) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        float t = threadIdx.x < blockDim.x / 32 ? sh[threadIdx.x] : NEG_INF;
        for (int o = 16; o > 0; o >>= 1) t = fmaxf(t, __shfl_xor_sync(0xffffffff, t, o));
        if (threadIdx.x == 0) sh[0] = t;
    }
    __syncthreads();
    return sh[0];
}

__device__ float block_sum_f(float v, float* sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        float t = threadIdx.x < blockDim.x / 32 ? sh[threadIdx.x] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffff, t, o);
        if (threadIdx.x == 0) sh[0] = t;
    }
    __syncthreads();
    return sh[0];
}

// RMSNorm of each d-wide row as the CPU does it (squares summed in f64, the scale applied in
// f32 before the gain), written as f16 for the next matrix product. One block per row.
extern "C" __global__ void rms_norm_f16(const float* __restrict__ x, const float* __restrict__ g,
                                        u16* __restrict__ y, int d, float eps) {
    __shared__ double sh[32];
    const float* xr = x + (i64)blockIdx.x * d;
    u16* yr = y + (i64)blockIdx.x * d;
    double s = 0.0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) s += (double)(xr[i] * xr[i]);
    s = block_sum_d(s, sh);
    float mean = (float)(s / (double)d);
    float scale = 1.0f / sqrtf(mean + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = f2h((xr[i] * scale) * g[i]);
}

// RoPE (adjacent pairs of the first n_rot dims of each head, the CPU's fused rotation) on the
// f32 projections of a tile of `nt` tokens at positions p0.., with the cos/sin table `cs`
// ([position][n_rot/2] pairs). Q goes to `qh` ([token][head][dim] f16); K and V go into the
// layer's cache at their positions ([kv_head][pos][dim] f16, `cap` positions per head).
// One thread per (token, head, pair) for Q heads and KV heads together.
extern "C" __global__ void rope_store(const float* __restrict__ q, const float* __restrict__ k,
                                      const float* __restrict__ v, const float* __restrict__ cs,
                                      u16* __restrict__ qh, u16* __restrict__ kc,
                                      u16* __restrict__ vc, int nt, int p0, int nh, int nkv,
                                      int hd, int n_rot, i64 cap) {
    i64 idx = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    int pairs = hd / 2;
    int heads = nh + nkv;
    i64 total = (i64)nt * heads * pairs;
    if (idx >= total) return;
    int p = idx % pairs;
    int hh = (idx / pairs) % heads;
    int t = idx / ((i64)pairs * heads);
    int pos = p0 + t;
    int half = n_rot / 2;
    float c = 1.0f, s = 0.0f;
    bool rot = p < half;
    if (rot) {
        c = cs[((i64)pos * half + p) * 2];
        s = cs[((i64)pos * half + p) * 2 + 1];
    }
    if (hh < nh) {
        const float* src = q + ((i64)t * nh + hh) * hd + 2 * p;
        float x0 = src[0], x1 = src[1];
        u16* dst = qh + ((i64)t * nh + hh) * hd + 2 * p;
        if (rot) {
            dst[0] = f2h(fmaf(x0, c, -(x1 * s)));
            dst[1] = f2h(fmaf(x0, s, x1 * c));
        } else {
            dst[0] = f2h(x0);
            dst[1] = f2h(x1);
        }
    } else {
        int g = hh - nh;
        const float* src = k + ((i64)t * nkv + g) * hd + 2 * p;
        float x0 = src[0], x1 = src[1];
        u16* dst = kc + ((i64)g * cap + pos) * hd + 2 * p;
        if (rot) {
            dst[0] = f2h(fmaf(x0, c, -(x1 * s)));
            dst[1] = f2h(fmaf(x0, s, x1 * c));
        } else {
            dst[0] = f2h(x0);
            dst[1] = f2h(x1);
        }
        const float* vs = v + ((i64)t * nkv + g) * hd + 2 * p;
        u16* vd = vc + ((i64)g * cap + pos) * hd + 2 * p;
        vd[0] = f2h(vs[0]);
        vd[1] = f2h(vs[1]);
    }
}

// Causal softmax of the scores of one query group: `rows` = members × nq rows of `ld` scores
// (row r is member r / nq, query r % nq at position q0 + r % nq); keys 0..=pos count, the rest
// of the `nk` columns become 0. P (f16, same ld) = exp(s - max) / sum, max and sum in f32.
// One block per row.
extern "C" __global__ void softmax_causal(const float* __restrict__ S, u16* __restrict__ P,
                                          i64 ld, int nq, int q0, int nk) {
    __shared__ float sh[32];
    int r = blockIdx.x;
    int pos = q0 + r % nq;
    int valid = pos + 1 < nk ? pos + 1 : nk;
    const float* s = S + (i64)r * ld;
    u16* p = P + (i64)r * ld;
    float m = NEG_INF;
    for (int i = threadIdx.x; i < valid; i += blockDim.x) m = fmaxf(m, s[i]);
    m = block_max_f(m, sh);
    float l = 0.0f;
    for (int i = threadIdx.x; i < valid; i += blockDim.x) l += expf(s[i] - m);
    l = block_sum_f(l, sh);
    float inv = 1.0f / l;
    for (int i = threadIdx.x; i < nk; i += blockDim.x)
        p[i] = i < valid ? f2h(expf(s[i] - m) * inv) : (u16)0;
}

// h = f16(silu(g) * u), silu(x) = x / (1 + exp(-x)).
extern "C" __global__ void swiglu_f16(const float* __restrict__ g, const float* __restrict__ u,
                                      u16* __restrict__ h, i64 n) {
    i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    float x = g[e];
    h[e] = f2h(x / (1.0f + expf(-x)) * u[e]);
}

// Negative log-likelihood of targets[r] under each of `rows` logit rows of width `nv`: the
// max in f32, the sum of exp(v - max) in f64 (the CPU's and llama.cpp's log_softmax).
extern "C" __global__ void nll_rows(const float* __restrict__ logits, const u32* __restrict__ targets,
                                    double* __restrict__ out, int nv) {
    __shared__ float shf[32];
    __shared__ double shd[32];
    const float* x = logits + (i64)blockIdx.x * nv;
    float m = NEG_INF;
    for (int i = threadIdx.x; i < nv; i += blockDim.x) m = fmaxf(m, x[i]);
    m = block_max_f(m, shf);
    double s = 0.0;
    for (int i = threadIdx.x; i < nv; i += blockDim.x) s += (double)expf(x[i] - m);
    s = block_sum_d(s, shd);
    if (threadIdx.x == 0) {
        u32 t = targets[blockIdx.x];
        float lt = t < (u32)nv ? x[t] : NEG_INF;
        out[blockIdx.x] = log(s) - (double)(lt - m);
    }
}

// acc[c] += sum over `rows` rows of x[r][c]^2 (x f16, `cols` wide), for the importance matrix.
// Block (256 columns) × grid.y row groups; each thread sums its column over its rows in f64
// and adds the result atomically.
extern "C" __global__ void col_sumsq(const u16* __restrict__ x, int rows, int cols,
                                     double* __restrict__ acc) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    int per = (rows + gridDim.y - 1) / gridDim.y;
    int r0 = blockIdx.y * per;
    int r1 = r0 + per < rows ? r0 + per : rows;
    double s = 0.0;
    for (int r = r0; r < r1; r++) {
        float v = h2f(x[(i64)r * cols + c]);
        s += (double)(v * v);
    }
    atomicAdd(acc + c, s);
}
