"""Training of the diffusion view (distillation from the frozen AR view); entry point: train.py.

blocks.py      anchors, block inputs and targets cut from a packed batch
attention.py   the block mask (one function; flex attention on CUDA, dense SDPA on the CPU)
objective.py   AR teacher pass + diffusion pass + chunked KL / CE loss; next-token pretraining
optim.py       AdamW over trainable params only, warmup + cosine schedule
backend.py     plain PyTorch (DDP) and DeepSpeed ZeRO-2/3 behind one interface
checkpoint.py  atomic, resumable checkpoints;  tracking.py  JSONL / wandb / tqdm
flops.py       model FLOPs for MFU;  data.py  datasets;  model.py  model sources
loop.py        the Trainer that ties them together
fp8.py         float8 matmuls of the frozen Linear layers;  compile.py  compiled per-layer work
profile.py     torch.profiler breakdown of a step by phase;  throughput.py  the training benchmark
config.py      the resolver conf/ relies on (${floor_div:...})
"""
