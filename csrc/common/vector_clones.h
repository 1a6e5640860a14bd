// FASTAD_VECTOR_CLONES: compile a hot loop for AVX-512, AVX2 and the baseline, chosen at load time
// (GCC on x86-64; elsewhere a plain function).
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FASTAD_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FASTAD_VECTOR_CLONES
#endif
