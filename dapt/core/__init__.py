"""The shared core both stages stand on; nothing here imports a stage."""
