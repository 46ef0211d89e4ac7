"""mlpack: ahead-of-time compiler from PyTorch models to mlrt bundles.

    import mlpack
    mlpack.build(model, (x,), "model.bundle")

Importing mlpack is cheap: torch and torch-mlir are imported only when a build runs.
"""

from .build import BuildResult, build
from .errors import BuildError, UnsupportedOpError

__all__ = ["build", "BuildResult", "BuildError", "UnsupportedOpError"]
