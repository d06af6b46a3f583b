"""The paper's baseline CNN (section 5): three 5x5 stride-1 convolutions of 256, 256 and 128
channels, fully connected layers of 328 and 192 units, dropout, and a softmax over the classes
with cross-entropy loss. 35.4M parameters on MNIST (35,445,522 here).

It fulfils the model contract of `capsrun.models.base`: `scores` are softmax probabilities,
`logits` the pre-softmax scores, the one loss term is `cross_entropy`; it has no capsules and no
decoder. One label per image.
"""
from typing import Any, Dict, Sequence

import keras
import tensorflow as tf

from capsrun.models.base import LOGITS, SCORES, TOTAL, InputSpec
from capsrun.models.losses import cross_entropy
from capsrun.models.ops import top_labels


@keras.saving.register_keras_serializable(package="capsrun")
class BaselineCNN(keras.Model):
    """images float [B, H, W, C] in [0, 1] -> {"logits": [B, J], "scores": [B, J] softmax}."""

    def __init__(self, image_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10,
                 channels: Sequence[int] = (256, 256, 128), kernel_size: int = 5, fc_units: Sequence[int] = (328, 192),
                 dropout: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)
        self.num_targets = 1
        # Layers are attributes, not lists: tf.train.Checkpoint does not follow Keras' lists.
        self.layer_names = tuple(f"conv{i + 1}" for i in range(len(channels))) + tuple(
            f"fc{i + 1}" for i in range(len(fc_units)))
        for i, filters in enumerate(channels):
            setattr(self, f"conv{i + 1}", keras.layers.Conv2D(filters, kernel_size, padding="same", activation="relu",
                                                              name=f"conv{i + 1}"))
        for i, units in enumerate(fc_units):
            setattr(self, f"fc{i + 1}", keras.layers.Dense(units, activation="relu", name=f"fc{i + 1}"))
        self.flatten = keras.layers.Flatten()
        self.dropout = keras.layers.Dropout(dropout)
        self.classifier = keras.layers.Dense(self.num_classes, name="classifier")
        self.settings = {"channels": [int(c) for c in channels], "kernel_size": int(kernel_size),
                         "fc_units": [int(u) for u in fc_units], "dropout": float(dropout)}

    def get_config(self) -> dict:
        """Everything `__init__` takes, so that a `.keras` file rebuilds the same network."""
        return {**super().get_config(), "image_shape": list(self.image_shape), "num_classes": self.num_classes,
                **self.settings}

    def get_build_config(self) -> dict:
        return {"input_shape": [None, *self.image_shape]}

    def build_from_config(self, config: dict) -> None:
        """Creates the weights on loading a `.keras` file (they are then read from the file)."""
        self.build_for_inputs()

    def build_for_inputs(self) -> None:
        """Creates all weights by running one zero image through the network."""
        self(tf.zeros([1, *self.image_shape]), training=False)

    def call(self, images: tf.Tensor, labels: tf.Tensor = None, training: bool = False) -> Dict[str, tf.Tensor]:
        features = tf.cast(images, self.compute_dtype)
        for name in self.layer_names:
            if name.startswith("fc") and features.shape.rank > 2:
                features = self.flatten(features)
            features = getattr(self, name)(features)
        logits = tf.cast(self.classifier(self.dropout(features, training=training)), tf.float32)
        return {LOGITS: logits, SCORES: tf.nn.softmax(logits)}

    def predict_labels(self, scores: tf.Tensor) -> tf.Tensor:
        """The predicted class int32 [B] from class scores [B, J]."""
        return top_labels(scores, 1)

    def compute_losses(self, outputs: Dict[str, tf.Tensor], labels: tf.Tensor,
                       targets: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Per-example float32 [B] losses: `cross_entropy` and `total` (the same)."""
        loss = cross_entropy(labels, outputs[LOGITS])
        return {"cross_entropy": loss, TOTAL: loss}


def build(model_cfg: Any, loss_cfg: Any, spec: InputSpec) -> BaselineCNN:
    """A built BaselineCNN for the `model=baseline_cnn` config (it has no loss settings)."""
    model = BaselineCNN(spec.image_shape, spec.num_classes, tuple(model_cfg.cnn_channels), model_cfg.cnn_kernel,
                        tuple(model_cfg.fc_units), model_cfg.dropout, name="baseline_cnn")
    model.build_for_inputs()
    return model
