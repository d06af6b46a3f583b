"""The paper's baseline CNN (section 5): three 5x5 stride-1 convolutions of 256, 256 and 128
channels, fully connected layers of 328 and 192 units, dropout, and a softmax over the classes
with cross-entropy loss. 35.4M parameters on MNIST (35,445,522 here).

It has the same interface as CapsNet where evaluation needs one: `call` returns class scores
under "lengths" (softmax probabilities) and `compute_losses` the per-example losses; it has no
capsules and no decoder.
"""
import keras
import tensorflow as tf


class BaselineCNN(keras.Model):
    """images float [B, H, W, C] in [0, 1] -> dict(logits [B, J], lengths [B, J] softmax)."""

    def __init__(self, image_shape=(28, 28, 1), num_classes=10, channels=(256, 256, 128), kernel_size=5,
                 fc_units=(328, 192), dropout=0.5, **kwargs):
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

    def build_for_inputs(self):
        """Creates all weights by running one zero image through the network."""
        self(tf.zeros([1, *self.image_shape]), training=False)

    def call(self, images, labels=None, training=False):
        features = tf.cast(images, self.compute_dtype)
        for name in self.layer_names:
            if name.startswith("fc") and features.shape.rank > 2:
                features = self.flatten(features)
            features = getattr(self, name)(features)
        logits = tf.cast(self.classifier(self.dropout(features, training=training)), tf.float32)
        return {"logits": logits, "lengths": tf.nn.softmax(logits)}

    @staticmethod
    def predict_labels(scores):
        """The predicted class int32 [B] from class scores [B, J]."""
        return tf.argmax(scores, axis=-1, output_type=tf.int32)

    def compute_losses(self, loss_cfg, outputs, labels, images, components=None):
        """Per-example float32 [B] losses: `cross_entropy` and `total` (the same)."""
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=outputs["logits"])
        return {"cross_entropy": cross_entropy, "total": cross_entropy}


def build_baseline(model_cfg, image_shape, num_classes):
    """A built BaselineCNN for the `model=baseline_cnn` config."""
    model = BaselineCNN(image_shape, num_classes, tuple(model_cfg.cnn_channels), model_cfg.cnn_kernel,
                        tuple(model_cfg.fc_units), model_cfg.dropout, name="baseline_cnn")
    model.build_for_inputs()
    return model
