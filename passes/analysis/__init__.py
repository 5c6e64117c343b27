"""Read-only analyses the passes and the plan share: GEMM sites, higher-order-op bodies, what a compiled graph
quantizes and saves. Nothing here changes a graph.
"""
