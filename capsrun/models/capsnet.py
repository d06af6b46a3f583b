"""The CapsNet of Sabour, Frost & Hinton (2017): conv -> primary capsules -> digit capsules -> decoder.

Default sizes give the 8,215,568 trainable parameters of the reference implementation:
conv1 20,992 + primary caps 5,308,672 + W 1,474,560 + decoder 1,411,344.
Everything is derived from the input shape and the number of classes.
"""
from dataclasses import asdict
from typing import Any, Dict, Optional, Sequence, Union

import keras
import tensorflow as tf

from capsrun.models.base import CAPSULES, RECONSTRUCTIONS, SCORES, InputSpec
from capsrun.models.layers import DigitCaps, PrimaryCaps
from capsrun.models.losses import CapsuleLoss
from capsrun.models.ops import safe_norm, top_labels


@keras.saving.register_keras_serializable(package="capsrun")
class Decoder(keras.layers.Layer):
    """Regenerates an image from the masked digit capsules.

    Input: masked capsules float32 [B, J, D]. Output: float32 [B, H, W, C] in [0, 1] (sigmoid).
    Weights: J*D -> hidden_units[0] -> ... -> H*W*C, each Dense with a bias; the initializers
    are Keras names (CapsNet: Keras' default glorot_uniform; Efficient-CapsNet: he_normal for
    the ReLU layers, glorot_normal for the sigmoid one, as in the authors' code).
    """

    def __init__(self, hidden_units: Sequence[int], image_shape: Sequence[int],
                 hidden_initializer: str = "glorot_uniform", output_initializer: str = "glorot_uniform",
                 bias_initializer: Any = "zeros", **kwargs):
        super().__init__(**kwargs)
        self.hidden_units = tuple(int(units) for units in hidden_units)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.hidden_initializer, self.output_initializer = hidden_initializer, output_initializer
        self.bias_initializer = bias_initializer
        # Layers are attributes, not a list: tf.train.Checkpoint does not follow Keras' lists.
        self.hidden_names = tuple(f"fc{index + 1}" for index in range(len(hidden_units)))
        for name, units in zip(self.hidden_names, hidden_units):
            setattr(self, name, keras.layers.Dense(units, activation="relu", kernel_initializer=hidden_initializer,
                                                   bias_initializer=bias_initializer, name=name))
        pixels = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
        self.output_layer = keras.layers.Dense(pixels, activation="sigmoid", kernel_initializer=output_initializer,
                                               bias_initializer=bias_initializer, name="pixels")

    def get_config(self) -> dict:
        return {**super().get_config(), "hidden_units": list(self.hidden_units), "image_shape": list(self.image_shape),
                "hidden_initializer": self.hidden_initializer, "output_initializer": self.output_initializer,
                "bias_initializer": self.bias_initializer}

    def call(self, masked_capsules: tf.Tensor) -> tf.Tensor:
        flat = tf.reshape(masked_capsules, [tf.shape(masked_capsules)[0], -1])
        for name in self.hidden_names:
            flat = getattr(self, name)(flat)
        pixels = tf.cast(self.output_layer(flat), tf.float32)
        return tf.reshape(pixels, [-1, *self.image_shape])


class CapsuleNetwork(keras.Model):
    """What every capsule network with a masked decoder shares; fulfils
    `capsrun.models.base.CapsuleModel` once a subclass defines `capsules` and sets `decoder`.

    call(images, labels=None) -> {"scores": capsule lengths [B, J], "capsules": v [B, J, D],
    "reconstructions": [B, H, W, C] or [B, T, H, W, C]}; the decoder is masked by `labels` when
    given (training), else by the predicted class(es). Images float [B, H, W, C] in [0, 1];
    labels int [B], or int [B, T] for images holding T digits (MultiMNIST, num_targets=T), whose
    reconstructions are then one per digit. No batch size is baked in.
    """

    def __init__(self, image_shape: Sequence[int], num_classes: int, num_targets: int,
                 loss: Optional[Union[CapsuleLoss, dict]], **kwargs):
        super().__init__(**kwargs)
        self.loss_fn = CapsuleLoss(**loss) if isinstance(loss, dict) else (loss or CapsuleLoss())
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = int(num_classes)
        self.num_targets = int(num_targets)
        self.settings: Dict[str, Any] = {}  # a subclass's own `__init__` arguments, for get_config

    def get_config(self) -> dict:
        """Everything `__init__` takes, the loss settings included (`loss`: the CapsuleLoss fields as
        a dict, which `__init__` accepts too), so that a `.keras` file rebuilds the same network
        with the same loss."""
        return {**super().get_config(), "image_shape": list(self.image_shape), "num_classes": self.num_classes,
                "num_targets": self.num_targets, **self.settings, "loss": asdict(self.loss_fn)}

    def get_build_config(self) -> dict:
        return {"input_shape": [None, *self.image_shape]}

    def build_from_config(self, config: dict) -> None:
        """Creates the weights on loading a `.keras` file (their values are then read from it)."""
        self.build_for_inputs()

    def build_for_inputs(self) -> None:
        """Creates all weights by running one zero image through the network."""
        self(tf.zeros([1, *self.image_shape]), training=False)

    def primary_capsules(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Primary capsules u [B, I, K] for images [B, H, W, C]: everything before the class
        capsules `digit_caps` (defined by each network)."""
        raise NotImplementedError

    def capsules(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Class capsules v [B, J, D] float32 for images [B, H, W, C]."""
        return self.digit_caps(self.primary_capsules(images, training=training))

    @staticmethod
    def lengths(capsules: tf.Tensor) -> tf.Tensor:
        """Capsule lengths [B, J] float32: the network's confidence in each class."""
        return safe_norm(capsules, axis=-1)

    def predict_labels(self, scores: tf.Tensor) -> tf.Tensor:
        """The predicted class int32 [B], or for num_targets T > 1 the T classes with the longest
        capsules, in increasing class order, int32 [B, T]."""
        return top_labels(scores, self.num_targets)

    def reconstruct(self, capsules: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """Images regenerated from the capsules of `labels` only: labels int [B] -> [B, H, W, C];
        labels int [B, K] -> [B, K, H, W, C], each image from one capsule alone."""
        if labels.shape.rank == 2:
            return tf.stack([self.reconstruct(capsules, labels[:, k]) for k in range(labels.shape[1])], axis=1)
        mask = tf.one_hot(labels, self.num_classes, dtype=capsules.dtype)
        return self.decoder(capsules * mask[:, :, None])

    def compute_losses(self, outputs: Dict[str, tf.Tensor], labels: tf.Tensor,
                       targets: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Per-example float32 [B] `margin`, `reconstruction` and `total` (see CapsuleLoss)."""
        return self.loss_fn(outputs[SCORES], labels, targets, outputs[RECONSTRUCTIONS])

    def call(self, images: tf.Tensor, labels: tf.Tensor = None, training: bool = False) -> Dict[str, tf.Tensor]:
        capsules = self.capsules(images, training=training)
        lengths = self.lengths(capsules)
        if labels is None:
            labels = self.predict_labels(lengths)
        return {CAPSULES: capsules, SCORES: lengths, RECONSTRUCTIONS: self.reconstruct(capsules, labels)}


def _truncated_normal(stddev: float) -> dict:
    """A serialisable Keras TruncatedNormal(0, stddev) (cut at 2 stddev, like TF1's
    truncated_normal_initializer)."""
    return {"class_name": "TruncatedNormal", "config": {"mean": 0.0, "stddev": stddev}}


OFFICIAL_BIAS = {"class_name": "Constant", "config": {"value": 0.1}}
"""Every bias of the official code starts at 0.1 (research/capsules/models/layers/variables.py,
`bias_variable`; the decoder's `biases_initializer` in layers.py `reconstruction`)."""


INITIALIZERS = {
    # model.initializer -> (conv1 kernel, conv1 bias, primary kernel, primary bias, digit W, decoder kernels,
    #                       decoder biases); None = the layer's own default
    "keras": (None, None, None, None, None, None, None),  # Keras defaults; W ~ N(0, W_STDDEV) (layers.py)
    # The official code (research/capsules in tensorflow/models): conv1 `weight_variable(stddev=5e-2)`
    # (capsule_model.py), the capsule layers' `weight_variable` default stddev 0.1 (variables.py), the
    # decoder's truncated_normal_initializer(stddev=0.1) (layers.py `reconstruction`); biases 0.1.
    "official": (_truncated_normal(0.05), OFFICIAL_BIAS, _truncated_normal(0.1), OFFICIAL_BIAS,
                 _truncated_normal(0.1), _truncated_normal(0.1), OFFICIAL_BIAS),
}
"""The weight initialisations `model.initializer` selects."""


@keras.saving.register_keras_serializable(package="capsrun")
class CapsNet(CapsuleNetwork):
    """Sabour et al.'s capsule network with a reconstruction decoder (see `CapsuleNetwork` for
    the interface): conv1 [B, H-8, W-8, 256] -> primary capsules [B, I, 8] -> digit capsules
    [B, J, 16] -> decoder."""

    def __init__(
        self,
        image_shape: Sequence[int] = (28, 28, 1),
        num_classes: int = 10,
        conv1_filters: int = 256,
        conv1_kernel: int = 9,
        primary_maps: int = 32,
        primary_dim: int = 8,
        primary_kernel: int = 9,
        primary_strides: int = 2,
        digit_dim: int = 16,
        routing_iterations: int = 3,
        decoder_units: Sequence[int] = (512, 1024),
        num_targets: int = 1,
        routing: str = "dynamic",
        routing_squash: str = "paper",
        loss: Optional[Union[CapsuleLoss, dict]] = None,
        initializer: str = "keras",
        digit_bias: bool = False,
        leaky_routing: bool = False,
        primary_scale: float = 1.0,
        max_min_renormalize: bool = True,
        **kwargs,
    ):
        super().__init__(image_shape, num_classes, num_targets, loss, **kwargs)
        conv1_kernel_init, conv1_bias_init, primary_kernel_init, primary_bias_init, digit_init, decoder_init, \
            decoder_bias_init = INITIALIZERS[initializer]
        self.settings = {
            "conv1_filters": int(conv1_filters), "conv1_kernel": int(conv1_kernel), "primary_maps": int(primary_maps),
            "primary_dim": int(primary_dim), "primary_kernel": int(primary_kernel),
            "primary_strides": int(primary_strides), "digit_dim": int(digit_dim),
            "routing_iterations": int(routing_iterations), "decoder_units": [int(u) for u in decoder_units],
            "routing": str(routing), "routing_squash": str(routing_squash), "initializer": str(initializer),
            "digit_bias": bool(digit_bias), "leaky_routing": bool(leaky_routing), "primary_scale": float(primary_scale),
            "max_min_renormalize": bool(max_min_renormalize),
        }
        self.conv1 = keras.layers.Conv2D(
            conv1_filters, conv1_kernel, activation="relu", padding="valid", name="conv1",
            kernel_initializer=conv1_kernel_init or "glorot_uniform", bias_initializer=conv1_bias_init or "zeros",
        )
        self.primary_caps = PrimaryCaps(
            primary_maps, primary_dim, primary_kernel, primary_strides, scale=primary_scale,
            kernel_initializer=primary_kernel_init or "glorot_uniform", bias_initializer=primary_bias_init or "zeros",
            name="primary_caps",
        )
        self.digit_caps = DigitCaps(
            self.num_classes, digit_dim, routing_iterations, routing=routing, routing_squash=routing_squash,
            kernel_initializer=digit_init, routing_bias=digit_bias, leaky=leaky_routing,
            max_min_renormalize=max_min_renormalize, dtype="float32",
            name="digit_caps"
        )
        self.decoder = Decoder(decoder_units, self.image_shape, name="decoder",
                               **({} if decoder_init is None else {"hidden_initializer": decoder_init,
                                                                   "output_initializer": decoder_init,
                                                                   "bias_initializer": decoder_bias_init}))

    def primary_capsules(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Primary capsules u [B, I, K] for images [B, H, W, C]: conv1, then the primary capsules."""
        return self.primary_caps(self.conv1(tf.cast(images, self.compute_dtype)))


def build(model_cfg: Any, loss_cfg: Any, spec: InputSpec) -> CapsNet:
    """A built CapsNet for the `model` and `loss` config groups and the data's InputSpec."""
    model = CapsNet(
        image_shape=spec.image_shape,
        num_classes=spec.num_classes,
        conv1_filters=model_cfg.conv1_filters,
        conv1_kernel=model_cfg.conv1_kernel,
        primary_maps=model_cfg.primary_maps,
        primary_dim=model_cfg.primary_dim,
        primary_kernel=model_cfg.primary_kernel,
        primary_strides=model_cfg.primary_strides,
        digit_dim=model_cfg.digit_dim,
        routing_iterations=model_cfg.routing_iterations,
        decoder_units=tuple(model_cfg.decoder_units),
        num_targets=spec.num_targets,
        routing=model_cfg.routing,
        routing_squash=model_cfg.routing_squash,
        loss=CapsuleLoss.from_config(loss_cfg),
        initializer=model_cfg.initializer,
        digit_bias=model_cfg.digit_bias,
        leaky_routing=model_cfg.leaky_routing,
        primary_scale=model_cfg.primary_scale,
        max_min_renormalize=model_cfg.max_min_renormalize,
        name="capsnet",
    )
    model.build_for_inputs()
    return model
