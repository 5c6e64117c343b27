"""Keys qcompile writes into FX nodes' ``meta``, shared by the passes that write them and the
analyses that read them (so an analysis never imports a pass to learn a key)."""

RECOMPUTE_META = (
    "qcompile_recompute"  # on every clone `recompute_from_codes` makes: the forward node it recomputes
)
TARGET_META = "qcompile_recomputed_target"  # on a clone that replaces a tensor backward read
