"""The shared core both stages stand on (data sources, the Hub-id-or-path rule, model loading, run folders,
checkpoints, the train state, the one optimizer step, the resumable epoch); nothing here imports a stage."""
