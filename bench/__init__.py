"""Benchmarks of adautomix_fast (docs/benchmarks.md): programs that report numbers, never assert."""
