"""fsr pipelines: stage functions, their wiring, the DAG runner and the CLI."""
