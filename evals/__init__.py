"""Evaluator plugins: FTibBench and text tasks, answer extraction, metrics."""
