"""Core math.

The trace grid, step counts, corrections, the fixed point, NNLS, the input
contract.
"""
