"""Passes on each partitioned forward/backward ATen graph, before Inductor: kernel choice, int8 GEMM fusion,
inlining the quantizers as ATen.
"""
