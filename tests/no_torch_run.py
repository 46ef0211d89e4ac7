"""Run a bundle with mlrt in a process where importing torch is impossible.

    python no_torch_run.py model.bundle inputs.npz outputs.npz

Used by the tests to prove the runtime never needs PyTorch: a meta-path hook makes any
`import torch...` raise before mlrt is imported.
"""

import sys


class _BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch.") or name.startswith("torch_mlir"):
            raise ImportError(f"importing {name} is blocked in this process (mlrt must not need it)")
        return None


sys.meta_path.insert(0, _BlockTorch())

import numpy as np  # noqa: E402

import mlrt  # noqa: E402


def main() -> None:
    bundle, inputs_path, outputs_path = sys.argv[1:4]
    with np.load(inputs_path) as z:
        inputs = [z[k] for k in z.files]
    model = mlrt.load(bundle)
    outputs = model.run_flat(*inputs)
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch got imported"
    np.savez(outputs_path, *outputs)


if __name__ == "__main__":
    main()
