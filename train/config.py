"""The resolver conf/ relies on; import this module before composing the config (train.py and
the tests do).

* `${floor_div:a,b}`: integer division, used by conf/exp/ablate_block_size.yaml to keep the
  diffusion tokens per row fixed while K varies.
"""

from omegaconf import OmegaConf

OmegaConf.register_new_resolver("floor_div", lambda a, b: int(a) // int(b), replace=True)
