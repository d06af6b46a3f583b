"""The CapsNet of Sabour, Frost & Hinton (2017): conv -> primary capsules -> digit capsules -> decoder.

Default sizes give the 8,215,568 trainable parameters of the reference implementation:
conv1 20,992 + primary caps 5,308,672 + W 1,474,560 + decoder 1,411,344.
Everything is derived from the input shape and the number of classes.
"""
import keras
import tensorflow as tf

from capsrun.layers import DigitCaps, PrimaryCaps, safe_norm
from capsrun.losses import capsule_losses


class Decoder(keras.layers.Layer):
    """Regenerates an image from the masked digit capsules.

    Input: masked capsules float32 [B, J, D]. Output: float32 [B, H, W, C] in [0, 1] (sigmoid).
    """

    def __init__(self, hidden_units, image_shape, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(s) for s in image_shape)
        # Layers are attributes, not a list: tf.train.Checkpoint does not follow Keras' lists.
        self.hidden_names = tuple(f"fc{index + 1}" for index in range(len(hidden_units)))
        for name, units in zip(self.hidden_names, hidden_units):
            setattr(self, name, keras.layers.Dense(units, activation="relu", name=name))
        pixels = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        self.output_layer = keras.layers.Dense(pixels, activation="sigmoid", name="pixels")

    def call(self, masked_capsules):
        flat = tf.reshape(masked_capsules, [tf.shape(masked_capsules)[0], -1])
        for name in self.hidden_names:
            flat = getattr(self, name)(flat)
        pixels = tf.cast(self.output_layer(flat), tf.float32)
        return tf.reshape(pixels, [-1, *self.image_shape])


class CapsNet(keras.Model):
    """Capsule network with a reconstruction decoder.

    Public methods used by training, evaluation and visualisation:
      capsules(images)              -> v [B, J, D] float32 (the digit capsules)
      lengths(capsules)             -> [B, J] float32 (class "probabilities")
      reconstruct(capsules, labels) -> [B, H, W, C] images regenerated from the capsule of `labels`
      call(images, labels=None)     -> dict(capsules, lengths, reconstructions); the decoder is
                                       masked by `labels` when given (training), else by the
                                       predicted class (evaluation).
      compute_losses(...)           -> per-example margin, reconstruction and total losses
    Images are float [B, H, W, C] in [0, 1]; labels int [B], or int [B, K] for images holding K
    digits (MultiMNIST, num_targets=K), whose reconstructions are then [B, K, H, W, C], one per
    digit. No batch size is baked in.
    """

    def __init__(
        self,
        image_shape=(28, 28, 1),
        num_classes=10,
        conv1_filters=256,
        conv1_kernel=9,
        primary_maps=32,
        primary_dim=8,
        primary_kernel=9,
        primary_strides=2,
        digit_dim=16,
        routing_iterations=3,
        decoder_units=(512, 1024),
        num_targets=1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)
        self.num_targets = int(num_targets)
        self.conv1 = keras.layers.Conv2D(
            conv1_filters, conv1_kernel, activation="relu", padding="valid", name="conv1"
        )
        self.primary_caps = PrimaryCaps(
            primary_maps, primary_dim, primary_kernel, primary_strides, name="primary_caps"
        )
        self.digit_caps = DigitCaps(
            self.num_classes, digit_dim, routing_iterations, dtype="float32", name="digit_caps"
        )
        self.decoder = Decoder(decoder_units, self.image_shape, name="decoder")

    def build_for_inputs(self):
        """Creates all weights by running one zero image through the network."""
        self(tf.zeros([1, *self.image_shape]), training=False)

    def capsules(self, images, training=False):
        """Digit capsules v [B, J, D] float32 for images [B, H, W, C]."""
        features = self.conv1(tf.cast(images, self.compute_dtype))
        return self.digit_caps(self.primary_caps(features))

    @staticmethod
    def lengths(capsules):
        """Capsule lengths [B, J] float32: the network's confidence in each class."""
        return safe_norm(capsules, axis=-1)

    def predict_labels(self, lengths):
        """The predicted class int32 [B], or for num_targets K > 1 the K classes with the longest
        capsules, in increasing class order, int32 [B, K]."""
        if self.num_targets == 1:
            return tf.argmax(lengths, axis=-1, output_type=tf.int32)
        return tf.sort(tf.math.top_k(lengths, k=self.num_targets).indices, axis=-1)

    def reconstruct(self, capsules, labels):
        """Images regenerated from the capsules of `labels` only: labels int [B] -> [B, H, W, C];
        labels int [B, K] -> [B, K, H, W, C], each image from one capsule alone."""
        if labels.shape.rank == 2:
            return tf.stack([self.reconstruct(capsules, labels[:, k]) for k in range(labels.shape[1])], axis=1)
        mask = tf.one_hot(labels, self.num_classes, dtype=capsules.dtype)
        return self.decoder(capsules * mask[:, :, None])

    def compute_losses(self, loss_cfg, outputs, labels, images, components=None):
        """Per-example float32 [B] `margin`, `reconstruction` and `total` losses. The
        reconstructions are compared with `components` [B, K, H, W, C] (each digit alone) when
        given, else with the images."""
        targets = images if components is None else tf.cast(components, tf.float32) / 255.0
        return capsule_losses(loss_cfg, outputs["lengths"], labels, targets, outputs["reconstructions"],
                              self.num_classes)

    def call(self, images, labels=None, training=False):
        capsules = self.capsules(images, training=training)
        lengths = self.lengths(capsules)
        if labels is None:
            labels = self.predict_labels(lengths)
        return {
            "capsules": capsules,
            "lengths": lengths,
            "reconstructions": self.reconstruct(capsules, labels),
        }


def build_model(model_cfg, image_shape, num_classes, num_targets=1):
    """A built model for `model_cfg` (the `model` config group: a CapsNet, or the baseline CNN for
    `model.name=baseline_cnn`), inputs [H, W, C], classes and digits per image."""
    if model_cfg.name == "baseline_cnn":
        from capsrun.baseline import build_baseline

        return build_baseline(model_cfg, image_shape, num_classes)
    model = CapsNet(
        image_shape=image_shape,
        num_classes=num_classes,
        conv1_filters=model_cfg.conv1_filters,
        conv1_kernel=model_cfg.conv1_kernel,
        primary_maps=model_cfg.primary_maps,
        primary_dim=model_cfg.primary_dim,
        primary_kernel=model_cfg.primary_kernel,
        primary_strides=model_cfg.primary_strides,
        digit_dim=model_cfg.digit_dim,
        routing_iterations=model_cfg.routing_iterations,
        decoder_units=tuple(model_cfg.decoder_units),
        num_targets=num_targets,
        name="capsnet",
    )
    model.build_for_inputs()
    return model
