// The fused fp32 candidate microkernels of the CPU knn (knn_fused_common.h) and their selection.
// Every microkernel is compiled for its instruction set by a target attribute, so one binary
// holds every path; which one runs is decided when called, by what this CPU supports.
#include "knn_fused_common.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define FASTAD_X86_KERNELS 1
#endif

namespace fastad::knn {
namespace {

constexpr CpuKernel kAllKernels[] = {CpuKernel::kBf16Gemm, CpuKernel::kAvx512, CpuKernel::kAvx2,
                                     CpuKernel::kGemm};

bool cpu_has_bf16_dot() {
#ifdef FASTAD_X86_KERNELS
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5))) return true;  // AVX512_BF16
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 22))) return true;  // AMX-BF16
#endif
  return false;
}

#ifdef FASTAD_X86_KERNELS

// AVX2 + FMA: 6 queries x 16 bank rows, 12 accumulators of 8 lanes.
template <int MR>
__attribute__((target("avx2,fma"))) uint32_t tile_avx2(const float* a, const float* b, int64_t d,
                                                       float* partial, int stage,
                                                       const float* norms, const float* thr,
                                                       float* out) {
  __m256 acc[MR][2];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    const bool first = stage & kFirstChunk;
    acc[r][0] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(partial + r * 16);
    acc[r][1] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(partial + r * 16 + 8);
  }
  for (int64_t t = 0; t < d; ++t) {
    const __m256 b0 = _mm256_loadu_ps(b + t * 16), b1 = _mm256_loadu_ps(b + t * 16 + 8);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m256 x = _mm256_broadcast_ss(a + t * MR + r);
      acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
    }
  }
  if (!(stage & kLastChunk)) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      _mm256_storeu_ps(partial + r * 16, acc[r][0]);
      _mm256_storeu_ps(partial + r * 16 + 8, acc[r][1]);
    }
    return 0;
  }
  const __m256 two = _mm256_set1_ps(2.f);
  const __m256 n0 = _mm256_loadu_ps(norms), n1 = _mm256_loadu_ps(norms + 8);
  uint32_t mask = 0;
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    const __m256 s0 = _mm256_fnmadd_ps(two, acc[r][0], n0);  // one rounding of n − 2 a·b
    const __m256 s1 = _mm256_fnmadd_ps(two, acc[r][1], n1);
    const __m256 th = _mm256_broadcast_ss(thr + r);
    const int hit = _mm256_movemask_ps(_mm256_cmp_ps(s0, th, _CMP_LE_OQ)) |
                    _mm256_movemask_ps(_mm256_cmp_ps(s1, th, _CMP_LE_OQ));
    if (hit) {
      _mm256_storeu_ps(out + r * 16, s0);
      _mm256_storeu_ps(out + r * 16 + 8, s1);
      mask |= 1u << r;
    }
  }
  return mask;
}

// AVX-512F: 12 queries x 32 bank rows, 24 accumulators of 16 lanes.
template <int MR>
__attribute__((target("avx512f"))) uint32_t tile_avx512(const float* a, const float* b, int64_t d,
                                                        float* partial, int stage,
                                                        const float* norms, const float* thr,
                                                        float* out) {
  __m512 acc[MR][2];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    const bool first = stage & kFirstChunk;
    acc[r][0] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(partial + r * 32);
    acc[r][1] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(partial + r * 32 + 16);
  }
  for (int64_t t = 0; t < d; ++t) {
    const __m512 b0 = _mm512_loadu_ps(b + t * 32), b1 = _mm512_loadu_ps(b + t * 32 + 16);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const __m512 x = _mm512_set1_ps(a[t * MR + r]);
      acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
    }
  }
  if (!(stage & kLastChunk)) {
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      _mm512_storeu_ps(partial + r * 32, acc[r][0]);
      _mm512_storeu_ps(partial + r * 32 + 16, acc[r][1]);
    }
    return 0;
  }
  const __m512 two = _mm512_set1_ps(2.f);
  const __m512 n0 = _mm512_loadu_ps(norms), n1 = _mm512_loadu_ps(norms + 16);
  uint32_t mask = 0;
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    const __m512 s0 = _mm512_fnmadd_ps(two, acc[r][0], n0);
    const __m512 s1 = _mm512_fnmadd_ps(two, acc[r][1], n1);
    const __m512 th = _mm512_set1_ps(thr[r]);
    const unsigned hit =
        _mm512_cmp_ps_mask(s0, th, _CMP_LE_OQ) | _mm512_cmp_ps_mask(s1, th, _CMP_LE_OQ);
    if (hit) {
      _mm512_storeu_ps(out + r * 32, s0);
      _mm512_storeu_ps(out + r * 32 + 16, s1);
      mask |= 1u << r;
    }
  }
  return mask;
}

#endif  // FASTAD_X86_KERNELS

bool splits_512_bit_operations() {
#ifdef FASTAD_X86_KERNELS
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
  const bool amd = b == 0x68747541 && d == 0x69746e65 && c == 0x444d4163;  // "AuthenticAMD"
  if (!amd || !__get_cpuid(1, &a, &b, &c, &d)) return false;
  const unsigned family = ((a >> 8) & 0xf) + ((a >> 20) & 0xff);
  return family == 0x19;  // Zen 4 runs a 512-bit operation on two 256-bit pipes
#else
  return false;
#endif
}

}  // namespace

double measured_clock_hz() {
#ifdef FASTAD_X86_KERNELS
  double best = 0.0;
  for (int round = 0; round < 40; ++round) {
    constexpr uint64_t kIterations = uint64_t(1) << 19;
    uint64_t x = 0, left = kIterations;
    const auto began = std::chrono::steady_clock::now();
    // 8 dependent one-cycle adds per iteration; the loop counter is a separate chain
    asm volatile(
        "1:\n\t"
        "add $1, %[x]\n\tadd $1, %[x]\n\tadd $1, %[x]\n\tadd $1, %[x]\n\t"
        "add $1, %[x]\n\tadd $1, %[x]\n\tadd $1, %[x]\n\tadd $1, %[x]\n\t"
        "dec %[left]\n\tjnz 1b"
        : [x] "+r"(x), [left] "+r"(left)
        :
        : "cc");
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
    best = std::max(best, 8.0 * double(kIterations) / seconds);
  }
  return best;
#else
  return 0.0;
#endif
}

int64_t fp32_flops_per_cycle(CpuKernel kernel) {
  const bool split = splits_512_bit_operations();
  switch (kernel) {
    case CpuKernel::kAvx2: return 2 * 8 * 2;
    case CpuKernel::kAvx512: return 2 * (split ? 8 : 16) * 2;
    case CpuKernel::kBf16Gemm: return 2 * 2 * (split ? 8 : 16) * 2;
    case CpuKernel::kGemm: return fp32_flops_per_cycle(fp32_cpu_kernel());
  }
  return 0;
}

const char* cpu_kernel_name(CpuKernel kernel) {
  switch (kernel) {
    case CpuKernel::kBf16Gemm: return "bf16-gemm";
    case CpuKernel::kAvx512: return "avx512";
    case CpuKernel::kAvx2: return "avx2";
    case CpuKernel::kGemm: return "gemm";
  }
  return "?";
}

bool cpu_kernel_runs_here(CpuKernel kernel) {
  switch (kernel) {
    case CpuKernel::kBf16Gemm: return cpu_has_bf16_dot();
#ifdef FASTAD_X86_KERNELS
    case CpuKernel::kAvx512: return __builtin_cpu_supports("avx512f");
    case CpuKernel::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    case CpuKernel::kGemm: return true;
    default: return false;
  }
}

std::vector<CpuKernel> cpu_kernels_here() {
  std::vector<CpuKernel> found;
  for (CpuKernel kernel : kAllKernels)
    if (cpu_kernel_runs_here(kernel)) found.push_back(kernel);
  return found;
}

std::optional<CpuKernel> forced_cpu_kernel() {
  const char* value = std::getenv("FASTAD_CPU_KERNEL");
  if (value == nullptr || *value == '\0' || std::strcmp(value, "auto") == 0) return std::nullopt;
  std::string here;
  for (CpuKernel kernel : cpu_kernels_here())
    here += std::string(here.empty() ? "" : ", ") + cpu_kernel_name(kernel);
  for (CpuKernel kernel : kAllKernels) {
    if (std::strcmp(value, cpu_kernel_name(kernel)) != 0) continue;
    TORCH_CHECK(cpu_kernel_runs_here(kernel), "FASTAD_CPU_KERNEL=", value,
                ": this CPU cannot run that kernel; it runs auto, ", here);
    return kernel;
  }
  TORCH_CHECK(false, "FASTAD_CPU_KERNEL must be auto, bf16-gemm, avx512, avx2 or gemm, got '",
              value, "'");
}

CpuKernel fp32_cpu_kernel() {
  const std::optional<CpuKernel> forced = forced_cpu_kernel();
  if (forced && *forced != CpuKernel::kBf16Gemm) return *forced;
  for (CpuKernel kernel : {CpuKernel::kAvx512, CpuKernel::kAvx2})
    if (cpu_kernel_runs_here(kernel)) return kernel;
  return CpuKernel::kGemm;
}

CpuKernel first_cpu_kernel(const char* precision) {
  if (std::strcmp(precision, "bf16") == 0) return CpuKernel::kBf16Gemm;
  if (std::strcmp(precision, "fp32") == 0) return fp32_cpu_kernel();
  const std::optional<CpuKernel> forced = forced_cpu_kernel();
  if (forced) return *forced;
  return cpu_kernel_runs_here(CpuKernel::kBf16Gemm) ? CpuKernel::kBf16Gemm : fp32_cpu_kernel();
}

FusedKernel fused_kernel(CpuKernel kernel) {
#ifdef FASTAD_X86_KERNELS
  if (kernel == CpuKernel::kAvx512) return {12, 32, 128, &tile_avx512<12>};
  if (kernel == CpuKernel::kAvx2) return {6, 16, 256, &tile_avx2<6>};
#endif
  TORCH_CHECK(false, "knn: ", cpu_kernel_name(kernel), " is not a fused kernel");
}

}  // namespace fastad::knn
