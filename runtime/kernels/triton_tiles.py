"""The 2-D tiling the elementwise kernels (quantizers, packing) walk, launched on one grid axis.

CUDA caps grid axes 1 and 2 at 65535 programs; axis 0 allows 2^31 - 1. A 2-D grid of
(row tiles, column tiles) would fail to launch for a long 1-D tensor viewed as one row (more than
65535 column tiles), so the launch is 1-D and each program finds its tile from its id.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without the optional extra
    triton = None


def tile_grid(rows: int, cols: int, block_r: int, block_c: int) -> tuple[int]:
    """The 1-D launch grid `tile_of_program` walks: one program per ``block_r × block_c`` tile."""
    return (-(-rows // block_r) * -(-cols // block_c),)


if triton is not None:

    @triton.jit
    def tile_of_program(n_cols, BLOCK_C: tl.constexpr):
        """(row tile, column tile) of this program, row-major over ``cdiv(n_cols, BLOCK_C)``
        column tiles."""
        pid = tl.program_id(0)
        col_tiles = tl.cdiv(n_cols, BLOCK_C)
        return pid // col_tiles, pid % col_tiles
else:  # pragma: no cover - without Triton no kernel is defined to call it
    tile_of_program = None
