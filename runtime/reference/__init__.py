"""Pure-PyTorch reference quantizers: readable, eager, importable without Inductor or Triton."""
