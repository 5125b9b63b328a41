// cutrans lattice kernel: RNN-T alpha/beta recursions and gradient coefficients.
//
// One block per sample b in [b0, b1) (grid-stride). The sample's T_b x (U_b + 1) lattice
// lives in rows offsets[b] + t * (U_b + 1) + u of the packed row space; the per-row arrays
// hold rows [rbase, ...) (row r is element r - rbase); log_like is indexed by b.
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
// need_grad, and beta, are workspace. coef_blank / coef_emit may alias lp_blank / lp_emit:
// a cell's coefficients are written by the thread that reads that cell's log-probabilities,
// after its last read of them. beta may alias alpha when need_grad == 0 (then untouched).
template <class C, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
lattice(const long long* __restrict__ offsets, const int* __restrict__ logit_len,
        const int* __restrict__ target_len, int b0, int b1, long long rbase, const C* lp_blank,
        const C* lp_emit, C* alpha, C* beta, C* __restrict__ log_like, C* coef_blank,
        C* coef_emit, int need_grad, int diag_cells) {
  CUTRANS_DYN_SHARED(C, smem);  // 2 * diag_cells values
  __shared__ C ll_shared;
  const C ninf = cutrans::neg_inf(C());
  for (int b = b0 + static_cast<int>(blockIdx.x); b < b1; b += gridDim.x) {
    const long long base = offsets[b] - rbase;
    const int T = logit_len[b], U = target_len[b], U1 = U + 1;
    const C* pb = lp_blank + base;
    const C* pe = lp_emit + base;
    C* al = alpha + base;
    const int D = T < U1 ? T : U1;  // cells of the longest diagonal
    // two diagonal buffers: shared memory, or 2 D of the sample's T U1 >= 2 D workspace rows
    C* prev = D <= diag_cells ? smem : (need_grad ? beta : alpha) + base;
    C* cur = prev + (D <= diag_cells ? diag_cells : D);
    // alpha: diagonal n holds t in [t_lo(n), t_hi(n)] at index t - t_lo(n)
    for (int n = 0; n <= T - 1 + U; ++n) {
      const int t_lo = n - U > 0 ? n - U : 0;
      const int t_hi = n < T - 1 ? n : T - 1;
      const int p_lo = n - 1 - U > 0 ? n - 1 - U : 0;  // t_lo(n - 1)
      for (int t = t_lo + threadIdx.x; t <= t_hi; t += BLOCK) {
        const int u = n - t;
        const long long c = static_cast<long long>(t) * U1 + u;
        C a = C(0);
        if (n > 0) {
          const C from_t = t > 0 ? prev[t - 1 - p_lo] + pb[c - U1] : ninf;
          const C from_u = u > 0 ? prev[t - p_lo] + pe[c - 1] : ninf;
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
      const C ll = prev[0] + pb[last];  // the last diagonal is the one cell (T-1, U)
      log_like[b] = ll;
      ll_shared = ll;
    }
    __syncthreads();  // ll_shared published; the buffers are free for beta
    if (need_grad) {
      const C ll = ll_shared;
      for (int n = T - 1 + U; n >= 0; --n) {
        const int t_lo = n - U > 0 ? n - U : 0;
        const int t_hi = n < T - 1 ? n : T - 1;
        const int q_lo = n + 1 - U > 0 ? n + 1 - U : 0;  // t_lo(n + 1)
        for (int t = t_lo + threadIdx.x; t <= t_hi; t += BLOCK) {
          const int u = n - t;
          const long long c = static_cast<long long>(t) * U1 + u;
          const C lb = pb[c], le = pe[c];
          // beta(t+1, u) and beta(t, u+1) are on diagonal n + 1 (the previous step)
          const C down = c == last ? C(0) : (t + 1 < T ? prev[t + 1 - q_lo] : ninf);
          const C right = u < U ? prev[t - q_lo] : ninf;
          cur[t - t_lo] = c == last ? lb : cutrans::log_add(down + lb, right + le);
          const C a = al[c];
          coef_blank[base + c] = cutrans::c_exp(a + lb + down - ll);
          coef_emit[base + c] = cutrans::c_exp(a + le + right - ll);
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
