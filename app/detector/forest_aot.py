"""``python -m app.detector.forest_aot``: compile the forest's kernels ahead of time into
``app/detector/_forest_aot.*.so``, so serving scores with them without importing numba or LLVM.

Build-time needs: numba, setuptools and a C compiler (numba's ``pycc`` links the module). The container image's
builder stage and ``make sync`` run it; where it was never run, ``app.detector.forest_jit`` compiles the same
kernels just in time instead. The module is rebuilt whenever the kernels change (``make`` compares times).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

MODULE = "_forest_aot"


def build(output_dir: Path) -> Path:
    """Compile the scoring kernels and the explaining one of ``app.detector.forest_kernels`` into ``output_dir``;
    returns the module's path."""
    from numba.pycc import CC  # noqa: PLC0415 - build time only (needs setuptools)

    from app.detector import forest_kernels  # noqa: PLC0415

    module = CC(MODULE)
    module.output_dir = str(output_dir)
    module.verbose = False
    for name in forest_kernels.KERNELS:
        module.export(name, forest_kernels.SIGNATURE)(getattr(forest_kernels, name))
    module.export(forest_kernels.EXPLAIN_KERNEL, forest_kernels.EXPLAIN_SIGNATURE)(forest_kernels.local_diffi)
    module.compile()
    (built,) = output_dir.glob(f"{MODULE}.*")
    return built


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.detector.forest_aot", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output-dir", type=Path, default=Path(__file__).resolve().parent, help="default: beside this file"
    )
    args = parser.parse_args(argv)
    print(f"built {build(args.output_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
