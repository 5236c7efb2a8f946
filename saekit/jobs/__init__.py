"""Orchestration: the jobs that span stages (quickstart, sweep, run dashboard, explain, randomized control).

The bottom of the import graph above the command line: a job may call any stage, no stage calls a job.
"""
