"""The CUDA target (`--target cuda`): generated CUDA C++ over the templates in kernels/ -> PTX
(+ cubins)."""
