"""Data: sources on disk (`sources`: IDX, npz, image folders, the Keras cache, CIFAR-10 and the
bundled MNIST in `bundled/mnist/`), sets generated from them (`generated`: canvas, affine test
set, MultiMNIST), train/validation/test splits (`splits`) and tf.data pipelines (`pipeline`).
Nothing here knows about models or training.
"""
