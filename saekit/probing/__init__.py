"""Probing: labelled tasks that need no download, SAEBench-style sparse probing, SCR/TPP and structure metrics."""
