"""Run one experiment (or a sweep with -m): ``python run.py [group=option ...] [key=value ...]``.

``python run.py --help`` lists the config groups and examples. The work is done by
``nnn.pipeline.run``; this file only maps a missing dataset, file or model (an expected situation,
e.g. offline) to a clean error message and exit code 1, and returns the sweep objective.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from nnn import pipeline
from nnn.errors import MissingResourceError

log = logging.getLogger("nnn.run")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Returns the objective (``cfg.objective`` of the method) for sweepers such as Optuna."""
    try:
        results = pipeline.run(cfg)
    except (MissingResourceError, FileNotFoundError) as err:
        log.error("%s", err)
        if HydraConfig.get().mode == RunMode.RUN:
            sys.exit(1)  # no traceback for an expected, explained situation
        raise  # in a sweep, the other jobs still run; Hydra reports this one at the end
    return pipeline.objective_value(results)


if __name__ == "__main__":
    main()
