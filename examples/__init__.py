"""Example pipelines that record runs through the real ExecutionTracker."""
