// cutrans lattice kernel: RNN-T alpha/beta recursions and gradient coefficients.
//
// One block per sample b in [b0, b1) (grid-stride). The sample's T_b x (U_b + 1) lattice
// lives in rows offsets[b] + t * (U_b + 1) + u of the packed row space; the per-row arrays
// hold rows [rbase, ...) (row r is element r - rbase; `values` and `coefs` hold W_in / W_out
// values per row: blank at 0, emission at 1); log_like is indexed by b.
// Anti-diagonal wavefront: cells of diagonal n = t + u depend only on diagonal n -+ 1, so
// BLOCK threads loop over the cells of one diagonal, then __syncthreads. The previous
// diagonal lives in shared memory (two buffers of `diag_cells` values, dynamic shared
// memory), so a step reads no global memory that depends on the step before; a sample
// whose diagonals are longer uses its own rows of a workspace as the two buffers instead
// (beta's with need_grad, else alpha's; global-memory writes of a block are visible to the
// block after the barrier).
#include "common.cuh"

// alpha(0,0) = 0;
// alpha(t,u) = log_add(alpha(t-1,u) + lp_blank(t-1,u), alpha(t,u-1) + lp_emit(t,u-1))
// log_like[b] = alpha(T_b-1, U_b) + lp_blank(T_b-1, U_b)
// if need_grad (beta sweep, from the last cell back, with the coefficients on the way):
//   beta(T_b-1, U_b) = lp_blank(T_b-1, U_b);
//   beta(t,u) = log_add(beta(t+1,u) + lp_blank(t,u), beta(t,u+1) + lp_emit(t,u));
//   coef_blank[r] = exp(alpha + lp_blank + beta(t+1,u) - LL), beta(T_b, U_b) := 0;
//   coef_emit[r] = exp(alpha + lp_emit + beta(t,u+1) - LL); out-of-lattice beta = -inf.
// With need_grad, alpha is written for every cell (the beta sweep reads it); alpha without
// need_grad, and beta, are workspace. coefs may alias values (w_out == w_in): a cell's
// coefficients are written by the thread that reads that cell's log-probabilities, after
// its last read of them. beta may alias alpha when need_grad == 0 (then untouched).
template <class C, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
lattice(const long long* __restrict__ offsets, const int* __restrict__ logit_len,
        const int* __restrict__ target_len, int b0, int b1, long long rbase, const C* values,
        int w_in, C* alpha, C* beta, C* __restrict__ log_like, C* coefs, int w_out,
        int need_grad, int diag_cells) {
  CUTRANS_DYN_SHARED(C, smem);  // 2 * diag_cells values
  __shared__ C ll_shared;
  const C ninf = cutrans::neg_inf(C());
  for (int b = b0 + static_cast<int>(blockIdx.x); b < b1; b += gridDim.x) {
    const long long base = offsets[b] - rbase;
    const int T = logit_len[b], U = target_len[b], U1 = U + 1;
    const C* vals = values + base * w_in;  // pb(c) = vals[c w_in], pe(c) = vals[c w_in + 1]
    C* al = alpha + base;
    const int D = T < U1 ? T : U1;  // cells of the longest diagonal
    // two diagonal buffers: shared memory, or 2 D of the sample's T U1 >= 2 D workspace rows
    C* prev = D <= diag_cells ? smem : (need_grad ? beta : alpha) + base;
    C* cur = prev + (D <= diag_cells ? diag_cells : D);
    // alpha: diagonal n holds t in [t_lo(n), t_hi(n)] at index t - t_lo(n). The values a
    // thread's first cell of diagonal n + 1 reads do not depend on the recursion: they are
    // loaded before step n's work and barrier (in flight across them), so a step waits on
    // shared memory only, not on a global load (the longest diagonals' other cells, when
    // D > BLOCK, load in the step).
    C pre_t, pre_u;  // lp_blank of (t-1, u), lp_emit of (t, u-1) for the thread's first cell
    auto prefetch_alpha = [&](int n, C& from_t, C& from_u) {
      const int t = (n - U > 0 ? n - U : 0) + static_cast<int>(threadIdx.x);
      const int u = n - t;
      from_t = ninf;
      from_u = ninf;
      if (n <= T - 1 + U && t <= (n < T - 1 ? n : T - 1)) {
        const long long c = static_cast<long long>(t) * U1 + u;
        if (t > 0) from_t = vals[(c - U1) * w_in];
        if (u > 0) from_u = vals[(c - 1) * w_in + 1];
      }
    };
    prefetch_alpha(0, pre_t, pre_u);
    for (int n = 0; n <= T - 1 + U; ++n) {
      const int t_lo = n - U > 0 ? n - U : 0;
      const int t_hi = n < T - 1 ? n : T - 1;
      const int p_lo = n - 1 - U > 0 ? n - 1 - U : 0;  // t_lo(n - 1)
      const C first_t = pre_t, first_u = pre_u;
      prefetch_alpha(n + 1, pre_t, pre_u);
      for (int t = t_lo + threadIdx.x; t <= t_hi; t += BLOCK) {
        const int u = n - t;
        const long long c = static_cast<long long>(t) * U1 + u;
        const bool first = t == t_lo + static_cast<int>(threadIdx.x);
        C a = C(0);
        if (n > 0) {
          const C lb = first ? first_t : (t > 0 ? vals[(c - U1) * w_in] : ninf);
          const C le = first ? first_u : (u > 0 ? vals[(c - 1) * w_in + 1] : ninf);
          const C from_t = t > 0 ? prev[t - 1 - p_lo] + lb : ninf;
          const C from_u = u > 0 ? prev[t - p_lo] + le : ninf;
          a = cutrans::log_add(from_t, from_u);
        }
        cur[t - t_lo] = a;
        if (need_grad) al[c] = a;
      }
      __syncthreads();
      C* swap = prev;
      prev = cur;
      cur = swap;
    }
    const long long last = static_cast<long long>(T - 1) * U1 + U;
    if (threadIdx.x == 0) {
      const C ll = prev[0] + vals[last * w_in];  // the last diagonal is the cell (T-1, U)
      log_like[b] = ll;
      ll_shared = ll;
    }
    __syncthreads();  // ll_shared published; the buffers are free for beta
    if (need_grad) {
      const C ll = ll_shared;
      // the thread's first cell of the next diagonal: its lp_blank, lp_emit and alpha,
      // loaded a step ahead (as in the alpha sweep; coefs may alias values, but a cell's
      // coefficients are written only at its own step, after these loads)
      C pre_b = ninf, pre_e = ninf, pre_a = ninf;
      auto prefetch_beta = [&](int n, C& lb, C& le, C& a) {
        const int t = (n - U > 0 ? n - U : 0) + static_cast<int>(threadIdx.x);
        if (n >= 0 && t <= (n < T - 1 ? n : T - 1)) {
          const long long c = static_cast<long long>(t) * U1 + (n - t);
          lb = vals[c * w_in];
          le = vals[c * w_in + 1];
          a = al[c];
        }
      };
      prefetch_beta(T - 1 + U, pre_b, pre_e, pre_a);
      for (int n = T - 1 + U; n >= 0; --n) {
        const int t_lo = n - U > 0 ? n - U : 0;
        const int t_hi = n < T - 1 ? n : T - 1;
        const int q_lo = n + 1 - U > 0 ? n + 1 - U : 0;  // t_lo(n + 1)
        const C first_b = pre_b, first_e = pre_e, first_a = pre_a;
        prefetch_beta(n - 1, pre_b, pre_e, pre_a);
        for (int t = t_lo + threadIdx.x; t <= t_hi; t += BLOCK) {
          const int u = n - t;
          const long long c = static_cast<long long>(t) * U1 + u;
          const bool first = t == t_lo + static_cast<int>(threadIdx.x);
          const C lb = first ? first_b : vals[c * w_in];
          const C le = first ? first_e : vals[c * w_in + 1];
          // beta(t+1, u) and beta(t, u+1) are on diagonal n + 1 (the previous step)
          const C down = c == last ? C(0) : (t + 1 < T ? prev[t + 1 - q_lo] : ninf);
          const C right = u < U ? prev[t - q_lo] : ninf;
          cur[t - t_lo] = c == last ? lb : cutrans::log_add(down + lb, right + le);
          const C a = first ? first_a : al[c];
          coefs[(base + c) * w_out] = cutrans::c_exp(a + lb + down - ll);
          coefs[(base + c) * w_out + 1] = cutrans::c_exp(a + le + right - ll);
        }
        __syncthreads();
        C* swap = prev;
        prev = cur;
        cur = swap;
      }
    }
    __syncthreads();  // ll_shared and the buffers are free for the next sample
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
