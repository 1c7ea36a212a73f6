"""The stage-2 command (``dapt-classify``, ``python -m classify.train``, ``accelerate launch
classify/train.py``): train and evaluate (:func:`classify.train.train_classifier`), print the
metrics, then - with ``push_to_hub=true`` - publish the run (:func:`classify.release.publish.publish_run`).

Publishing is distribution's business, so the command that may publish lives here and the training
modules never import this package (``tests/test_architecture.py``); ``classify.train``'s entry
points reach this module by name. The push runs on the main process after the run has finished
and released its process group; the repo id was checked before training started.
"""

from __future__ import annotations

import logging
from pathlib import Path

from accelerate import PartialState

from classify.config import ClassifyConfig
from classify.evaluate import format_metrics
from classify.release.publish import publish_run
from classify.train import train_classifier
from dapt.core.config import parse_cli
from dapt.core.guard import run_command

logger = logging.getLogger(__name__)


def push(config: ClassifyConfig) -> dict:
    """Publish the finished run in ``config.output_dir`` to ``config.hub_repo_id``."""
    pushed = publish_run(config.output_dir, config.hub_repo_id, private=config.hub_private)
    logger.info(f"pushed {config.hub_repo_id} at commit {pushed['commit']}")
    return pushed


def main(argv=None) -> None:
    config = parse_cli(ClassifyConfig, argv, "Stage 2: train and evaluate a classifier", default_config=None)
    results = run_command(train_classifier, config)  # a refusal: one line and exit 1; a preemption: EXIT_PREEMPTED
    for name, block in results["evaluation"].items():
        print(f"{name}: {format_metrics(block)}")
    print(f"results: {Path(config.output_dir) / 'results.json'}")
    if config.push_to_hub and PartialState().is_main_process:
        run_command(push, config)  # a failed push is one line and exit 1; the run's results stay


if __name__ == "__main__":
    main()
