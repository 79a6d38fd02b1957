"""Task functions for the benchmarks, in a module so workers import them by reference."""


def noop(x):
    return x
