"""Tests of the benchmark harnesses under bench/."""
