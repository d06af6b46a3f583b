"""Configuration: typed schemas of `capsrun train` and of every command (`schema`), Hydra
composition and override checks (`compose`), range checks (`validation`) and dotted keys (`keys`).

Nothing here imports TensorFlow: config errors and `--help` stay fast.
"""
