// The CPU candidate kernels of knn and their run-time selection by CPU feature.
//
// A fused kernel computes a tile of MR queries x NR bank rows of ŝ = n̂ − 2 q·b in vector
// registers (fp32 multiply-adds over t = 0 .. D−1 in order, one rounding each: the "any
// summation order" case of the bound in knn_common.h, with u_out = 0 as the accumulator is
// the result) and compares each query's NR scores with its threshold there; only a query row
// with a score at or under its threshold leaves the registers. Beyond one chunk of features the
// MR x NR running sums wait between chunks in a small per-thread buffer (at most 128 KB); the
// N x M products are never stored.
#pragma once
#include <cstdint>
#include <optional>
#include <vector>

namespace fastad::knn {

// Candidate kernels, best first: kBf16Gemm (a BF16 GEMM tile, then the scan: CPUs with
// AVX512-BF16 or AMX-BF16), kAvx512 and kAvx2 (the fused fp32 microkernels: AVX-512F, or
// AVX2 with FMA), kGemm (an fp32 GEMM tile, then the scan: any CPU).
enum class CpuKernel { kBf16Gemm, kAvx512, kAvx2, kGemm };

const char* cpu_kernel_name(CpuKernel kernel);
bool cpu_kernel_runs_here(CpuKernel kernel);
// The kernels this CPU runs, best first.
std::vector<CpuKernel> cpu_kernels_here();
// The kernel named by the environment variable FASTAD_CPU_KERNEL; nullopt when it is unset or
// "auto". A name that is not a kernel, or one this CPU cannot run, is an error naming both.
std::optional<CpuKernel> forced_cpu_kernel();
// The fp32 kernel the second tier (or an fp32-only search) uses: the forced one when it is an
// fp32 kernel, else the best fp32 kernel of this CPU.
CpuKernel fp32_cpu_kernel();
// The kernel of knn's first candidate tier for a precision name ("auto", "fp32", "bf16").
CpuKernel first_cpu_kernel(const char* precision);

// The core clock, measured by a chain of dependent one-cycle integer adds (best of 40 runs of
// ~1.5 ms, so that one of them runs undisturbed on a shared machine); 0 where it cannot be
// measured (not x86-64).
double measured_clock_hz();
// Peak fp32 flops per cycle and core of a kernel's instructions (kGemm: of the best fp32 kernel
// here), assuming two FMA pipes of the vector width: 32 for AVX2, 64 for AVX-512 (32 on AMD
// Zen 4, whose 512-bit operations take both 256-bit pipes), twice the AVX-512 figure for BF16
// dot products.
int64_t fp32_flops_per_cycle(CpuKernel kernel);

// One fused tile over a chunk of the D features (see the loop nest of search_fused in knn.cpp).
// a: MR packed queries [len][MR]; b: NR packed bank rows [len][NR] (both from the chunk's first
// feature); partial: MR x NR fp32 sums of the earlier chunks, read unless stage has kFirstChunk.
// Unless stage has kLastChunk, the sums are stored back to partial (exactly: they are the fp32
// accumulators) and 0 is returned, so the multiply-adds of each pair run t = 0 .. D−1 in order
// whatever the chunking. On the last chunk: norms are the NR fp32 squared norms (NaN for padding
// rows), thr the MR thresholds (NaN: none passes); query row r is reported when some
// s_j = norms_j − 2 a_r·b_j <= thr[r], its NR scores then stored at out + r·NR. Returns the
// mask of reported rows (bit r).
constexpr int kFirstChunk = 1, kLastChunk = 2;
using FusedTile = uint32_t (*)(const float* a, const float* b, int64_t len, float* partial,
                               int stage, const float* norms, const float* thr, float* out);

// A fused microkernel: its tile (mr queries x nr bank rows) and the chunk of features (at most)
// per call, chosen so that a bank panel's chunk, nr x chunk floats, takes a third of a 48 KB L1.
struct FusedKernel {
  int64_t mr, nr, chunk;
  FusedTile tile;
};

// kAvx512 or kAvx2 (the caller checked cpu_kernel_runs_here).
FusedKernel fused_kernel(CpuKernel kernel);

}  // namespace fastad::knn
