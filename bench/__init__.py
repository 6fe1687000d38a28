"""pytest-benchmark suites (``bench/test_bench_*.py``) and the stage profiler."""
