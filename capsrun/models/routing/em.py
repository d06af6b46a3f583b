"""EM routing between matrix capsules (Hinton, Sabour & Frosst 2018, "Matrix capsules with EM
routing", ICLR; Procedure 1), the fast form used by `capsrun.models.em_capsnet`.

Not a `RoutingLayer` of ROUTINGS (those route pose vectors without activations); this module
holds functions on tensors. The plain form, straight from Procedure 1 with loops, is
`capsrun.models.em_reference`; tests check that both give the same numbers.

Shapes (alphabet of this module and of `capsrun.models.em_capsnet`):
    B batch; P parent positions (OH * OW; 1 for the class capsules); J parent capsule types;
    N child slots per parent position: K kernel positions (kh * kw, or every position of the
    child grid for the class capsules) times I child capsule types, n = k * I + i;
    G child capsules (child grid positions times I); H = 16 pose entries (4x4, row-major).

    votes V          [B, P, J, H, N]   V[b, p, j, :, n] is child n's vote for parent (p, j)
    activations a    [B, P, N]         the activation of the child in slot n of window p
    child_index      int [P, N]        which of the G children sits in slot n of window p
    beta_u, beta_a   [J]               learned, one per parent type (shared over positions)
    -> poses mu      [B, P, J, H],  activations a_j [B, P, J]

Procedure 1, with r the iteration (0-based) and R the assignment of a child to a parent:
    R_ij     = 1 / (number of parents child i votes for)               (start)
    M-step:  R'_ij = R_ij a_i
             mu_j^h     = sum_i R'_ij V_ij^h / sum_i R'_ij
             sigma_j^h2 = sum_i R'_ij (V_ij^h - mu_j^h)^2 / sum_i R'_ij  (+ epsilon)
             cost_j^h   = (beta_u + log sigma_j^h) sum_i R'_ij
             a_j        = logistic(lambda_r (beta_a - sum_h cost_j^h))
    E-step:  ln p_ij    = -sum_h (V_ij^h - mu_j^h)^2 / (2 sigma_j^h2) - 1/2 sum_h ln(2 pi sigma_j^h2)
             R_ij       = a_j p_ij / sum_{j' in parents of i} a_j' p_ij'
Iterations alternate M and E steps; the last M-step gives the output (no E-step after it).
The sums over i run over the N slots of parent (p, j): the children in its receptive field.

Inverse temperature: lambda_r = final_lambda * (1 - decay^(r + 1)), final_lambda 0.01,
decay 0.95: the authors' answer on OpenReview (forum HJWLfGWRb), as used by Gritzman's
reimplementation (github.com/IBM/matrix-capsules-with-em-routing, em_routing.py); the paper
says only that lambda is an inverse temperature that grows (a fixed schedule).

Overlapping windows (the E-step normalisation). In a convolutional capsule layer a child at
grid position c votes for every parent position whose window covers c (up to 9 for a 3x3
kernel at stride 1): its R must sum to 1 over ALL those parents and all J types, not over the J
types of each window alone. Here: the log numerators z = ln a_j + ln p_ij [B, P, J, N] are
first log-sum-exp'ed over J ([B, P, N]), then over every slot (p, n) of the same child with
segment operations keyed by `child_index` (`unsorted_segment_max` for the shift,
`unsorted_segment_sum` of the shifted exponentials, both vectorised over batch, windows and
types); the log denominator of each child is gathered back to its slots, R = exp(z - it).
Gritzman's code does the same through a dense "spatial routing matrix"; the initial R is
likewise 1 / (J * windows covering the child). Children covered by no window (the last row
and column of a 14x14 grid under a 3x3 kernel at stride 2) vote for nothing.

Numerics of the fast form. Everything is in the log domain where a density would underflow:
ln p directly (never p), ln a_j = log_sigmoid(.) exactly (no epsilon), log-sum-exp for the
normalisation. The vote tensors are the largest of the network (ConvCaps1 at batch 32:
32 * 36 * 32 * 16 * 288 = 170M numbers), so the M- and E-steps never form (V - mu)^2: with
S0 = sum R', S1 = sum R' V, S2 = sum R' V^2 (batched matmuls of V and V^2 with R'),
sigma^2 = S2 / S0 - mu^2, and sum_h (V - mu)^2 / sigma^2 = V^2 . w - 2 V . (mu w) + mu^2 . w
with w = 1 / sigma^2 (matmuls again). To keep the cancellation in these differences small the
votes are first centred per parent, V - m with m their plain mean over the N slots (mu shifts
by m, sigma and p do not change; m is added back to the output poses).
"""
from typing import Callable, Sequence, Tuple

import numpy as np
import tensorflow as tf

LN_2PI = float(np.log(2.0 * np.pi))


def inverse_temperatures(iterations: int, final_lambda: float, decay: float) -> list:
    """lambda_r = final_lambda * (1 - decay^(r + 1)) for r = 0 .. iterations - 1 (module docstring)."""
    return [final_lambda * (1.0 - decay ** (r + 1)) for r in range(iterations)]


def window_children(grid: Tuple[int, int], types: int, kernel: int, stride: int) -> np.ndarray:
    """child_index int32 [P, N] of a 'valid' convolutional capsule layer on a child grid
    (rows, cols) with `types` capsule types: the child (row * cols + col) * types + i in slot
    n = (dy * kernel + dx) * types + i of window p = oy * OW + ox, row = oy * stride + dy,
    col = ox * stride + dx. The class layer is kernel = the whole grid (P = 1)."""
    rows, cols = grid
    out_rows, out_cols = (rows - kernel) // stride + 1, (cols - kernel) // stride + 1
    oy, ox, dy, dx, i = np.meshgrid(np.arange(out_rows), np.arange(out_cols), np.arange(kernel), np.arange(kernel),
                                    np.arange(types), indexing="ij")
    child = ((oy * stride + dy) * cols + (ox * stride + dx)) * types + i
    return child.reshape(out_rows * out_cols, kernel * kernel * types).astype(np.int32)


def initial_assignments(child_index: np.ndarray, num_parent_types: int) -> np.ndarray:
    """R at the start [P, N]: 1 / (J * windows covering the child of each slot)."""
    counts = np.bincount(child_index.ravel())
    return (1.0 / (num_parent_types * counts[child_index])).astype(np.float64)


def m_step(votes: tf.Tensor, squares: tf.Tensor, assignments: tf.Tensor, activations: tf.Tensor,
           beta_u: tf.Tensor, beta_a: tf.Tensor, inverse_temperature: float,
           epsilon: float) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """One M-step. votes V and squares V^2 [B, P, J, H, N] (centred), assignments R [B, P, J, N]
    (or broadcastable), activations a [B, P, N]. Returns mu [B, P, J, H], sigma^2 [B, P, J, H]
    and the logit lambda (beta_a - sum_h cost^h) of a_j [B, P, J]."""
    weighted = assignments * activations[:, :, None, :]  # R' [B, P, J, N]
    total = tf.reduce_sum(weighted, axis=-1)  # S0 [B, P, J]
    scale = 1.0 / (total + epsilon)
    column = weighted[..., None]  # [B, P, J, N, 1]
    mean = tf.squeeze(tf.matmul(votes, column), -1) * scale[..., None]  # S1 / S0 [B, P, J, H]
    second = tf.squeeze(tf.matmul(squares, column), -1) * scale[..., None]  # S2 / S0
    variance = tf.nn.relu(second - tf.square(mean)) + epsilon
    cost = (beta_u[:, None] + 0.5 * tf.math.log(variance)) * total[..., None]  # [B, P, J, H]
    logit = inverse_temperature * (beta_a - tf.reduce_sum(cost, axis=-1))
    return mean, variance, logit


def e_step(votes: tf.Tensor, squares: tf.Tensor, mean: tf.Tensor, variance: tf.Tensor, logit: tf.Tensor,
           child_index: tf.Tensor, num_children: int, overlapping: bool) -> tf.Tensor:
    """One E-step: the new R [B, P, J, N] from votes / squares [B, P, J, H, N], mu and sigma^2
    [B, P, J, H] and the activation logits [B, P, J]; each child's R sums to 1 over every parent
    it votes for (see the module docstring). `overlapping` False (every child in one window, as
    in the class layer) skips the segment sums."""
    precision = 1.0 / variance  # w [B, P, J, H]
    quadratic = tf.squeeze(tf.matmul(squares, precision[..., None], transpose_a=True), -1)  # V^2 . w [B, P, J, N]
    linear = tf.squeeze(tf.matmul(votes, (mean * precision)[..., None], transpose_a=True), -1)  # V . mu w
    constant = tf.reduce_sum(tf.square(mean) * precision + tf.math.log(variance) + LN_2PI, axis=-1)  # [B, P, J]
    log_p = -0.5 * (quadratic - 2.0 * linear + constant[..., None])
    z = tf.math.log_sigmoid(logit)[..., None] + log_p  # ln a_j + ln p_ij [B, P, J, N]
    per_window = tf.reduce_logsumexp(z, axis=2)  # [B, P, N]
    if not overlapping:
        return tf.exp(z - per_window[:, :, None, :])
    batch = tf.shape(z)[0]
    ids = tf.reshape(child_index, [-1])  # [P * N]
    flat = tf.transpose(tf.reshape(per_window, [batch, -1]))  # [P * N, B]
    shift = tf.stop_gradient(tf.math.unsorted_segment_max(flat, ids, num_children))  # [G, B]
    shifted = tf.exp(flat - tf.gather(shift, ids))
    log_total = tf.math.log(tf.math.unsorted_segment_sum(shifted, ids, num_children)) + shift  # [G, B]
    denominator = tf.reshape(tf.transpose(tf.gather(log_total, ids)), tf.shape(per_window))  # [B, P, N]
    return tf.exp(z - denominator[:, :, None, :])


def em_routing(votes: tf.Tensor, activations: tf.Tensor, beta_u: tf.Tensor, beta_a: tf.Tensor,
               child_index: np.ndarray, iterations: int, final_lambda: float, lambda_decay: float,
               epsilon: float) -> Tuple[tf.Tensor, tf.Tensor]:
    """EM routing (module docstring): votes V [B, P, J, H, N], activations a [B, P, N],
    beta_u / beta_a [J], child_index int [P, N] -> poses mu [B, P, J, H], activations a_j
    [B, P, J]. Computed in the votes' dtype; the gradient flows through every iteration (the
    authors: "we do not use stop gradient")."""
    dtype = votes.dtype
    num_types = int(votes.shape[2])
    num_children = int(child_index.max()) + 1
    overlapping = bool(np.bincount(child_index.ravel()).max() > 1)
    centre = tf.reduce_mean(votes, axis=-1)  # m [B, P, J, H]
    centred = votes - centre[..., None]
    squares = tf.square(centred)
    assignments = tf.constant(initial_assignments(child_index, num_types)[:, None, :], dtype)  # [P, 1, N]
    beta_u, beta_a = tf.cast(beta_u, dtype), tf.cast(beta_a, dtype)
    ids = tf.constant(child_index)
    for r, inverse_temperature in enumerate(inverse_temperatures(iterations, final_lambda, lambda_decay)):
        mean, variance, logit = m_step(centred, squares, assignments, activations, beta_u, beta_a,
                                       inverse_temperature, epsilon)
        if r < iterations - 1:
            assignments = e_step(centred, squares, mean, variance, logit, ids, num_children, overlapping)
    return mean + centre, tf.sigmoid(logit)


def routed_in_chunks(layer_fn: Callable[..., Tuple[tf.Tensor, tf.Tensor]], poses: tf.Tensor, activations: tf.Tensor,
                     parameters: Sequence[tf.Tensor], chunk: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """`layer_fn(poses, activations, *parameters)` (votes and EM routing of one capsule layer)
    computed `chunk` examples at a time, with a gradient that recomputes each chunk instead of
    keeping the routing's intermediates.

    poses [B, P, N, 16] (the child poses of every window), activations [B, P, N], parameters
    (W, beta_u, beta_a: tensors, not variables) -> poses mu [B, P, J, 16], activations [B, P, J].

    Why. Backpropagation through the unrolled EM iterations keeps about a dozen votes-sized
    tensors per layer alive until the backward pass (V, V^2, their products with R' and w, the
    per-iteration gradients summed by AddN). For ConvCaps1 at batch 32 one of them is 170M
    numbers (module docstring): 12.9 GiB and 43 s per training step were measured on the 2-core
    development machine (2026-12-02) with plain autodiff. Routing is independent per example, so
    the batch can be cut into chunks: the forward pass keeps only the outputs; the backward pass
    reruns one chunk at a time under a GradientTape and takes its vector-Jacobian product at once
    (the chunk's input gradients are concatenated, the parameters' summed). Peak memory is then
    that of one chunk's autodiff, for one extra forward pass (2.0 GiB for the whole training step
    at batch 32 in chunks of 4, 3.3 GiB in chunks of 8, measured as above on 2026-12-03). The
    numbers are those of plain autodiff up to summation order (tests/unit/models/test_em_capsnet.py).
    The last chunk may be smaller (B need not be a multiple of `chunk`); the loop runs one chunk
    at a time (parallel_iterations=1), else a graph would run several together and keep their
    memory."""
    parameters = [tf.convert_to_tensor(p) for p in parameters]

    @tf.custom_gradient
    def layer(poses, activations, *parameters):
        frozen = [tf.stop_gradient(t) for t in parameters]  # no tape may keep the forward's intermediates
        outputs, _ = _over_chunks(lambda p, a: (list(layer_fn(p, a, *frozen)), []),
                                  [tf.stop_gradient(poses), tf.stop_gradient(activations)], [], chunk,
                                  [poses.dtype, poses.dtype])

        def gradient(d_poses, d_activations):
            upstream = [tf.zeros_like(t) if d is None else d for t, d in zip(outputs, (d_poses, d_activations))]

            def vjp(p, a, d_mu, d_a):
                own = [tf.identity(t) for t in parameters]  # this chunk's copies, watched by its tape
                with tf.GradientTape() as tape:
                    tape.watch([p, a, *own])
                    mu, act = layer_fn(p, a, *own)
                grads = tape.gradient([mu, act], [p, a, *own], output_gradients=[d_mu, d_a])
                return grads[:2], grads[2:]

            (d_p, d_a), d_parameters = _over_chunks(vjp, [poses, activations, *upstream], parameters, chunk,
                                                    [poses.dtype, activations.dtype])
            return [d_p, d_a, *d_parameters]

        return outputs, gradient

    return tuple(layer(poses, activations, *parameters))


def _over_chunks(body: Callable, batched: Sequence[tf.Tensor], summed_like: Sequence[tf.Tensor], chunk: int,
                 dtypes: Sequence[tf.DType]) -> Tuple[list, list]:
    """Runs body(*chunk of each batched tensor) -> (per-example outputs of `dtypes`, outputs to
    sum over chunks, shaped like `summed_like`) over the batch (dimension 0 of `batched`),
    `chunk` examples at a time, one chunk after the other; returns the per-example outputs
    concatenated and the others summed. One call when the batch is known to fit in one chunk."""
    static_batch = batched[0].shape[0]
    if static_batch is not None and static_batch <= chunk:
        pieces, totals = body(*batched)
        return list(pieces), list(totals)
    batch = tf.shape(batched[0])[0]
    count = (batch + chunk - 1) // chunk
    shapes = []  # the per-example outputs' static shapes past the batch dimension, seen by the body

    def step(i, arrays, sums):
        start = i * chunk
        stop = tf.minimum(start + chunk, batch)
        pieces, totals = body(*[t[start:stop] for t in batched])
        shapes[:] = [piece.shape[1:] for piece in pieces]
        arrays = [array.write(i, piece) for array, piece in zip(arrays, pieces)]
        return i + 1, arrays, [s + t for s, t in zip(sums, totals)]

    arrays = [tf.TensorArray(dtype, size=count, infer_shape=False) for dtype in dtypes]
    sums = [tf.zeros_like(t) for t in summed_like]
    _, arrays, sums = tf.while_loop(lambda i, *_: i < count, step, [tf.constant(0), arrays, sums],
                                    parallel_iterations=1)
    outputs = [array.concat() for array in arrays]
    for output, shape in zip(outputs, shapes):
        output.set_shape(tf.TensorShape([static_batch]).concatenate(shape))
    return outputs, sums
