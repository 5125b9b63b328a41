// cutrans lattice kernels: RNN-T alpha/beta recursions and gradient coefficients.
//
// The sample's T_b x (U_b + 1) lattice lives in rows offsets[b] + t * (U_b + 1) + u of the
// packed row space; the per-row arrays hold rows [rbase, ...) (row r is element r - rbase;
// `values` and `coefs` hold W_in / W_out values per row: blank at 0, emission at 1);
// log_like is indexed by b.
// `lattice`: one block per (sample, sweep): the alpha sweep of sample b, and with need_grad
// also its beta sweep in another block at the same time (the two are independent), for b
// in [b0, b1) (grid-stride over the jobs). Anti-diagonal wavefront: cells of diagonal
// n = t + u depend only on diagonal n -+ 1, so BLOCK threads loop over the cells of one
// diagonal, then __syncthreads. The previous diagonal lives in shared memory (two buffers of
// `diag_cells` values, dynamic shared memory), so a step reads no global memory that
// depends on the step before; a sample whose diagonals are longer reads its neighbours from
// the per-cell alpha / beta rows instead (global-memory writes of a block are visible to
// the block after the barrier). Each thread loads the log-probabilities of its first cell
// kPrefetch diagonals ahead (in flight across that many steps' work and barriers).
// `lattice_grad` (need_grad): one thread per row of samples [b0, b1), the coefficients
// from alpha, beta and log_like.
#include "common.cuh"

template <class C> struct Pair {
  C x, y;
};

// Diagonals whose first-cell log-probabilities a thread has in flight. row_stats wrote the
// per-row values while it streamed the whole group's logits through L2, so most are likely
// back in HBM, whose latency a single step's work does not cover (H100: ~0.47 us per step
// one step ahead, run B; the same in run C with a ring of four rotated by register moves,
// which wait for the newest load: see sweep; ~0.43 us with the unrolled rounds, run D: the
// barrier and the dependent log_add per step are most of what is left).
// (float: 4; double: 2, which keeps lattice<double, 128> free of spills)
template <class C> constexpr int kPrefetch = sizeof(C) == 4 ? 4 : 2;

// The two log-probabilities that the thread's first cell (t, u) of diagonal n reads (-inf
// for none): the alpha sweep lp_blank(t-1, u), lp_emit(t, u-1); the beta sweep lp_blank(t, u),
// lp_emit(t, u). Loaded kPrefetch steps ahead.
template <class C>
__device__ __forceinline__ Pair<C> first_cell_log_probs(const C* vals, int w_in, int T, int U,
                                                        int n, bool back) {
  const C ninf = cutrans::neg_inf(C());
  Pair<C> p{ninf, ninf};
  const int t = (n - U > 0 ? n - U : 0) + static_cast<int>(threadIdx.x);
  if (n < 0 || n > T - 1 + U || t > (n < T - 1 ? n : T - 1)) return p;
  const int c = t * (U + 1) + (n - t);  // 32-bit: a sample's lattice has < 2^31 cells
  if (back) {
    p.x = vals[static_cast<long long>(c) * w_in];
    p.y = vals[static_cast<long long>(c) * w_in + 1];
  } else {
    if (t > 0) p.x = vals[static_cast<long long>(c - U - 1) * w_in];
    if (n - t > 0) p.y = vals[static_cast<long long>(c - 1) * w_in + 1];
  }
  return p;
}

// alpha(0,0) = 0;
// alpha(t,u) = log_add(alpha(t-1,u) + lp_blank(t-1,u), alpha(t,u-1) + lp_emit(t,u-1))
// log_like[b] = alpha(T_b-1, U_b) + lp_blank(T_b-1, U_b)
// beta(T_b-1, U_b) = lp_blank(T_b-1, U_b);
// beta(t,u) = log_add(beta(t+1,u) + lp_blank(t,u), beta(t,u+1) + lp_emit(t,u)).
// One sweep (BACK: beta) of one sample by the whole block; `out` gets every cell's value
// when `keep`, the diagonals live in `smem` (2 x diag_cells) when `shared`, else they are
// read back from `out`. Returns the last diagonal's value (alpha: the cell (T-1, U), to
// thread 0; beta: unused).
template <class C, int BLOCK, bool BACK>
__device__ __forceinline__ C sweep(const C* vals, int w_in, int T, int U, C* out, C* smem,
                                   int diag_cells, bool shared, bool keep) {
  const C ninf = cutrans::neg_inf(C());
  const int U1 = U + 1, n_last = T - 1 + U;
  const int last = (T - 1) * U1 + U;  // cell indices in 32 bits (< 2^31 cells a sample)
  C* prev = smem;
  C* cur = smem + diag_cells;
  constexpr int step = BACK ? -1 : 1;
  int n = BACK ? n_last : 0;
  constexpr int D = kPrefetch<C>;
  Pair<C> ahead[D];  // ahead[j]: first-cell log-probabilities of diagonal n + j step
#pragma unroll
  for (int j = 0; j < D; ++j)
    ahead[j] = first_cell_log_probs(vals, w_in, T, U, n + j * step, BACK);
  // Rounds of D steps, unrolled: step j of a round uses ahead[j], then refills it for
  // the step D later. A ring rotated by register moves would wait at the next step
  // for the load just issued (one step ahead in effect, whatever D says).
  for (int k0 = 0; k0 <= n_last; k0 += D) {
#pragma unroll
    for (int j = 0; j < D; ++j) {
      if (k0 + j > n_last) break;  // uniform over the block
      const int t_lo = n - U > 0 ? n - U : 0;
      const int t_hi = n < T - 1 ? n : T - 1;
      const int m = n - step;  // the diagonal read: n - 1 (alpha) or n + 1 (beta)
      const int q_lo = m - U > 0 ? m - U : 0;  // its t_lo
      const Pair<C> f = ahead[j];
      for (int t = t_lo + threadIdx.x; t <= t_hi; t += BLOCK) {
        const int u = n - t;
        const int c = t * U1 + u;
        const bool first = t == t_lo + static_cast<int>(threadIdx.x);
        C v;
        if (!BACK) {
          if (n == 0) {
            v = C(0);
          } else {
            const C lb = first ? f.x : (t > 0 ? vals[static_cast<long long>(c - U1) * w_in] : ninf);
            const C le = first ? f.y : (u > 0 ? vals[static_cast<long long>(c - 1) * w_in + 1] : ninf);
            const C from_t = t > 0 ? (shared ? prev[t - 1 - q_lo] : out[c - U1]) + lb : ninf;
            const C from_u = u > 0 ? (shared ? prev[t - q_lo] : out[c - 1]) + le : ninf;
            v = cutrans::log_add(from_t, from_u);
          }
        } else {
          const C lb = first ? f.x : vals[static_cast<long long>(c) * w_in];
          const C le = first ? f.y : vals[static_cast<long long>(c) * w_in + 1];
          if (c == last) {
            v = lb;
          } else {
            const C down = t + 1 < T ? (shared ? prev[t + 1 - q_lo] : out[c + U1]) : ninf;
            const C right = u < U ? (shared ? prev[t - q_lo] : out[c + 1]) : ninf;
            v = cutrans::log_add(down + lb, right + le);
          }
        }
        if (shared) cur[t - t_lo] = v;
        if (keep) out[c] = v;
      }
      ahead[j] = first_cell_log_probs(vals, w_in, T, U, n + D * step, BACK);
      __syncthreads();
      C* swap = prev;
      prev = cur;
      cur = swap;
      n += step;
    }
  }
  return shared ? prev[0] : out[BACK ? 0 : last];
}

// alpha and beta are written for every cell with need_grad (lattice_grad reads them), else
// alpha only where the diagonals exceed the shared buffers (then beta may alias alpha).
template <class C, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
lattice(const long long* __restrict__ offsets, const int* __restrict__ logit_len,
        const int* __restrict__ target_len, int b0, int b1, long long rbase,
        const C* __restrict__ values, int w_in, C* alpha, C* beta, C* __restrict__ log_like,
        int need_grad, int diag_cells) {
  CUTRANS_DYN_SHARED(C, smem);  // 2 * diag_cells values
  const int sweeps = need_grad ? 2 : 1;
  const long long jobs = static_cast<long long>(b1 - b0) * sweeps;
  for (long long job = blockIdx.x; job < jobs; job += gridDim.x) {
    const int b = b0 + static_cast<int>(job / sweeps);
    const long long base = offsets[b] - rbase;
    const int T = logit_len[b], U = target_len[b];
    const C* vals = values + base * w_in;  // pb(c) = vals[c w_in], pe(c) = vals[c w_in + 1]
    const bool shared = (T < U + 1 ? T : U + 1) <= diag_cells;  // the longest diagonal fits
    const bool keep = need_grad || !shared;
    if (job % sweeps == 1) {
      sweep<C, BLOCK, true>(vals, w_in, T, U, beta + base, smem, diag_cells, shared, keep);
    } else {
      const C a = sweep<C, BLOCK, false>(vals, w_in, T, U, alpha + base, smem, diag_cells,
                                         shared, keep);
      if (threadIdx.x == 0) {  // the last diagonal is the cell (T-1, U): thread 0's
        log_like[b] = a + vals[(static_cast<long long>(T - 1) * (U + 1) + U) * w_in];
      }
    }
    __syncthreads();  // the buffers are free for the next job
  }
}

// coef_blank[r] = exp(alpha + lp_blank + beta(t+1,u) - LL), beta(T_b, U_b) := 0;
// coef_emit[r] = exp(alpha + lp_emit + beta(t,u+1) - LL); out-of-lattice beta = -inf.
// One thread per row of samples [b0, b1) (grid-stride); coefs may alias values (a row's
// coefficients are written by the thread that read its values).
template <class C, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
lattice_grad(const long long* __restrict__ offsets, const int* __restrict__ logit_len,
             const int* __restrict__ target_len, int b0, int b1, long long rbase,
             const C* values, int w_in, const C* __restrict__ alpha,
             const C* __restrict__ beta, const C* __restrict__ log_like, C* coefs, int w_out) {
  const C ninf = cutrans::neg_inf(C());
  const long long first = offsets[b0], n_rows = offsets[b1] - first;
  const long long stride = static_cast<long long>(gridDim.x) * BLOCK;
  for (long long i = blockIdx.x * static_cast<long long>(BLOCK) + threadIdx.x; i < n_rows;
       i += stride) {
    const cutrans::RowPos p = cutrans::row_pos(offsets, target_len, b1, first + i);
    const int T = logit_len[p.b];
    const long long e = first + i - rbase;  // the row's element of the per-row arrays
    const C a = alpha[e], ll = log_like[p.b];
    const C lb = values[e * w_in], le = values[e * w_in + 1];
    const C down = p.t + 1 < T ? beta[e + p.U + 1] : (p.u == p.U ? C(0) : ninf);
    const C right = p.u < p.U ? beta[e + 1] : ninf;
    coefs[e * w_out] = cutrans::c_exp(a + lb + down - ll);
    coefs[e * w_out + 1] = cutrans::c_exp(a + le + right - ll);
  }
}

// The general lattice (cutrans._topology): n_arcs arc kinds, arcs[5 a ...] = (w1, w2, dt, du,
// can_end): from (t, u) to (t + dt, u + du) with weight values[w1] (+ values[w2] if w2 >= 0)
// of the source row (W values per row). alpha(0, 0) = 0; alpha(t, u) = log-sum over the
// arcs into (t, u); log_like[b] = log-sum over the end arcs landing exactly on (T_b, U_b).
// With need_grad: beta(t, u) = log-sum over the arcs out of (t, u) of weight + beta(dest)
// (dest (T_b, U_b) of an end arc: 0; outside the lattice: -inf), then every row's W
// coefficients coefs[w] = sum over its arcs that use values[w] of
// exp(alpha + weight + beta(dest) - log_like) (coefs may alias values). One block per
// sample, anti-diagonal wavefront over global alpha and beta (dt + du >= 1: a diagonal needs
// only earlier ones for alpha, later ones for beta).
constexpr int kMaxArcs = 64;  // cutrans._topology keeps TDT's durations below this / 2
constexpr int kMaxWidth = 40;

template <class C, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
lattice_arcs(const long long* __restrict__ offsets, const int* __restrict__ logit_len,
             const int* __restrict__ target_len, int b0, int b1, long long rbase,
             const C* values, int W, const int* __restrict__ arcs, int n_arcs, C* alpha,
             C* beta, C* __restrict__ log_like, C* coefs, int need_grad) {
  __shared__ int arc[5 * kMaxArcs];
  __shared__ C ll_shared;
  for (int k = threadIdx.x; k < 5 * n_arcs; k += BLOCK) arc[k] = arcs[k];
  __syncthreads();
  const C ninf = cutrans::neg_inf(C());
  for (int b = b0 + static_cast<int>(blockIdx.x); b < b1; b += gridDim.x) {
    const long long base = offsets[b] - rbase;
    const int T = logit_len[b], U = target_len[b], U1 = U + 1;
    const C* vals = values + base * W;
    C* al = alpha + base;
    C* be = beta + base;
    auto weight = [&](int a, long long c) {
      const int w2 = arc[5 * a + 1];
      return vals[c * W + arc[5 * a]] + (w2 >= 0 ? vals[c * W + w2] : C(0));
    };
    for (int n = 0; n <= T - 1 + U; ++n) {
      const int t_lo = n - U > 0 ? n - U : 0;
      const int t_hi = n < T - 1 ? n : T - 1;
      for (int t = t_lo + threadIdx.x; t <= t_hi; t += BLOCK) {
        const int u = n - t;
        C acc = n == 0 ? C(0) : ninf;
        for (int a = 0; a < n_arcs; ++a) {
          const int st = t - arc[5 * a + 2], su = u - arc[5 * a + 3];
          if (n > 0 && st >= 0 && su >= 0) {
            const long long src = static_cast<long long>(st) * U1 + su;
            acc = cutrans::log_add(acc, al[src] + weight(a, src));
          }
        }
        al[static_cast<long long>(t) * U1 + u] = acc;
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      C ll = ninf;
      for (int a = 0; a < n_arcs; ++a) {
        const int st = T - arc[5 * a + 2], su = U - arc[5 * a + 3];
        if (arc[5 * a + 4] && st >= 0 && su >= 0) {
          const long long src = static_cast<long long>(st) * U1 + su;
          ll = cutrans::log_add(ll, al[src] + weight(a, src));
        }
      }
      log_like[b] = ll;
      ll_shared = ll;
    }
    __syncthreads();
    if (need_grad) {
      const C ll = ll_shared;
      for (int n = T - 1 + U; n >= 0; --n) {
        const int t_lo = n - U > 0 ? n - U : 0;
        const int t_hi = n < T - 1 ? n : T - 1;
        for (int t = t_lo + threadIdx.x; t <= t_hi; t += BLOCK) {
          const int u = n - t;
          const long long c = static_cast<long long>(t) * U1 + u;
          C acc = ninf;
          for (int a = 0; a < n_arcs; ++a) {
            const int dt = t + arc[5 * a + 2], du = u + arc[5 * a + 3];
            C dest = ninf;
            if (arc[5 * a + 4] && dt == T && du == U) dest = C(0);
            else if (dt < T && du <= U) dest = be[static_cast<long long>(dt) * U1 + du];
            acc = cutrans::log_add(acc, weight(a, c) + dest);
          }
          be[c] = acc;
        }
        __syncthreads();
      }
      const unsigned cells = static_cast<unsigned>(T) * static_cast<unsigned>(U1);  // < 2^31
      for (unsigned c = threadIdx.x; c < cells; c += BLOCK) {
        const int t = static_cast<int>(c / static_cast<unsigned>(U1));
        const int u = static_cast<int>(c - static_cast<unsigned>(t) * static_cast<unsigned>(U1));
        C out[kMaxWidth];
        for (int w = 0; w < W; ++w) out[w] = C(0);
        const C a0 = al[c] - ll;
        for (int a = 0; a < n_arcs; ++a) {
          const int dt = t + arc[5 * a + 2], du = u + arc[5 * a + 3];
          C dest = ninf;
          if (arc[5 * a + 4] && dt == T && du == U) dest = C(0);
          else if (dt < T && du <= U) dest = be[static_cast<long long>(dt) * U1 + du];
          const C post = cutrans::c_exp(a0 + weight(a, c) + dest);
          out[arc[5 * a]] += post;
          if (arc[5 * a + 1] >= 0) out[arc[5 * a + 1]] += post;
        }
        for (int w = 0; w < W; ++w) coefs[(base + c) * W + w] = out[w];
      }
    }
    __syncthreads();  // ll_shared free for the next sample
  }
}
