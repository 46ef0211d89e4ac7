"""DLPack interop of CUDA models: Model.run_dlpack (DLPack producers on the GPU in, mlrt.DeviceArray
out) and the C++ RunDevice overloads beneath it, without a GPU: against the stand-in libcuda.so.1
of test_cuda_runtime.py (device memory is host memory), in child processes. The DLPack inputs are
made here with ctypes (a DLManagedTensor over a numpy buffer that claims device (2, 0), in a
"dltensor" capsule), and the outputs' capsules are consumed with ctypes the way torch/CuPy do.
A real-GPU round trip through torch runs where torch.cuda is available (skipped otherwise).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import mlrt
from test_cuda_runtime import N, both_bundle, cpu_bundle, fake_driver, write_cuda_only  # noqa: F401 (fixtures)

PRELUDE = textwrap.dedent('''
    import ctypes, gc, sys, threading
    import numpy as np
    import mlrt

    class DLDevice(ctypes.Structure):
        _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]

    class DLDataType(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]

    class DLTensor(ctypes.Structure):
        _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                    ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                    ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]

    class DLManagedTensor(ctypes.Structure):
        pass

    DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensor))
    DLManagedTensor._fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", DELETER)]
    DESTRUCTOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)

    api = ctypes.pythonapi
    api.PyCapsule_New.restype = ctypes.py_object
    api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    api.PyCapsule_SetName.argtypes = [ctypes.py_object, ctypes.c_char_p]
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)(("PyCapsule_IsValid", api))
    get_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)(("PyCapsule_GetPointer", api))

    lib = ctypes.CDLL("libcuda.so.1")  # the stand-in (the same library mlrt opened)
    lib.fake_cuda_count.restype = ctypes.c_long
    lib.fake_cuda_count.argtypes = [ctypes.c_char_p]
    def count(what):
        return lib.fake_cuda_count(what.encode())

    deleted = []  # DLManagedTensor addresses whose deleter ran

    @DELETER
    def producer_deleter(p):
        deleted.append(ctypes.addressof(p.contents))

    @DESTRUCTOR
    def producer_capsule_destructor(cap):  # the standard producer behaviour: free it if never consumed
        for name in (b"dltensor", b"dltensor_versioned"):  # (the second only for a misnamed test capsule)
            if is_valid(cap, name):
                m = ctypes.cast(get_pointer(cap, name), ctypes.POINTER(DLManagedTensor))
                m.contents.deleter(m)

    DTYPES = {"float32": (2, 32), "float64": (2, 64), "float16": (2, 16), "int64": (0, 64), "int32": (0, 32),
              "uint8": (1, 8), "bool": (6, 8)}

    class FakeCudaTensor:
        """A DLPack producer claiming to be on cuda:N, over a numpy buffer (host memory is device memory
        for the stand-in driver). shape/strides/dtype/byte_offset/name override what is exported."""

        def __init__(self, array, device=(2, 0), shape=None, strides=None, dtype=None, byte_offset=0,
                     name=b"dltensor"):
            self.array, self.device, self.name = array, device, name
            self.shape = array.shape if shape is None else shape
            self.strides, self.byte_offset = strides, byte_offset
            self.dtype = dtype or DTYPES[str(array.dtype)] + (1,)
            self.streams, self.exports = [], []

        def __dlpack_device__(self):
            return self.device

        def __dlpack__(self, stream=None, max_version=None, dl_device=None, copy=None):
            self.streams.append(stream)
            m = DLManagedTensor()
            shape = (ctypes.c_int64 * len(self.shape))(*self.shape)
            strides = None if self.strides is None else (ctypes.c_int64 * len(self.strides))(*self.strides)
            t = m.dl_tensor
            t.data = self.array.ctypes.data
            t.device = DLDevice(*self.device)
            t.ndim = len(self.shape)
            t.dtype = DLDataType(*self.dtype)
            t.shape = shape
            t.strides = strides
            t.byte_offset = self.byte_offset
            m.deleter = producer_deleter
            self.exports.append((m, shape, strides))  # the ctypes memory lives as long as this object
            return api.PyCapsule_New(ctypes.addressof(m), self.name,
                                     ctypes.cast(producer_capsule_destructor, ctypes.c_void_p))

        def all_freed(self):
            return all(ctypes.addressof(e[0]) in deleted for e in self.exports)

    W0 = np.linspace(-1, 1, 1000, dtype=np.float32)
    def reference(x):
        return x * W0 + np.float32(0.5)

    m = mlrt.load(sys.argv[1], device="cuda:0")
    rng = np.random.default_rng(0)
''')


def run_dlpack_child(fake_driver: Path, bundle: Path, body: str, **env) -> str:
    full = {**os.environ, "LD_LIBRARY_PATH": f"{fake_driver}:{os.environ.get('LD_LIBRARY_PATH', '')}",
            "FAKE_CUDA_STATS": "1", **{k: str(v) for k, v in env.items()}}
    code = PRELUDE + textwrap.dedent(body) + "\nprint('DONE')\n"
    proc = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True, text=True, timeout=300,
                          env=full)
    assert proc.returncode == 0 and "DONE" in proc.stdout, proc.stdout + proc.stderr
    assert "FAKE_CUDA_STATS" in proc.stderr, proc.stderr  # the stand-in, not a real driver, was loaded
    assert "FAKE_CUDA_LEAK" not in proc.stderr, proc.stderr  # every allocation, event and retain released
    return proc.stdout


@pytest.fixture(scope="module")
def cuda_bundle(tmp_path_factory) -> Path:
    return write_cuda_only(tmp_path_factory.mktemp("dlpack") / "cuda.bundle")


def test_run_dlpack_matches_run_and_orders_streams(fake_driver, cuda_bundle):
    run_dlpack_child(fake_driver, cuda_bundle, '''
        for i in range(3):
            x = rng.standard_normal(1000).astype(np.float32)
            t = FakeCudaTensor(x)
            records, waits = count("records"), count("waits")
            y = m.run_dlpack(t)
            assert type(y) is mlrt.DeviceArray, type(y)
            assert y.shape == (1000,) and y.dtype == np.float32 and y.device == "cuda:0" and y.nbytes == 4000
            assert y.__dlpack_device__() == (2, 0)
            assert repr(y) == "mlrt.DeviceArray(shape=(1000,), dtype=float32, device='cuda:0')", repr(y)
            out = y.numpy()
            assert np.array_equal(out, m.run(x)) and np.allclose(out, reference(x), rtol=1e-6, atol=1e-6)
            assert t.streams == [1]  # the producer was asked to order its work before the legacy stream
            assert t.all_freed()  # the capsule was read in place, never consumed: the producer freed it
            # one event recorded on the legacy stream, waited on by the run's stream before its copies
            assert count("records") == records + 1 and count("waits") == waits + 1
            assert count("last_record_stream") == 1
        assert count("dtod_unordered") == 0 and count("dtod") == 6  # input + output copy per run

        # stream: DLPack's stream argument, passed to the producer and waited on (0 means 1)
        x = rng.standard_normal(1000).astype(np.float32)
        t = FakeCudaTensor(x)
        assert np.array_equal(m.run_dlpack(t, stream=2).numpy(), m.run(x)) and count("last_record_stream") == 2
        m.run_dlpack(t, stream=0)
        assert t.streams == [2, 1] and count("last_record_stream") == 1

        # byte_offset and explicit compact strides (size-1 extents may carry any stride)
        big = np.zeros(1010, np.float32)
        big[7:1007] = x
        t = FakeCudaTensor(big, shape=(1000,), strides=(1,), byte_offset=28)
        assert np.array_equal(m.run_dlpack(t).numpy(), m.run(x))
        t = FakeCudaTensor(x, shape=(1000,), strides=(1,))
        assert np.array_equal(m.run_dlpack(t).numpy(), m.run(x))

        # a DeviceArray is itself a DLPack producer: outputs chain into the next run
        y = m.run_dlpack(FakeCudaTensor(x))
        z = m.run_dlpack(y)
        assert np.allclose(z.numpy(), reference(reference(x)), rtol=1e-6, atol=1e-6)
        assert count("dtod_unordered") == 0
    ''')


def test_output_capsules(fake_driver, cuda_bundle):
    run_dlpack_child(fake_driver, cuda_bundle, '''
        x = rng.standard_normal(1000).astype(np.float32)
        m.run_dlpack(FakeCudaTensor(x))  # the first run allocates the execution context
        gc.collect()
        base = count("allocs")
        y = m.run_dlpack(FakeCudaTensor(x))
        assert count("allocs") == base + 1
        expected = y.numpy()

        cap1 = y.__dlpack__()
        cap2 = y.__dlpack__(stream=None, max_version=(1, 0), dl_device=(2, 0), copy=False)
        assert api.PyCapsule_GetName(cap1) == b"dltensor"
        del y
        gc.collect()
        assert count("allocs") == base + 1  # the capsules share ownership

        # consume cap1 as torch does: rename it, read the DLTensor, call the deleter when done
        p = api.PyCapsule_GetPointer(cap1, b"dltensor")
        managed = ctypes.cast(p, ctypes.POINTER(DLManagedTensor)).contents
        api.PyCapsule_SetName(cap1, b"used_dltensor")
        t = managed.dl_tensor
        assert (t.device.device_type, t.device.device_id) == (2, 0)
        assert (t.dtype.code, t.dtype.bits, t.dtype.lanes) == (2, 32, 1)
        assert t.ndim == 1 and t.shape[0] == 1000 and t.strides[0] == 1 and t.byte_offset == 0
        data = np.ctypeslib.as_array(ctypes.cast(t.data, ctypes.POINTER(ctypes.c_float)), shape=(1000,))
        assert np.array_equal(data, expected)  # the stand-in's device pointers are host pointers
        p2 = api.PyCapsule_GetPointer(cap2, b"dltensor")
        assert ctypes.cast(p2, ctypes.POINTER(DLManagedTensor)).contents.dl_tensor.data == t.data  # aliases
        del cap1  # renamed: its destructor leaves it to the consumer
        assert count("allocs") == base + 1
        managed.deleter(ctypes.pointer(managed))
        assert count("allocs") == base + 1  # cap2 still holds the memory
        del cap2  # never consumed: the capsule destructor calls the deleter
        gc.collect()
        assert count("allocs") == base, (count("allocs"), base)

        y = m.run_dlpack(FakeCudaTensor(x))
        for kwargs, message in [({"dl_device": (1, 0)}, "cannot be exported to DLPack device (1, 0)"),
                                ({"dl_device": (2, 1)}, "lives on cuda:0"),
                                ({"copy": True}, "does not export copies")]:
            try:
                y.__dlpack__(**kwargs)
                raise AssertionError(kwargs)
            except BufferError as e:
                assert message in str(e), e

        # outputs outlive the model: the primary context stays retained until the last one is gone
        cap = y.__dlpack__()
        del m, y
        gc.collect()
        assert count("allocs") == 1 and count("retains") == 1 and count("events") == 0 and count("streams") == 0
        del cap
        gc.collect()
        assert count("allocs") == 0 and count("retains") == 0
    ''')


def test_input_errors(fake_driver, cuda_bundle):
    run_dlpack_child(fake_driver, cuda_bundle, '''
        x = rng.standard_normal(1000).astype(np.float32)
        m.run_dlpack(FakeCudaTensor(x))
        gc.collect()
        base = count("allocs")
        cases = [
            ((x,), "input 0 ('x'): expected a DLPack tensor on cuda:0 (DLPack device (2, 0)), got DLPack device "
                   "(1, 0), on the CPU: use run() for host arrays"),
            ((list(x),), "e.g. a torch CUDA tensor or a CuPy array; got list (use run() for numpy arrays)"),
            ((FakeCudaTensor(x, device=(2, 1)),), "expected a DLPack tensor on cuda:0 (DLPack device (2, 0)), got "
                                                  "DLPack device (2, 1)"),
            ((FakeCudaTensor(x, device=(13, 0)),), "got DLPack device (13, 0)"),
            ((FakeCudaTensor(x.astype(np.float64)),), "input 0 ('x'): expected dtype float32, got float64"),
            ((FakeCudaTensor(x.view(np.int32)),), "expected dtype float32, got int32"),
            ((FakeCudaTensor(x, dtype=(4, 16, 1)),), "got unsupported DLPack dtype bfloat16 (code 4, bits 16, lanes 1)"),
            ((FakeCudaTensor(x, dtype=(5, 64, 1)),), "unsupported DLPack dtype complex64"),
            ((FakeCudaTensor(x, dtype=(2, 32, 4)),), "unsupported DLPack dtype float32x4"),
            ((FakeCudaTensor(x[:999]),), "input 0 ('x'): expected shape [1000], got [999]"),
            ((FakeCudaTensor(x, shape=(1000, 1)),), "expected shape [1000], got [1000,1]"),
            ((FakeCudaTensor(np.repeat(x, 2), shape=(1000,), strides=(2,)),),
             "input 0 ('x'): expected a contiguous row-major tensor, got shape [1000] with strides [2] (in "
             "elements); pass x.contiguous()"),
            ((FakeCudaTensor(x, name=b"dltensor_versioned"),),
             "__dlpack__ returned a capsule named 'dltensor_versioned', expected a 'dltensor' capsule"),
            ((), "expected 1 input(s) ['x'], got 0"),
            ((FakeCudaTensor(x), FakeCudaTensor(x)), "expected 1 input(s) ['x'], got 2"),
        ]
        for args, message in cases:
            try:
                m.run_dlpack(*args)
                raise AssertionError(message)
            except mlrt.Error as e:
                assert message in str(e), (message, str(e))
            for a in args:
                if isinstance(a, FakeCudaTensor):
                    assert a.all_freed(), message  # capsules read before the error are released
        try:
            m.run_dlpack(FakeCudaTensor(x), stream=-1)
            raise AssertionError("stream=-1")
        except mlrt.Error as e:
            assert "stream must be a CUDA stream handle" in str(e), e
        gc.collect()
        assert count("allocs") == base  # nothing allocated for a refused call
    ''')


def test_many_runs_free_everything(fake_driver, cuda_bundle):
    run_dlpack_child(fake_driver, cuda_bundle, '''
        xs = [rng.standard_normal(1000).astype(np.float32) for _ in range(4)]
        refs = [m.run(x) for x in xs]
        m.run_dlpack(FakeCudaTensor(xs[0]))
        gc.collect()
        base = count("allocs")
        errors = []
        def work(k):
            t = FakeCudaTensor(xs[k])
            for i in range(150):
                y = m.run_dlpack(t)
                if i % 50 == 0 and not np.array_equal(y.numpy(), refs[k]):
                    errors.append(k)
                if i % 3 == 0:
                    del y  # the others are dropped by the next assignment
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        [th.start() for th in threads]
        [th.join() for th in threads]
        gc.collect()
        assert not errors, errors
        n_contexts = count("events")  # one event per execution context, created on its first RunDevice
        assert 1 <= n_contexts <= 4 and count("streams") == n_contexts, (n_contexts, count("streams"))
        # everything but the contexts' own memory was freed (each context is one allocation)
        assert count("allocs") == base + n_contexts - 1, (count("allocs"), base, n_contexts)
        assert count("dtod_unordered") == 0
        del m
        gc.collect()
        assert count("allocs") == 0 and count("events") == 0 and count("retains") == 0
    ''')


@pytest.mark.parametrize("fail, where, message", [
    ("cuMemAlloc_v2:2@1", "run", "CUDA error CUDA_ERROR_OUT_OF_MEMORY (out of memory) in cuMemAlloc (output 0, "
                                 "4000 bytes)"),
    ("cuEventCreate:2", "run", "in cuEventCreate"),
    ("cuEventRecord:700", "run", "CUDA_ERROR_ILLEGAL_ADDRESS (an illegal memory access was encountered) in "
                                 "cuEventRecord"),
    ("cuMemcpyDtoH_v2:700", "numpy", "device 'cuda:0': CUDA error CUDA_ERROR_ILLEGAL_ADDRESS (an illegal memory "
                                     "access was encountered) in cuMemcpyDtoH"),
])
def test_driver_errors(fake_driver, cuda_bundle, fail, where, message):
    out = run_dlpack_child(fake_driver, cuda_bundle, f'''
        x = rng.standard_normal(1000).astype(np.float32)
        for _ in range(2):
            try:
                y = m.run_dlpack(FakeCudaTensor(x))
                y.numpy()
                raise AssertionError("no error")
            except mlrt.Error as e:
                print("ERROR:", e)
        if {where!r} == "run":
            assert count("allocs") == 1 and count("events") == 0  # only the weights: failed contexts discarded
    ''', FAKE_CUDA_FAIL=fail)
    assert message in out, out


def test_run_dlpack_on_a_cpu_model(both_bundle):
    m = mlrt.load(both_bundle)
    with pytest.raises(mlrt.Error, match=r"run_dlpack takes and returns GPU tensors: it needs a model loaded with "
                                         r"device='cuda:N', and this one runs on cpu; use run\(\) with numpy arrays"):
        m.run_dlpack(np.ones(N, np.float32))
    assert mlrt.DeviceArray.__name__ == "DeviceArray"


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(not _torch_cuda(), reason="needs torch with a CUDA GPU")
def test_gpu_torch_round_trip(both_bundle):
    import torch

    gpu = mlrt.load(both_bundle, device="cuda:0")
    stream = torch.cuda.Stream()
    for _ in range(3):
        with torch.cuda.stream(stream):  # produced on a side stream: run_dlpack must wait for it
            x = torch.randn(N, device="cuda:0")
            x = x * 2 - x  # more queued work
            y = gpu.run_dlpack(x)  # torch orders the current (side) stream before stream 1, mlrt after it
        yt = torch.from_dlpack(y)
        assert yt.device == torch.device("cuda:0") and yt.data_ptr() == y.data_ptr
        expected = gpu.run(x.cpu().numpy())
        assert np.array_equal(yt.cpu().numpy(), expected) and np.array_equal(y.numpy(), expected)
    del gpu
    assert np.array_equal(yt.cpu().numpy(), expected)  # outputs outlive the model
    with pytest.raises(mlrt.Error, match=r"contiguous row-major.*pass x.contiguous\(\)"):
        mlrt.load(both_bundle, device="cuda:0").run_dlpack(torch.randn(N * 2, device="cuda:0")[::2])
