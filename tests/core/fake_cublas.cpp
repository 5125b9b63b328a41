// A stand-in for libcublas with the five functions cutrans/backends/_cublas_ctypes.py calls,
// so that its ctypes route runs on a CPU: "device" pointers are host pointers, and
// cublasGemmEx is a column-major reference GEMM (float32, float64, bfloat16 storage; sums in
// double) that checks its arguments the way cuBLAS documents them (CUBLAS_STATUS_INVALID_VALUE
// for a bad operation, type or leading dimension). fake_* functions expose what the calls did.
#include <cstdint>
#include <cstring>

namespace {
constexpr int OK = 0, NOT_INITIALIZED = 1, INVALID_VALUE = 7, NOT_SUPPORTED = 15;
constexpr int R_32F = 0, R_64F = 1, R_16BF = 14;
constexpr int COMPUTE_32F = 68, COMPUTE_32F_FAST_TF32 = 77, COMPUTE_64F = 70;

struct Handle {
    void* stream = nullptr;
    int pointer_mode = -1, math_mode = -1;
};
Handle handles[1024];
int n_handles = 0, n_gemms = 0;
void* last_stream = nullptr;
int last_compute = -1, last_algo = 0, last_pointer_mode = -1, last_math_mode = -1;

double load(const void* p, int type, int64_t i) {
    switch (type) {
        case R_32F: return static_cast<const float*>(p)[i];
        case R_64F: return static_cast<const double*>(p)[i];
        default: {  // bfloat16: the high half of a float32
            uint32_t bits = uint32_t(static_cast<const uint16_t*>(p)[i]) << 16;
            float f;
            std::memcpy(&f, &bits, 4);
            return f;
        }
    }
}

void store(void* p, int type, int64_t i, double v) {
    switch (type) {
        case R_32F: static_cast<float*>(p)[i] = float(v); break;
        case R_64F: static_cast<double*>(p)[i] = v; break;
        default: {  // bfloat16, round to nearest even
            float f = float(v);
            uint32_t bits;
            std::memcpy(&bits, &f, 4);
            bits += 0x7fff + ((bits >> 16) & 1);
            static_cast<uint16_t*>(p)[i] = uint16_t(bits >> 16);
        }
    }
}

bool known_type(int t) { return t == R_32F || t == R_64F || t == R_16BF; }
bool valid(Handle* h) { return h >= handles && h < handles + n_handles; }
}  // namespace

extern "C" {
int cublasCreate_v2(void** handle) {
    if (n_handles == 1024) return NOT_INITIALIZED;
    *handle = &handles[n_handles++];
    return OK;
}

int cublasSetStream_v2(void* handle, void* stream) {
    if (!valid(static_cast<Handle*>(handle))) return NOT_INITIALIZED;
    static_cast<Handle*>(handle)->stream = stream;
    return OK;
}

int cublasSetPointerMode_v2(void* handle, int mode) {
    if (!valid(static_cast<Handle*>(handle))) return NOT_INITIALIZED;
    static_cast<Handle*>(handle)->pointer_mode = mode;
    return OK;
}

int cublasSetMathMode(void* handle, int mode) {
    if (!valid(static_cast<Handle*>(handle))) return NOT_INITIALIZED;
    static_cast<Handle*>(handle)->math_mode = mode;
    return OK;
}

int cublasGemmEx(void* handle, int transa, int transb, int m, int n, int k, const void* alpha,
                 const void* A, int Atype, int lda, const void* B, int Btype, int ldb,
                 const void* beta, void* C, int Ctype, int ldc, int compute, int algo) {
    Handle* h = static_cast<Handle*>(handle);
    if (!valid(h)) return NOT_INITIALIZED;
    if (h->pointer_mode != 0) return NOT_SUPPORTED;  // this stand-in reads host scalars only
    if ((transa != 0 && transa != 1) || (transb != 0 && transb != 1) || m < 0 || n < 0 || k < 0)
        return INVALID_VALUE;
    if (!known_type(Atype) || Btype != Atype || !known_type(Ctype)) return INVALID_VALUE;
    if (compute != COMPUTE_32F && compute != COMPUTE_32F_FAST_TF32 && compute != COMPUTE_64F)
        return INVALID_VALUE;
    if ((compute == COMPUTE_64F) != (Atype == R_64F)) return INVALID_VALUE;
    auto at_least = [](int ld, int rows) { return ld >= (rows > 1 ? rows : 1); };
    if (!at_least(lda, transa ? k : m) || !at_least(ldb, transb ? n : k) || !at_least(ldc, m))
        return INVALID_VALUE;
    double a = compute == COMPUTE_64F ? *static_cast<const double*>(alpha)
                                      : *static_cast<const float*>(alpha);
    double b = compute == COMPUTE_64F ? *static_cast<const double*>(beta)
                                      : *static_cast<const float*>(beta);
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
            double s = 0;
            for (int p = 0; p < k; ++p) {
                double x = load(A, Atype, transa ? p + int64_t(i) * lda : i + int64_t(p) * lda);
                double y = load(B, Btype, transb ? j + int64_t(p) * ldb : p + int64_t(j) * ldb);
                s += x * y;
            }
            int64_t c = i + int64_t(j) * ldc;
            store(C, Ctype, c, a * s + (b != 0 ? b * load(C, Ctype, c) : 0.0));
        }
    ++n_gemms;
    last_stream = h->stream;
    last_compute = compute;
    last_algo = algo;
    last_pointer_mode = h->pointer_mode;
    last_math_mode = h->math_mode;
    return OK;
}

int fake_handles() { return n_handles; }
int fake_gemms() { return n_gemms; }
void* fake_last_stream() { return last_stream; }
int fake_last_compute() { return last_compute; }
int fake_last_algo() { return last_algo; }
int fake_last_math_mode() { return last_math_mode; }
}
