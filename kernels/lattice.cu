// cutrans lattice kernel: RNN-T alpha/beta recursions and gradient coefficients.
//
// One block per sample b in [b0, b1) (grid-stride). The sample's T_b x (U_b + 1) lattice
// lives in rows offsets[b] + t * (U_b + 1) + u of the packed row space; the per-row arrays
// hold rows [rbase, ...) (row r is element r - rbase); log_like is indexed by b.
// Anti-diagonal wavefront: cells of diagonal n = t + u depend only on diagonal n -+ 1, so
// BLOCK threads loop over the cells of one diagonal, then __syncthreads (global-memory
// writes of the block are visible to the block after the barrier).
#include "common.cuh"

// alpha(0,0) = 0;
// alpha(t,u) = log_add(alpha(t-1,u) + lp_blank(t-1,u), alpha(t,u-1) + lp_emit(t,u-1))
// log_like[b] = alpha(T_b-1, U_b) + lp_blank(T_b-1, U_b)
// if need_grad:
//   beta(T_b-1, U_b) = lp_blank(T_b-1, U_b);
//   beta(t,u) = log_add(beta(t+1,u) + lp_blank(t,u), beta(t,u+1) + lp_emit(t,u));
//   coef_blank[r] = exp(alpha + lp_blank + beta(t+1,u) - LL), beta(T_b, U_b) := 0;
//   coef_emit[r] = exp(alpha + lp_emit + beta(t,u+1) - LL); out-of-lattice beta = -inf.
// coef_blank / coef_emit may alias lp_blank / lp_emit: a row's coefficients are written by
// the thread that reads that row's log-probabilities, after the barrier ending beta.
// beta may alias alpha when need_grad == 0 (it is then never touched).
template <class C, int BLOCK>
__global__ void __launch_bounds__(BLOCK)
lattice(const long long* __restrict__ offsets, const int* __restrict__ logit_len,
        const int* __restrict__ target_len, int b0, int b1, long long rbase, const C* lp_blank,
        const C* lp_emit, C* alpha, C* beta, C* __restrict__ log_like, C* coef_blank,
        C* coef_emit, int need_grad) {
  __shared__ C ll_shared;
  const C ninf = cutrans::neg_inf(C());
  for (int b = b0 + static_cast<int>(blockIdx.x); b < b1; b += gridDim.x) {
    const long long base = offsets[b] - rbase;
    const int T = logit_len[b], U = target_len[b], U1 = U + 1;
    const C* pb = lp_blank + base;
    const C* pe = lp_emit + base;
    C* al = alpha + base;
    for (int n = 0; n <= T - 1 + U; ++n) {
      const int t_lo = n - U > 0 ? n - U : 0;
      const int t_hi = n < T - 1 ? n : T - 1;
      for (int t = t_lo + threadIdx.x; t <= t_hi; t += BLOCK) {
        const int u = n - t;
        const long long c = static_cast<long long>(t) * U1 + u;
        C a;
        if (n == 0) {
          a = C(0);
        } else {
          const C from_t = t > 0 ? al[c - U1] + pb[c - U1] : ninf;
          const C from_u = u > 0 ? al[c - 1] + pe[c - 1] : ninf;
          a = cutrans::log_add(from_t, from_u);
        }
        al[c] = a;
      }
      __syncthreads();
    }
    const long long last = static_cast<long long>(T - 1) * U1 + U;
    if (threadIdx.x == 0) {
      const C ll = al[last] + pb[last];
      log_like[b] = ll;
      ll_shared = ll;
    }
    if (need_grad) {
      C* be = beta + base;
      for (int n = T - 1 + U; n >= 0; --n) {
        const int t_lo = n - U > 0 ? n - U : 0;
        const int t_hi = n < T - 1 ? n : T - 1;
        for (int t = t_lo + threadIdx.x; t <= t_hi; t += BLOCK) {
          const int u = n - t;
          const long long c = static_cast<long long>(t) * U1 + u;
          C v;
          if (c == last) {
            v = pb[c];
          } else {
            const C down = t + 1 < T ? be[c + U1] + pb[c] : ninf;
            const C right = u < U ? be[c + 1] + pe[c] : ninf;
            v = cutrans::log_add(down, right);
          }
          be[c] = v;
        }
        __syncthreads();  // the last one also ends beta and publishes ll_shared
      }
      const C ll = ll_shared;
      const unsigned cells = static_cast<unsigned>(T) * static_cast<unsigned>(U1);  // < 2^31
      for (unsigned c = threadIdx.x; c < cells; c += BLOCK) {
        const int t = static_cast<int>(c / static_cast<unsigned>(U1));  // 32-bit division
        const int u = static_cast<int>(c - static_cast<unsigned>(t) * static_cast<unsigned>(U1));
        const C a = al[c];
        const C lb = pb[c], le = pe[c];
        const C down = c == last ? C(0) : (t + 1 < T ? be[c + U1] : ninf);
        const C right = u < U ? be[c + 1] : ninf;
        coef_blank[base + c] = cutrans::c_exp(a + lb + down - ll);
        coef_emit[base + c] = cutrans::c_exp(a + le + right - ll);
      }
    }
    __syncthreads();  // ll_shared and the block's rows are free for the next sample
  }
}
