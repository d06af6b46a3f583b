"""The CapsNet of Sabour, Frost & Hinton (2017): conv -> primary capsules -> digit capsules -> decoder.

Default sizes give the 8,215,568 trainable parameters of the reference implementation:
conv1 20,992 + primary caps 5,308,672 + W 1,474,560 + decoder 1,411,344.
Everything is derived from the input shape and the number of classes.
"""
import keras
import tensorflow as tf

from capsrun.layers import DigitCaps, PrimaryCaps, safe_norm


class Decoder(keras.layers.Layer):
    """Regenerates an image from the masked digit capsules.

    Input: masked capsules float32 [B, J, D]. Output: float32 [B, H, W, C] in [0, 1] (sigmoid).
    """

    def __init__(self, hidden_units, image_shape, **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.hidden = [
            keras.layers.Dense(units, activation="relu", name=f"fc{index + 1}")
            for index, units in enumerate(hidden_units)
        ]
        pixels = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        self.output_layer = keras.layers.Dense(pixels, activation="sigmoid", name="pixels")

    def call(self, masked_capsules):
        flat = tf.reshape(masked_capsules, [tf.shape(masked_capsules)[0], -1])
        for layer in self.hidden:
            flat = layer(flat)
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
    Images are float [B, H, W, C] in [0, 1]; labels int [B]. No batch size is baked in.
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)
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

    def reconstruct(self, capsules, labels):
        """Images [B, H, W, C] regenerated from the capsules of `labels` (int [B]) only."""
        mask = tf.one_hot(labels, self.num_classes, dtype=capsules.dtype)
        return self.decoder(capsules * mask[:, :, None])

    def call(self, images, labels=None, training=False):
        capsules = self.capsules(images, training=training)
        lengths = self.lengths(capsules)
        if labels is None:
            labels = tf.argmax(lengths, axis=-1, output_type=tf.int32)
        return {
            "capsules": capsules,
            "lengths": lengths,
            "reconstructions": self.reconstruct(capsules, labels),
        }


def build_model(model_cfg, image_shape, num_classes):
    """A built CapsNet for `model_cfg` (the `model` config group), inputs and classes."""
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
        name="capsnet",
    )
    model.build_for_inputs()
    return model
