"""batchexec: a concurrent.futures Executor whose workers are AWS Batch jobs."""
