"""Lowering: a LiftedProgram -> torch-mlir import -> bufferized memrefs -> kernel calls, fused
loops -> one arena (memory plan). Knows no target: what differs between targets are options the
target asks for. Imports frontend/, never targets/ or bundle/.
"""
