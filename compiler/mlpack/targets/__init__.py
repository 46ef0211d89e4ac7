"""Targets: each folder turns a planned program into the code sections of a bundle.
No target imports another.
"""
