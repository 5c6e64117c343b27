"""Passes on Dynamo's torch-level graph, before AOTAutograd: the rewrite that inserts the quantizers."""
