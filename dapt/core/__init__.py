"""The shared core both stages stand on: sources, the Hub-id-or-path rule, model-loading helpers."""
