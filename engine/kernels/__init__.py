"""Numba kernels, one module per family, each a scalar core plus an array driver.

Kernels take NumPy arrays (and an optional `out=`), trust their inputs once the driver has
checked them, and never keep global state: the thread count is an argument.
"""
