"""This machine: config and probes feed the model's plan; out come Apptainer processes, instances, locks, state."""
