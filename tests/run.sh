#!/usr/bin/env bash
# Installs everything the test suite needs and runs it on every OpenCL device.
#   - as root with apt-get: Debian's PoCL (pocl-opencl-icd) and Oclgrind, registered
#     as an OpenCL vendor, so the suite runs on three devices; and the offline GPU
#     compilers (clang-15 + libclc, Intel's ocloc; ptxas comes from pip);
#   - always: a virtual environment .venv with clconv (a normal, non-editable
#     install, so the tests use what a user gets), pytest, hypothesis and
#     tensorflow-cpu 2.21.0 (the peer the values and errors are compared with).
# Extra arguments go to pytest; CLCONV_TEST_DEVICES=pocl,oclgrind narrows the devices.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    # clang-15, llvm-15, libclc-15 and intel-opencl-icd (ocloc): the offline GPU
    # compiles of test_offline_compile.py (NVIDIA and AMD through libclc, Intel DG2).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pocl-opencl-icd oclgrind \
        clang-15 llvm-15 libclc-15 intel-opencl-icd >/dev/null
    mkdir -p /etc/OpenCL/vendors
    if [ ! -f /etc/OpenCL/vendors/oclgrind.icd ]; then
        echo /usr/lib/oclgrind/liboclgrind-rt-icd.so > /etc/OpenCL/vendors/oclgrind.icd
    fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch 2.13.0 (CPU) and onnx: the peers of the PyTorch and ONNX front ends' tests.
.venv/bin/python -m pip install -q ".[test]" "tensorflow-cpu==2.21.0" "torch==2.13.0" "onnx>=1.16"
# ptxas for the NVIDIA offline compile (x86-64 Linux wheels only; skipped elsewhere).
if [ "$(uname -sm)" = "Linux x86_64" ]; then
    .venv/bin/python -m pip install -q "nvidia-cuda-nvcc-cu12>=12.0,<13"
fi
cd tests
exec ../.venv/bin/python -m pytest -q "$@"
