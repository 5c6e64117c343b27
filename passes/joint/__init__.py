"""Passes on AOTAutograd's joint forward+backward graph, before partitioning: what backward reads from forward."""
