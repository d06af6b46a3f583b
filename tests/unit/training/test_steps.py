"""The sums shared by training and evaluation: what counts as a correct prediction."""
import numpy as np


def test_two_digit_accuracy_needs_both_digits():
    import tensorflow as tf

    from capsrun.models.losses import class_targets
    from capsrun.training.steps import correct_predictions

    labels = tf.constant([[3, 7], [1, 2], [4, 0]])
    predicted = tf.constant([[3, 7], [1, 5], [0, 4]])
    np.testing.assert_array_equal(correct_predictions(predicted, labels).numpy(), [1, 0, 1])
    np.testing.assert_array_equal(class_targets(tf.constant([[3, 7]]), 10).numpy()[0], np.eye(10)[3] + np.eye(10)[7])
