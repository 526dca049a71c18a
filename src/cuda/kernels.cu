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

// Block-wide reduction (any block size up to 1024 threads, a multiple of 32): every thread
// passes its value and gets the block's result; `sh` holds 32 values.
template <class T, class Op>
__device__ T block_reduce(T v, T identity, T* sh, Op op) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffff, v, o));
    int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();  // an earlier reduction's readers of sh[0] are done
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        T t = threadIdx.x < blockDim.x / 32 ? sh[threadIdx.x] : identity;
        for (int o = 16; o > 0; o >>= 1) t = op(t, __shfl_xor_sync(0xffffffff, t, o));
        if (threadIdx.x == 0) sh[0] = t;
    }
    __syncthreads();
    return sh[0];
}
struct AddOp {
    template <class T> __device__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct MinOp {
    __device__ double operator()(double a, double b) const { return fmin(a, b); }
};
__device__ double block_sum_d(double v, double* sh) { return block_reduce(v, 0.0, sh, AddOp()); }
__device__ float block_sum_f(float v, float* sh) { return block_reduce(v, 0.0f, sh, AddOp()); }
__device__ float block_max_f(float v, float* sh) { return block_reduce(v, NEG_INF, sh, MaxOp()); }

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
// ([position - cs0][n_rot/2] pairs). Q goes to `qh` ([token][head][dim] f16); K and V go into the
// layer's cache at their positions ([kv_head][pos][dim] f16, `cap` positions per head).
// One thread per (token, head, pair) for Q heads and KV heads together.
extern "C" __global__ void rope_store(const float* __restrict__ q, const float* __restrict__ k,
                                      const float* __restrict__ v, const float* __restrict__ cs,
                                      u16* __restrict__ qh, u16* __restrict__ kc,
                                      u16* __restrict__ vc, int nt, int p0, int cs0, int nh,
                                      int nkv, int hd, int n_rot, i64 cap) {
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
        c = cs[((i64)(pos - cs0) * half + p) * 2];
        s = cs[((i64)(pos - cs0) * half + p) * 2 + 1];
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

// Max and first index of the max over a block (ties go to the lower index).
__device__ void block_argmax(float& v, int& i, float* shv, int* shi) {
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffff, v, o);
        int oi = __shfl_xor_sync(0xffffffff, i, o);
        if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
    }
    int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) { shv[w] = v; shi[w] = i; }
    __syncthreads();
    if (threadIdx.x < 32) {
        float t = threadIdx.x < blockDim.x / 32 ? shv[threadIdx.x] : NEG_INF;
        int ti = threadIdx.x < blockDim.x / 32 ? shi[threadIdx.x] : 0x7fffffff;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffff, t, o);
            int oi = __shfl_xor_sync(0xffffffff, ti, o);
            if (ov > t || (ov == t && oi < ti)) { t = ov; ti = oi; }
        }
        if (threadIdx.x == 0) { shv[0] = t; shi[0] = ti; }
    }
    __syncthreads();
    v = shv[0];
    i = shi[0];
    __syncthreads();
}

// One position of a comparison, as the host's exact scoring (eval/kld.rs) computes it: for the
// base's and the model's logit rows, the max (f32), the first argmax and ln Σ exp(l - max) (f32
// exps summed in f64); the base's log-probs rounded to f32 as the host stores them; then
// out = {nll, nll_base, KL(base ‖ model) = Σ p_b (ln p_b - ln p_m) in f64, same argmax}.
// One block per position.
extern "C" __global__ void kld_rows(const float* __restrict__ base, const float* __restrict__ model,
                                    const u32* __restrict__ targets, double* __restrict__ out,
                                    int nv) {
    __shared__ float shv[32];
    __shared__ int shi[32];
    __shared__ double shd[32];
    const float* b = base + (i64)blockIdx.x * nv;
    const float* m = model + (i64)blockIdx.x * nv;
    float mb = NEG_INF, mm = NEG_INF;
    int ib = 0x7fffffff, im = 0x7fffffff;
    for (int i = threadIdx.x; i < nv; i += blockDim.x) {
        if (b[i] > mb) { mb = b[i]; ib = i; }
        if (m[i] > mm) { mm = m[i]; im = i; }
    }
    block_argmax(mb, ib, shv, shi);
    block_argmax(mm, im, shv, shi);
    double sb = 0.0, sm = 0.0;
    for (int i = threadIdx.x; i < nv; i += blockDim.x) {
        sb += (double)expf(b[i] - mb);
        sm += (double)expf(m[i] - mm);
    }
    sb = block_sum_d(sb, shd);
    sm = block_sum_d(sm, shd);
    double lse_b = log(sb);
    double off = (double)mm + log(sm);
    double kl = 0.0;
    for (int i = threadIdx.x; i < nv; i += blockDim.x) {
        float lb = (float)((double)(b[i] - mb) - lse_b);
        double pb = exp((double)lb);
        if (pb > 0.0) kl += pb * ((double)lb - ((double)m[i] - off));
    }
    kl = block_sum_d(kl, shd);
    if (threadIdx.x == 0) {
        u32 t = targets[blockIdx.x];
        double lm = t < (u32)nv ? (double)m[t] : (double)NEG_INF;
        float lbt = t < (u32)nv ? (float)((double)(b[t] - mb) - lse_b) : NEG_INF;
        double* o = out + (i64)blockIdx.x * 4;
        o[0] = off - lm;
        o[1] = -(double)lbt;
        o[2] = kl;
        o[3] = ib == im ? 1.0 : 0.0;
    }
}

// One position scored against a saved base record, as the host's `score_saved` (eval/kld.rs)
// does: the model's max, first argmax and ln Σ exp (f32 exps, f64 sum); the exact head over the
// record's top k; over the tail (every token not in the top k, marked in a shared bitmap) the
// model's mass s, Σ q ln q and the smallest ln q (f64); then the bounds and the sampled (or
// ∝ q) tail estimate. Per row the record is meta = {target ln p, tail mass, tail Σ p ln p},
// k top (id, ln p) and k samples (id u32::MAX = none). out, 8 per row: nll, nll_base, kld,
// lower, upper, tail variance, same top, tail mass. One block per row; nv <= 262144.
extern "C" __global__ void kld_saved_rows(const float* __restrict__ logits,
                                          const float* __restrict__ meta,
                                          const u32* __restrict__ top_id,
                                          const float* __restrict__ top_lp,
                                          const u32* __restrict__ smp_id,
                                          const float* __restrict__ smp_lp,
                                          const u32* __restrict__ targets,
                                          double* __restrict__ out, int nv, int k) {
    __shared__ u32 mask[8192];
    __shared__ float shv[32];
    __shared__ int shi[32];
    __shared__ double shd[32];
    const int row = blockIdx.x;
    const float* x = logits + (i64)row * nv;
    const u32* tid = top_id + (i64)row * k;
    const float* tlp = top_lp + (i64)row * k;
    const u32* sid = smp_id + (i64)row * k;
    const float* slp = smp_lp + (i64)row * k;
    const float* mt = meta + (i64)row * 3;
    int words = (nv + 31) / 32;
    for (int i = threadIdx.x; i < words; i += blockDim.x) mask[i] = 0u;
    float mx = NEG_INF;
    int im = 0x7fffffff;
    for (int i = threadIdx.x; i < nv; i += blockDim.x)
        if (x[i] > mx) { mx = x[i]; im = i; }
    block_argmax(mx, im, shv, shi);  // also orders the mask's zeroing before the marking
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        u32 id = tid[j];
        if (id < (u32)nv) atomicOr(&mask[id >> 5], 1u << (id & 31));
    }
    double se = 0.0;
    for (int i = threadIdx.x; i < nv; i += blockDim.x) se += (double)expf(x[i] - mx);
    se = block_sum_d(se, shd);  // its barriers also publish the mask
    const double off = (double)mx + log(se);
    double head = 0.0;
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        double lb = (double)tlp[j];
        double pb = exp(lb);
        u32 id = tid[j];
        double lq = id < (u32)nv ? (double)x[id] - off : (double)NEG_INF;
        if (pb > 0.0) head += pb * (lb - lq);
    }
    head = block_sum_d(head, shd);
    double s = 0.0, sq = 0.0, lmin = (double)(-NEG_INF);
    for (int i = threadIdx.x; i < nv; i += blockDim.x) {
        if ((mask[i >> 5] >> (i & 31)) & 1u) continue;
        double l = (double)x[i] - off;
        double q = exp(l);
        s += q;
        if (q > 0.0) sq += q * l;
        lmin = fmin(lmin, l);
    }
    s = block_sum_d(s, shd);
    sq = block_sum_d(sq, shd);
    lmin = block_reduce(lmin, (double)(-NEG_INF), shd, MinOp());
    double ssum = 0.0, ssum2 = 0.0, m = 0.0;
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        u32 id = sid[j];
        if (id == 0xffffffffu) continue;
        double lq = id < (u32)nv ? (double)x[id] - off : (double)NEG_INF;
        double v = (double)slp[j] - lq;
        ssum += v;
        ssum2 += v * v;
        m += 1.0;
    }
    ssum = block_sum_d(ssum, shd);
    ssum2 = block_sum_d(ssum2, shd);
    m = block_sum_d(m, shd);
    if (threadIdx.x == 0) {
        double r = (double)mt[1], tail_plogp = (double)mt[2];
        double lower = 0.0, est = 0.0, upper = 0.0, var_t = 0.0;
        if (r > 0.0 && s > 0.0) {
            lower = r * (log(r) - log(s));
            if (m == 0.0) {
                est = fmax(tail_plogp - r / s * sq, lower);
            } else {
                double var = fmax(ssum2 / m - (ssum / m) * (ssum / m), 0.0);
                var_t = r * r * var / m;
                est = r / m * ssum;
            }
            upper = fmax(tail_plogp - r * lmin, lower);
            est = fmin(fmax(est, lower), upper);
        }
        u32 t = targets[row];
        double lt = t < (u32)nv ? (double)x[t] : (double)NEG_INF;
        double* o = out + (i64)row * 8;
        o[0] = off - lt;
        o[1] = -(double)mt[0];
        o[2] = head + est;
        o[3] = head + lower;
        o[4] = head + upper;
        o[5] = var_t;
        o[6] = (k > 0 && (u32)im == tid[0]) ? 1.0 : 0.0;
        o[7] = r;
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

// ---- fused causal attention (FlashAttention-2 manner) on tensor cores ----
//
// One block of 4 warps computes 64 queries of one head; each warp owns 16 query rows. Keys and
// values stream through shared memory 64 positions at a time; per tile a warp computes its
// scores S = Q Kᵀ with mma.sync m16n8k16 (f16 inputs, f32 sums), scales and masks them, keeps a
// running row max and sum (online softmax, f32), rounds the probabilities to f16 and adds P V
// into f32 accumulators (again mma.sync), so S and P never leave registers. The output row is
// divided by its sum at the end and stored as f16 into [token][head][dim].
//
// Fragment layouts (PTX ISA, mma.m16n8k16 with f16 A/B and f32 C): with g = lane / 4 and
// t = lane % 4, A register i holds row g + 8·(i & 1), columns 2t + 8·(i >> 1) + {0, 1}; B
// register i holds rows (k) 2t + 8·i + {0, 1} of column (n) g; C element e holds row g + 8·(e >> 1),
// column 2t + (e & 1). ldmatrix gives B straight from row-major K (rows are keys) and, with
// .trans, from row-major V; a tile of S in C layout is already P's A layout.

__device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
__device__ __forceinline__ void ldsm_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void mma16816(float* c, const u32* a, u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ u32 pack_h2(float lo, float hi) {
    return (u32)f2h(lo) | ((u32)f2h(hi) << 16);
}

#define FA_BM 64
#define FA_BN 64
#define FA_PAD 8

// q: [token][nh][HD] f16 for the `nt` tokens of a tile at positions p0..; kc, vc: one layer's
// cache [kv_head][cap][HD] f16 holding positions 0..p0+nt; o: [token][nh][HD] f16.
// Grid (ceil(nt / 64), nh), 128 threads. Query blocks run longest first.
template <int HD>
__device__ void flash_attn(const u16* __restrict__ q, const u16* __restrict__ kc,
                           const u16* __restrict__ vc, u16* __restrict__ o, int nt, int p0,
                           int nh, int nkv, i64 cap, float scale) {
    constexpr int LDS = HD + FA_PAD;
    __shared__ __align__(16) u16 sk[FA_BN * LDS];
    __shared__ __align__(16) u16 sv[FA_BN * LDS];
    const int qb = gridDim.x - 1 - blockIdx.x;
    const int h = blockIdx.y;
    const int kvh = h / (nh / nkv);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int gr = lane >> 2, tq = lane & 3;
    const int r0 = qb * FA_BM + warp * 16;
    const int ra = r0 + gr, rb = r0 + gr + 8;
    // Rows past the tile take no keys (their results are not stored).
    const int pa = ra < nt ? p0 + ra : -1;
    const int pb = rb < nt ? p0 + rb : -1;

    u32 qf[HD / 16][4];
    for (int kk = 0; kk < HD / 16; kk++) {
        int c = kk * 16 + 2 * tq;
        const u16* qa = q + ((i64)ra * nh + h) * HD;
        const u16* qbp = q + ((i64)rb * nh + h) * HD;
        qf[kk][0] = ra < nt ? *(const u32*)(qa + c) : 0u;
        qf[kk][1] = rb < nt ? *(const u32*)(qbp + c) : 0u;
        qf[kk][2] = ra < nt ? *(const u32*)(qa + c + 8) : 0u;
        qf[kk][3] = rb < nt ? *(const u32*)(qbp + c + 8) : 0u;
    }
    float acc[HD / 8][4];
    for (int j = 0; j < HD / 8; j++)
        for (int e = 0; e < 4; e++) acc[j][e] = 0.0f;
    float m_a = NEG_INF, m_b = NEG_INF, l_a = 0.0f, l_b = 0.0f;

    const int last = (qb + 1) * FA_BM < nt ? (qb + 1) * FA_BM : nt;
    const int n_keys = p0 + last;  // keys 0 .. position of the block's last query
    const u16* kh = kc + (i64)kvh * cap * HD;
    const u16* vh = vc + (i64)kvh * cap * HD;
    const int warp_last = p0 + r0 + 15;  // largest position a row of this warp can have

    for (int k0 = 0; k0 < n_keys; k0 += FA_BN) {
        __syncthreads();
        for (int i = threadIdx.x; i < FA_BN * HD / 8; i += blockDim.x) {
            int row = i / (HD / 8), c8 = i % (HD / 8);
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (k0 + row < n_keys) {
                kv = ((const uint4*)(kh + (i64)(k0 + row) * HD))[c8];
                vv = ((const uint4*)(vh + (i64)(k0 + row) * HD))[c8];
            }
            *(uint4*)(sk + row * LDS + c8 * 8) = kv;
            *(uint4*)(sv + row * LDS + c8 * 8) = vv;
        }
        __syncthreads();
        if (warp_last < k0) continue;  // every key of the tile is in this warp's future

        float s[FA_BN / 8][4];
        for (int j = 0; j < FA_BN / 8; j++)
            for (int e = 0; e < 4; e++) s[j][e] = 0.0f;
        const int mi = lane >> 3, ri = lane & 7;
        for (int kk = 0; kk < HD / 16; kk++) {
            for (int nn = 0; nn < FA_BN / 16; nn++) {
                int key = nn * 16 + (mi >> 1) * 8 + ri;
                int dim = kk * 16 + (mi & 1) * 8;
                u32 b0, b1, b2, b3;
                ldsm_x4(smem_addr(sk + key * LDS + dim), b0, b1, b2, b3);
                mma16816(s[2 * nn], qf[kk], b0, b1);
                mma16816(s[2 * nn + 1], qf[kk], b2, b3);
            }
        }
        float mx_a = NEG_INF, mx_b = NEG_INF;
        for (int j = 0; j < FA_BN / 8; j++) {
            for (int e = 0; e < 4; e++) {
                int key = k0 + j * 8 + 2 * tq + (e & 1);
                int pos = e < 2 ? pa : pb;
                float v = key <= pos ? s[j][e] * scale : NEG_INF;
                s[j][e] = v;
            }
            mx_a = fmaxf(mx_a, fmaxf(s[j][0], s[j][1]));
            mx_b = fmaxf(mx_b, fmaxf(s[j][2], s[j][3]));
        }
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffff, mx_a, 1));
        mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffff, mx_a, 2));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffff, mx_b, 1));
        mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffff, mx_b, 2));
        float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
        // A row with no key yet keeps 0 as its base so exp never sees -inf - -inf.
        float base_a = mn_a == NEG_INF ? 0.0f : mn_a;
        float base_b = mn_b == NEG_INF ? 0.0f : mn_b;
        float corr_a = expf(m_a - base_a), corr_b = expf(m_b - base_b);
        m_a = mn_a;
        m_b = mn_b;
        float sum_a = 0.0f, sum_b = 0.0f;
        for (int j = 0; j < FA_BN / 8; j++) {
            s[j][0] = expf(s[j][0] - base_a);
            s[j][1] = expf(s[j][1] - base_a);
            s[j][2] = expf(s[j][2] - base_b);
            s[j][3] = expf(s[j][3] - base_b);
            sum_a += s[j][0] + s[j][1];
            sum_b += s[j][2] + s[j][3];
        }
        l_a = l_a * corr_a + sum_a;
        l_b = l_b * corr_b + sum_b;
        for (int j = 0; j < HD / 8; j++) {
            acc[j][0] *= corr_a;
            acc[j][1] *= corr_a;
            acc[j][2] *= corr_b;
            acc[j][3] *= corr_b;
        }
        for (int j2 = 0; j2 < FA_BN / 16; j2++) {
            u32 pf[4];
            pf[0] = pack_h2(s[2 * j2][0], s[2 * j2][1]);
            pf[1] = pack_h2(s[2 * j2][2], s[2 * j2][3]);
            pf[2] = pack_h2(s[2 * j2 + 1][0], s[2 * j2 + 1][1]);
            pf[3] = pack_h2(s[2 * j2 + 1][2], s[2 * j2 + 1][3]);
            for (int dn = 0; dn < HD / 16; dn++) {
                int key = j2 * 16 + (mi & 1) * 8 + ri;
                int dim = dn * 16 + (mi >> 1) * 8;
                u32 b0, b1, b2, b3;
                ldsm_x4_t(smem_addr(sv + key * LDS + dim), b0, b1, b2, b3);
                mma16816(acc[2 * dn], pf, b0, b1);
                mma16816(acc[2 * dn + 1], pf, b2, b3);
            }
        }
    }
    l_a += __shfl_xor_sync(0xffffffff, l_a, 1);
    l_a += __shfl_xor_sync(0xffffffff, l_a, 2);
    l_b += __shfl_xor_sync(0xffffffff, l_b, 1);
    l_b += __shfl_xor_sync(0xffffffff, l_b, 2);
    float inv_a = 1.0f / l_a, inv_b = 1.0f / l_b;
    for (int j = 0; j < HD / 8; j++) {
        int c = j * 8 + 2 * tq;
        if (ra < nt) *(u32*)(o + ((i64)ra * nh + h) * HD + c) = pack_h2(acc[j][0] * inv_a, acc[j][1] * inv_a);
        if (rb < nt) *(u32*)(o + ((i64)rb * nh + h) * HD + c) = pack_h2(acc[j][2] * inv_b, acc[j][3] * inv_b);
    }
}

extern "C" __global__ void __launch_bounds__(128) flash_attn_64(const u16* q, const u16* kc, const u16* vc, u16* o,
                                                                int nt, int p0, int nh, int nkv, i64 cap, float scale) {
    flash_attn<64>(q, kc, vc, o, nt, p0, nh, nkv, cap, scale);
}
extern "C" __global__ void __launch_bounds__(128) flash_attn_128(const u16* q, const u16* kc, const u16* vc, u16* o,
                                                                 int nt, int p0, int nh, int nkv, i64 cap, float scale) {
    flash_attn<128>(q, kc, vc, o, nt, p0, nh, nkv, cap, scale);
}
