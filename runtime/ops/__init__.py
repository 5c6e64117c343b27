"""Every ``qcompile::*`` ``torch.library`` op: its fake kernel, autograd and Inductor decomposition."""
