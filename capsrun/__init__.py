"""capsrun: train, sweep, inspect and compare Capsule Networks (Sabour et al. 2017) in TensorFlow 2."""

__version__ = "0.1.0"
