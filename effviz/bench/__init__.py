"""Measurement: latency and peak memory of kernels (and, later, whole models) on this machine.

Run ``python -m effviz.bench kernels`` for the kernel table. Kept free of imports so that the
memory-measuring child process (``effviz.bench.memory``) starts with nothing allocated.
"""
