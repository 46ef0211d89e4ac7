"""Frontend: a PyTorch model -> a `LiftedProgram` (export.py): core ATen with every weight a
plain argument, its signature (inputs, outputs, output structure) and weights.

export.py        load (.pt2, TorchScript, pickle), torch.export, lift
graph_passes.py  BatchNorm folding, weight-only constant folding (core ATen, before decompositions)
decompositions.py  ops torch-mlir cannot lower itself
model_io.py      output structure, input mutations, float16 / bfloat16 ports
dynamic_dims.py  declared dynamic dims, their buckets, the padding proof

Imports torch, never lower/, targets/ or bundle/.
"""
