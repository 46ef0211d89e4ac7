# Cross-builds libmlrt and the C++ samples (mlrt_run, mlrt_bench, mlrt_serve) for 64-bit ARM Linux
# (Jetson, Graviton, Ampere, Raspberry Pi) on an x86-64 machine:
#   apt-get install g++-aarch64-linux-gnu libc6-dev-arm64-cross
#   cmake -S . -B build/aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
#         -DMLRT_BUILD_TOOLS=ON -DMLRT_BUILD_PYTHON=OFF -DMLRT_BUILD_TRITON=OFF
#   cmake --build build/aarch64 -j
#   qemu-aarch64 -L /usr/aarch64-linux-gnu build/aarch64/samples/cpp/mlrt_run model.bundle -i x.npy
# The CUDA executor is built in as on x86-64: it dlopens libcuda at run time (a Jetson's driver),
# so no CUDA toolkit is needed here. Override the compilers with -DMLRT_CROSS_PREFIX=... .
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(MLRT_CROSS_PREFIX "aarch64-linux-gnu-" CACHE STRING "Prefix of the cross compilers' names")
set(CMAKE_C_COMPILER "${MLRT_CROSS_PREFIX}gcc")
set(CMAKE_CXX_COMPILER "${MLRT_CROSS_PREFIX}g++")
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
