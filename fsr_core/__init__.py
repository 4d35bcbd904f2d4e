"""fsr_core: the fsr library (data, degradations, networks, losses, metrics, training). Importing it does no I/O."""
