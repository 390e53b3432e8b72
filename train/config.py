"""Hydra additions that conf/ relies on; import this module before composing the config
(train.py and the tests do).

* `data=synthetic`: random documents for runs without a corpus (train.data.synthetic_documents),
  packed like real data. Its node has the shape of conf/data/*.yaml (a section per function);
  it is registered here because conf/data/ belongs to the data pipeline.
* `${floor_div:a,b}`: integer division, used by conf/exp/ablate_block_size.yaml to keep the
  diffusion tokens per row fixed while K varies.
"""

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

SYNTHETIC_DATA = {
    "synthetic_documents": {"num_documents": 4096, "min_length": 8, "max_length": 384, "seed": 0},
    "packed_dataset": {"seq_len": 256, "seed": 0, "shuffle": True, "infinite": True},
}

ConfigStore.instance().store(group="data", name="synthetic", node=SYNTHETIC_DATA)
OmegaConf.register_new_resolver("floor_div", lambda a, b: int(a) // int(b), replace=True)
