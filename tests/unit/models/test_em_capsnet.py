"""model=em_capsnet: parameter count, fast layers against the plain reference, coordinate
addition, the spread loss and its margin schedule, the training-step counter (checkpoints),
MirroredStrategy on two CPUs, and config checks."""
import numpy as np
import pytest
import tensorflow as tf

from capsrun.errors import CapsrunError
from capsrun.models.em_capsnet import ClassMatrixCaps, ConvMatrixCaps, EMCapsNet
from capsrun.models.em_reference import plain_class_votes, plain_conv_votes
from capsrun.models.losses import spread_loss, spread_margin
from capsrun.training.distribute import mirrored_strategy

SMALL = {"a": 4, "b": 3, "c": 3, "d": 2}


def small_model(shape=(20, 20, 1), classes=3, **kwargs):
    model = EMCapsNet(shape, classes, **{**SMALL, **kwargs})
    model.build_for_inputs()
    return model


@pytest.mark.parametrize("channels, count", [(1, 316_394), (2, 317_194)])
def test_the_smallnorb_network_has_the_derived_parameter_count(channels, count):
    model = EMCapsNet((32, 32, channels), 5)
    model.build_for_inputs()
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == count
    assert model.count_params() == count + 1  # + the training-step counter
    out = model(tf.zeros([2, 32, 32, channels]))
    assert out["scores"].shape == (2, 5) and out["capsules"].shape == (2, 5, 16)
    assert model.conv_caps2.out_grid == (4, 4)  # Figure 1: 14x14 -> 6x6 -> 4x4


def test_fast_votes_equal_the_plain_window_by_window_votes():
    model = small_model()
    poses, activations = model.primary_capsules(tf.random.uniform([2, 20, 20, 1], seed=1))
    for layer in (model.conv_caps1, model.class_caps):
        if layer is model.class_caps:
            poses, activations = model.conv_caps2(*model.conv_caps1(poses, activations))
            plain, plain_act, _ = plain_class_votes(layer, poses, activations)
        else:
            plain, plain_act, _ = plain_conv_votes(layer, poses, activations)
        fast, fast_act = layer.votes(poses, activations)  # [B, P, J, H, N]
        np.testing.assert_allclose(np.transpose(fast.numpy(), [0, 1, 4, 2, 3]), plain.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fast_act.numpy(), plain_act.numpy())


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function, unknown batch"])
def test_routing_in_chunks_equals_the_whole_batch_in_values_and_gradients(compiled):
    """5 examples in chunks of 2 (the last one smaller) against one pass of plain autodiff, in
    float64 so that only summation order can differ; ConvCaps at stride 1 (overlapping windows)
    then the class capsules (coordinate addition)."""
    rng = np.random.default_rng(4)
    poses = tf.constant(rng.normal(size=[5, 5, 5, 3, 16]))
    activations = tf.constant(rng.uniform(0.05, 1.0, [5, 5, 5, 3]))
    weights = tf.constant(rng.normal(size=[5, 16]))

    def run(chunk):
        tf.keras.utils.set_random_seed(2)
        conv = ConvMatrixCaps(4, 3, 1, chunk=chunk, dtype="float64")
        classes = ClassMatrixCaps(5, chunk=chunk, dtype="float64")

        def step(p, a):
            with tf.GradientTape() as tape:
                tape.watch([p, a])
                mu, act = classes(*conv(p, a))
                loss = tf.reduce_sum(mu * weights) + 50.0 * tf.reduce_sum(act * tf.range(5, dtype=tf.float64))
            return [mu, act, *tape.gradient(loss, [p, a, *conv.trainable_variables, *classes.trainable_variables])]

        if compiled:
            step = tf.function(step, input_signature=[tf.TensorSpec([None, 5, 5, 3, 16], tf.float64),
                                                      tf.TensorSpec([None, 5, 5, 3], tf.float64)])
        return step(poses, activations)

    whole, chunked = run(0), run(2)
    names = ["poses", "activations", "d poses", "d activations", "d W conv", "d beta_u conv", "d beta_a conv",
             "d W class", "d beta_u class", "d beta_a class"]
    for name, want, got in zip(names, whole, chunked, strict=True):
        assert np.abs(want.numpy()).max() > 0, name  # a zero gradient would compare equal trivially
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


def test_coordinate_addition_puts_the_scaled_row_and_column_on_vote_entries_0_3_and_1_3():
    model = small_model(shape=(28, 28, 1))  # ConvCaps2 grid 3x3
    plain_model = small_model(shape=(28, 28, 1), coordinate_addition=False)
    plain_model.set_weights(model.get_weights())
    poses, activations = model.conv_caps2(*model.conv_caps1(*model.primary_capsules(tf.ones([1, 28, 28, 1]))))
    with_coords, _ = model.class_caps.votes(poses, activations)
    without, _ = plain_model.class_caps.votes(poses, activations)
    difference = (with_coords - without).numpy()[0, 0]  # [J, 16, N], slot n = (r * 3 + c) * D + i
    rows, cols, types = 3, 3, SMALL["d"]
    for n in range(rows * cols * types):
        r, c = divmod(n // types, cols)
        expected = np.zeros(16)
        expected[3], expected[7] = (r + 0.5) / rows, (c + 0.5) / cols
        np.testing.assert_allclose(difference[:, :, n], np.tile(expected, (3, 1)), atol=1e-6)


def test_spread_loss_and_the_margin_schedule():
    activations = tf.constant([[0.9, 0.5, 0.85], [0.2, 0.6, 0.1]])
    labels = tf.constant([0, 0])
    # example 1: m - (a_t - a_i) = 0.3 - 0.4 < 0 -> 0, 0.3 - 0.05 = 0.25 -> 0.0625
    # example 2: 0.3 + 0.4 = 0.7 -> 0.49, 0.3 - 0.1 = 0.2 -> 0.04
    np.testing.assert_allclose(spread_loss(activations, labels, tf.constant(0.3)).numpy(), [0.0625, 0.53], rtol=1e-6)
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    for step in (0, 50_000, 200_000, 1_000_000):
        want = 0.2 + 0.79 * sigmoid(min(10.0, step / 50000 - 4))  # the authors' formula (OpenReview)
        np.testing.assert_allclose(spread_margin(step).numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(spread_margin(500, 0.2, 0.9, "linear", 1000).numpy(), 0.55, rtol=1e-6)
    np.testing.assert_allclose(spread_margin(5000, 0.2, 0.9, "linear", 1000).numpy(), 0.9, rtol=1e-6)


def test_the_training_step_counts_training_calls_sets_the_margin_and_is_checkpointed(tmp_path):
    model = small_model(loss={"m_min": 0.2, "m_max": 0.9, "schedule": "linear", "steps": 4.0})
    images, labels = tf.random.uniform([2, 20, 20, 1], seed=2), tf.constant([0, 1])
    model(images, training=False)
    assert int(model.training_step.numpy()) == 0
    outputs = model(images, training=True)
    losses = model.compute_losses(outputs, labels, images)
    np.testing.assert_allclose(losses["total"].numpy(), spread_loss(outputs["scores"], labels, 0.2).numpy(), rtol=1e-6)
    model(images, training=True)
    model(images, training=True)
    assert int(model.training_step.numpy()) == 3
    np.testing.assert_allclose(model.compute_losses(outputs, labels, images)["total"].numpy(),
                               spread_loss(outputs["scores"], labels, 0.2 + 0.7 * 2 / 4).numpy(), rtol=1e-6)
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    restored = small_model()
    tf.train.Checkpoint(model=restored).restore(path).expect_partial()
    assert int(restored.training_step.numpy()) == 3


def test_a_train_step_on_two_mirrored_cpus_equals_one_device():
    images = tf.random.uniform([4, 20, 20, 1], seed=3)
    labels = tf.constant([0, 1, 2, 1])

    def gradients(model):
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            loss = tf.reduce_sum(model.compute_losses(outputs, labels, images)["total"]) / 4.0
        return loss, tape.gradient(loss, model.trainable_variables)

    tf.keras.utils.set_random_seed(0)
    single = small_model()  # the whole batch at once, plain autodiff
    weights = single.get_weights()
    want_loss, want = gradients(single)
    strategy = mirrored_strategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        mirrored = small_model(routing_chunk=1)  # 2 examples per replica, routed one by one
        mirrored.set_weights(weights)

    @tf.function
    def replica_step(batch_images, batch_labels):
        with tf.GradientTape() as tape:
            outputs = mirrored(batch_images, training=True)
            loss = tf.reduce_sum(mirrored.compute_losses(outputs, batch_labels, batch_images)["total"]) / 4.0
        grads = tape.gradient(loss, mirrored.trainable_variables)
        context = tf.distribute.get_replica_context()
        return context.all_reduce("sum", loss), [context.all_reduce("sum", g) for g in grads]

    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((images, labels)).batch(4))
    loss, grads = strategy.run(replica_step, args=next(iter(dataset)))
    loss, grads = strategy.experimental_local_results(loss)[0], [strategy.experimental_local_results(g)[0]
                                                                 for g in grads]
    np.testing.assert_allclose(loss.numpy(), want_loss.numpy(), rtol=1e-5)
    for got, expected, variable in zip(grads, want, mirrored.trainable_variables):
        # float32 sums in another order, amplified by 1 / sigma^2 in EM: measured <= 1.1e-4 of the largest entry
        scale = np.abs(expected.numpy()).max()
        assert np.abs(got.numpy() - expected.numpy()).max() <= 1e-3 * scale, variable.path
    assert int(mirrored.training_step.numpy()) == 1  # one step, not one per replica


def test_too_small_images_and_several_objects_are_refused_with_the_fix():
    with pytest.raises(CapsrunError, match="too small"):
        EMCapsNet((12, 12, 1), 5)
    with pytest.raises(CapsrunError, match="one object per image"):
        EMCapsNet((32, 32, 1), 5, num_targets=2)
