"""EM routing (capsrun.models.routing.em) against the equations of Procedure 1 (Hinton et al.
2018) in NumPy, against the plain reference (capsrun.models.em_reference) on overlapping
windows, the normalisation over all parents of a child, and finite-difference gradients."""
import numpy as np
import tensorflow as tf

from capsrun.models.em_reference import conv_windows, plain_em
from capsrun.models.routing.em import e_step, em_routing, m_step, window_children

SETTINGS = {"final_lambda": 0.01, "lambda_decay": 0.95, "epsilon": 1e-15}  # float64: epsilon negligible


def numpy_em(votes, activations, beta_u, beta_a, iterations, eps=1e-15):
    """Procedure 1 in NumPy for one parent position: votes [B, I, J, H], activations [B, I]."""
    batch, inputs, parents, _ = votes.shape
    r = np.full([batch, inputs, parents], 1.0 / parents)
    for it in range(iterations):
        lam = 0.01 * (1 - 0.95 ** (it + 1))  # the authors' schedule (OpenReview)
        rp = r * activations[:, :, None]
        total = rp.sum(1)  # [B, J]
        mu = np.einsum("bij,bijh->bjh", rp, votes) / (total[..., None] + eps)
        var = np.einsum("bij,bijh->bjh", rp, (votes - mu[:, None]) ** 2) / (total[..., None] + eps) + eps
        cost = (beta_u[None, :, None] + np.log(np.sqrt(var))) * total[..., None]
        a = 1.0 / (1.0 + np.exp(-lam * (beta_a - cost.sum(-1))))
        if it == iterations - 1:
            return mu, a
        p = np.exp(-((votes - mu[:, None]) ** 2 / (2 * var[:, None])).sum(-1)) / np.sqrt(
            np.prod(2 * np.pi * var, -1))[:, None]
        r = a[:, None] * p / (a[:, None] * p).sum(-1, keepdims=True)


def random_fc(seed, batch=2, inputs=6, parents=3):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=[batch, inputs, parents, 16]), rng.uniform(0.1, 1, [batch, inputs]),
            rng.normal(size=[parents]), rng.normal(size=[parents]) * 10)


def to_fast(votes):
    """[B, I, J, H] (one window) -> [B, 1, J, H, N=I]."""
    return tf.constant(np.transpose(votes, [0, 2, 3, 1])[:, None])


def test_fc_em_routing_matches_procedure_1_in_numpy():
    votes, act, beta_u, beta_a = random_fc(0)
    index = np.arange(votes.shape[1], dtype=np.int32)[None]
    for iterations in (1, 2, 3):
        mu, a = em_routing(to_fast(votes), tf.constant(act[:, None]), tf.constant(beta_u), tf.constant(beta_a), index,
                           iterations, **SETTINGS)
        want_mu, want_a = numpy_em(votes, act, beta_u, beta_a, iterations)
        np.testing.assert_allclose(mu.numpy()[:, 0], want_mu, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(a.numpy()[:, 0], want_a, rtol=1e-9, atol=1e-12)


def test_the_m_step_gives_the_weighted_mean_variance_and_activation_logit():
    votes, act, beta_u, beta_a = random_fc(1)
    rng = np.random.default_rng(2)
    r = rng.uniform(size=[2, 6, 3])
    fast_votes = to_fast(votes)
    mean, variance, logit = m_step(fast_votes, tf.square(fast_votes), tf.constant(np.transpose(r, [0, 2, 1])[:, None]),
                                   tf.constant(act[:, None]), tf.constant(beta_u), tf.constant(beta_a), 0.5, 1e-9)
    rp = r * act[:, :, None]
    mu = np.einsum("bij,bijh->bjh", rp, votes) / rp.sum(1)[..., None]
    var = np.einsum("bij,bijh->bjh", rp, (votes - mu[:, None]) ** 2) / rp.sum(1)[..., None]
    cost = ((beta_u[None, :, None] + 0.5 * np.log(var)) * rp.sum(1)[..., None]).sum(-1)
    np.testing.assert_allclose(mean.numpy()[:, 0], mu, rtol=1e-9)
    np.testing.assert_allclose(variance.numpy()[:, 0], var, rtol=1e-6)
    np.testing.assert_allclose(logit.numpy()[:, 0], 0.5 * (beta_a - cost), rtol=1e-6)


def conv_case(seed, grid=(6, 6), inputs=2, parents=3, kernel=3, stride=1, batch=2):
    """Random votes of a convolutional layer in the fast layout [B, P, J, H, N] and the plain
    one [B, P, N, J, H], activations [B, P, N], child_index and windows."""
    index = window_children(grid, inputs, kernel, stride)
    rng = np.random.default_rng(seed)
    # one pose per (child, parent type) plus window-dependent noise: votes that agree in part
    base = rng.normal(size=[batch, grid[0] * grid[1] * inputs, parents, 16])
    votes = base[:, index] + 0.3 * rng.normal(size=[batch, *index.shape, parents, 16])  # [B, P, N, J, H]
    act = rng.uniform(0.1, 1, [batch, grid[0] * grid[1] * inputs])[:, index]
    return votes, act, index, conv_windows(grid, kernel, stride)


def test_fast_em_routing_equals_the_plain_reference_on_overlapping_windows():
    for stride, grid in ((1, (5, 5)), (2, (6, 6))):  # stride 2 on 6x6 leaves the last row and column uncovered
        votes, act, index, windows = conv_case(3, grid=grid, stride=stride)
        beta_u, beta_a = tf.constant([0.1, -0.2, 0.3], tf.float64), tf.constant([50.0, 20.0, -10.0], tf.float64)
        fast = em_routing(tf.constant(np.transpose(votes, [0, 1, 3, 4, 2])), tf.constant(act), beta_u, beta_a, index, 3,
                          **SETTINGS)
        plain = plain_em(tf.constant(votes), tf.constant(act), beta_u, beta_a, windows, 3, **SETTINGS)
        for got, want in zip(fast, plain):
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-8, atol=1e-10)


def test_the_e_step_normalises_each_child_over_every_parent_it_votes_for():
    votes, act, index, _ = conv_case(4, grid=(5, 5), stride=1)
    fast_votes = tf.constant(np.transpose(votes, [0, 1, 3, 4, 2]))
    mean, variance, logit = m_step(fast_votes, tf.square(fast_votes), 1.0, tf.constant(act),
                                   tf.zeros([3], tf.float64), tf.zeros([3], tf.float64), 0.01, 1e-9)
    r = e_step(fast_votes, tf.square(fast_votes), mean, variance, logit, tf.constant(index), 50, True).numpy()
    per_child = np.zeros([2, 50])
    for b in range(2):
        np.add.at(per_child[b], index.ravel(), r[b].sum(1).ravel())  # r [B, P, J, N]: sum over J, then windows
    np.testing.assert_allclose(per_child, 1.0, rtol=1e-10)
    assert np.bincount(index.ravel()).max() == 9  # the centre children sit in 9 windows: the case that matters


def test_em_routing_gradients_match_central_differences_in_float64():
    votes, act, index, _ = conv_case(5, grid=(4, 4), inputs=1, parents=2, batch=1)
    votes = tf.Variable(np.transpose(votes, [0, 1, 3, 4, 2]))
    act = tf.Variable(act)
    beta_u, beta_a = tf.Variable([0.2, -0.1], dtype=tf.float64), tf.Variable([300.0, 100.0], dtype=tf.float64)
    weights = tf.constant(np.random.default_rng(6).normal(size=[1, 4, 2, 16]))

    def loss():
        mu, a = em_routing(votes, act, beta_u, beta_a, index, 3, final_lambda=0.01, lambda_decay=0.95, epsilon=1e-9)
        return tf.reduce_sum(mu * weights) + 10.0 * tf.reduce_sum(a * tf.constant([[[1.0, -2.0]]], tf.float64))

    variables = [votes, act, beta_u, beta_a]
    with tf.GradientTape() as tape:
        value = loss()
    gradients = tape.gradient(value, variables)
    rng = np.random.default_rng(7)
    for variable, gradient in zip(variables, gradients):
        assert np.all(np.isfinite(gradient.numpy()))
        flat = variable.numpy().ravel()
        for position in rng.choice(flat.size, size=min(6, flat.size), replace=False):
            h = 1e-6
            numeric = []
            for sign in (1, -1):
                moved = flat.copy()
                moved[position] += sign * h
                variable.assign(moved.reshape(variable.shape))
                numeric.append(loss().numpy())
            variable.assign(flat.reshape(variable.shape))
            np.testing.assert_allclose(gradient.numpy().ravel()[position], (numeric[0] - numeric[1]) / (2 * h),
                                       rtol=1e-5, atol=1e-7)
