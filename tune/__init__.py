"""Ray Tune sweeps for lus-dist (`lus tune {aggregator,cnnlstm,regstn,seg}`).

ray_env: the one place that starts or joins Ray (loopback, explicit auth, small object store).
spaces: YAML search spaces (tune/spaces/*.yaml) -> Ray search spaces and typed configs.
sweep: Tuner set-up (ASHA/PBT/FIFO, random/grid/Optuna), resume, loud failures, outputs.
trainables: one trial function per family; Reg-STN/seg trials are Ray Train runs.
cli: argument parsing. slurm/tune.sh runs the same command on a Slurm allocation.
"""
