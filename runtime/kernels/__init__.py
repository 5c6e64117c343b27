"""Device kernels: the Triton (CUDA) quantizers and int8 GEMMs, the CPU AVX2 int8 GEMM. Imported lazily."""
