"""Console-script entry point: a clear message instead of a traceback when click is missing
(a runtime-only install has numpy and nothing else)."""

import sys


def main() -> None:
    try:
        from .cli import main as cli_main
    except ImportError as e:
        if getattr(e, "name", None) != "click":
            raise
        sys.stderr.write("error: the mlpack command line needs click: pip install click "
                         "(or install the compiler: pip install torch==2.13.0 && pip install 'mlpack-mlrt[compiler]')\n")
        sys.exit(1)
    cli_main()
