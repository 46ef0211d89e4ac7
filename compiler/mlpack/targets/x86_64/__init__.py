"""The x86-64 target (`--target cpu`): LLVM IR compiled by llvmlite, linked with the C
microkernels in kernels/ into one shared object."""
