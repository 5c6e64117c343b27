"""What the compiled graphs ran: the per-GEMM plan, gradient diagnostics, and the shortfalls ``strict`` reports."""
