"""Where the Hydra configs of a source checkout live, and the resolver they use for paths.

Importing this module registers ``${nnn.repo_root:}`` (the checkout that holds ``conf/``), so
that default paths beside the checkout (``paths.shared_data``) do not depend on the current
directory. It imports nothing heavy, so ``run.py`` can register it before Hydra composes.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

#: the configs of a source checkout (conf/ beside the package)
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
#: ``${nnn.repo_root:}`` in the configs
REPO_ROOT_RESOLVER = "nnn.repo_root"

OmegaConf.register_new_resolver(REPO_ROOT_RESOLVER, lambda: str(CONFIG_DIR.parent), replace=True)
