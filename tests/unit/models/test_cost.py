"""MACs per image from the layer shapes (capsrun.models.cost) against hand-computed numbers."""
import keras
import pytest

from capsrun.models.baseline_cnn import BaselineCNN
from capsrun.models.capsnet import CapsNet
from capsrun.models.cost import ROUTING_CONTRACTIONS, count_macs, macs_by_layer, model_cost
from capsrun.models.routing import ROUTINGS


def built(model):
    model.build_for_inputs()
    return model


def test_paper_capsnet_macs_by_layer():
    model = built(CapsNet())
    conv1 = 20 * 20 * (9 * 9 * 1) * 256                  # 28 - 9 + 1 = 20 output rows and columns
    primary = 6 * 6 * (9 * 9 * 256) * 256                # (20 - 9) // 2 + 1 = 6, stride 2
    votes = 1152 * 10 * 16 * 8                           # I = 6 * 6 * 32 primary capsules, J = 10
    routing = (2 * 3 - 1) * 10 * 1152 * 16               # 3 iterations: 3 weighted sums + 2 agreements
    decoder = 16 * 10 * 512 + 512 * 1024 + 1024 * 784    # the masked [10, 16] capsules flattened
    assert macs_by_layer(model) == {
        "conv1": conv1, "primary_caps/conv": primary, "digit_caps": votes, "digit_caps/routing": routing,
        "decoder/pixels": 1024 * 784, "decoder/fc2": 512 * 1024, "decoder/fc1": 160 * 512,
    }
    assert count_macs(model) == conv1 + primary + votes + routing + decoder == 203_202_560
    assert model_cost(model) == {"parameters": 8_215_568, "macs_per_image": 203_202_560, "routing": "dynamic"}


@pytest.mark.parametrize("routing, iterations, contractions", [
    ("dynamic", 1, 1), ("dynamic", 2, 3), ("uniform", 3, 1), ("max_min", 3, 5), ("self_attention", 3, 3),
    ("inverted_dot_product", 2, 3),
])
def test_routing_macs_of_a_small_capsnet(routing, iterations, contractions):
    model = built(CapsNet(image_shape=(20, 20, 1), conv1_filters=8, primary_maps=2, routing=routing,
                          routing_iterations=iterations, decoder_units=(16,)))
    # conv1 12x12 out; primary (12 - 9) // 2 + 1 = 2, so I = 2 * 2 * 2 = 8 capsules
    assert macs_by_layer(model)["digit_caps/routing"] == contractions * 10 * 8 * 16
    expected = 12 * 12 * 81 * 8 + 2 * 2 * 81 * 8 * 16 + 8 * 10 * 16 * 8 + contractions * 10 * 8 * 16 \
        + 160 * 16 + 16 * 400
    assert count_macs(model) == expected
    assert model_cost(model)["routing"] == routing


def test_every_routing_has_a_mac_count():
    assert set(ROUTING_CONTRACTIONS) == set(ROUTINGS)


def test_two_digit_capsnet_counts_the_decoder_once_per_digit():
    one = macs_by_layer(built(CapsNet(conv1_filters=8, primary_maps=2, decoder_units=(16,))))
    two = macs_by_layer(built(CapsNet(conv1_filters=8, primary_maps=2, decoder_units=(16,), num_targets=2)))
    assert two["decoder/fc1"] == 2 * one["decoder/fc1"] and two["conv1"] == one["conv1"]


def test_baseline_cnn_macs():
    model = built(BaselineCNN())
    pixels = 28 * 28                                     # 5x5 same padding, stride 1
    expected = {
        "conv1": pixels * 25 * 1 * 256, "conv2": pixels * 25 * 256 * 256, "conv3": pixels * 25 * 256 * 128,
        "fc1": pixels * 128 * 328, "fc2": 328 * 192, "classifier": 192 * 10,
    }
    assert macs_by_layer(model) == expected
    assert count_macs(model) == 1_964_756_352
    assert model_cost(model)["parameters"] == 35_445_522 and model_cost(model)["routing"] is None


def test_depthwise_and_grouped_convolutions_and_unknown_layers():
    class Net(keras.Model):
        def __init__(self, last):
            super().__init__()
            self.depthwise = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="depthwise")
            self.grouped = keras.layers.Conv2D(8, 1, groups=2, name="grouped")
            self.last = last

        def call(self, x):
            return self.last(self.grouped(self.depthwise(x)))

    net = Net(keras.layers.Dense(3, name="dense"))
    net(keras.ops.zeros([1, 10, 10, 4]))
    assert macs_by_layer(net) == {"depthwise": 8 * 8 * 9 * 4 * 2, "grouped": 8 * 8 * 1 * (8 // 2) * 8,
                                  "dense": 8 * 8 * 8 * 3}
    odd = Net(keras.layers.Embedding(5, 2, name="embedding"))  # weighted, but no MAC rule: unknown
    odd(keras.ops.zeros([1, 10, 10, 4]))
    assert count_macs(odd) is None
