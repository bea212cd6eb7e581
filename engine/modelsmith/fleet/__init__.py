"""The host pool: probes, ranking, executors (local | ssh | ray), failure classification."""
