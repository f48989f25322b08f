"""Benchmarks of adautomix_fast (spec/BENCHMARKS.md): programs that report numbers, never assert."""
