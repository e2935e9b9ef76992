"""Plain NumPy (float64) references of each variant's paper equation, for the tests."""
import numpy as np


def softmax(logits):
  shifted = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(shifted)
  return e / e.sum(axis=-1, keepdims=True)


def kernel3(kernel, heads):
  """A stored 2-D `[embed, heads*dim]` kernel as `[embed, heads, dim]`."""
  kernel = np.asarray(kernel, np.float64)
  return kernel.reshape(kernel.shape[0], heads, -1)


def project(x, kernel, heads):
  """`[b, l, e]` x `[e, heads*dim]` -> `[b, l, heads, dim]`."""
  return np.einsum('ble,ehd->blhd', x, kernel3(kernel, heads))


def probabilities(logits, mask=None, bias=None):
  """softmax over keys of logits + bias with masked entries excluded."""
  logits = np.asarray(logits, np.float64)
  if bias is not None:
    logits = logits + bias
  if mask is not None:
    logits = np.where(np.asarray(mask) > 0, logits, -np.inf)
  return softmax(logits)


def output(params, probs, x_kv, heads):
  """Y = (P V) W_out with V = x_kv W_V: `[b, q, e]`."""
  value = project(x_kv, params['value']['kernel'], heads)
  mixed = np.einsum('bhqk,bkhd->bqhd', probs, value)
  b, q = mixed.shape[:2]
  return mixed.reshape(b, q, -1) @ np.asarray(params['out']['kernel'], np.float64)


def vanilla_logits(params, x_q, x_kv, heads):
  q = project(x_q, params['query']['kernel'], heads)
  k = project(x_kv, params['key']['kernel'], heads)
  return np.einsum('bqhd,bkhd->bhqk', q, k)


def dense_logits(params, x_q, k_len, heads):
  """B_i = W2 relu(W1 x_i), sliced to k_len."""
  hidden = np.maximum(project(x_q, params['dense_1']['kernel'], heads), 0.0)
  w2 = np.asarray(params['dense_2'], np.float64)
  return np.einsum('bqhd,hdk->bhqk', hidden, w2)[..., :k_len]


def factorized_dense_logits(params, x_q, k_len, heads):
  """C = H_A(A) * H_B(B): A tiled b times, each entry of B repeated a times."""
  a_vec = project(x_q, params['factor_a']['kernel'], heads)  # [b, q, h, a]
  b_vec = project(x_q, params['factor_b']['kernel'], heads)  # [b, q, h, b]
  tiled = np.tile(a_vec, (1, 1, 1, b_vec.shape[-1]))
  repeated = np.repeat(b_vec, a_vec.shape[-1], axis=-1)
  return np.transpose(tiled * repeated, (0, 2, 1, 3))[..., :k_len]


def random_logits(table, q_len, k_len):
  return np.asarray(table, np.float64)[None, :, :q_len, :k_len]


def factorized_random_logits(params, q_len, k_len):
  r1 = np.asarray(params['query_factor'], np.float64)[:, :q_len]
  r2 = np.asarray(params['key_factor'], np.float64)[:, :k_len]
  return np.einsum('hqr,hkr->hqk', r1, r2)[None]


def orthogonal_logits(frozen, x_q, x_kv):
  wq = np.asarray(frozen['query'], np.float64)
  wk = np.asarray(frozen['key'], np.float64)
  q = np.einsum('ble,ehd->blhd', x_q, wq)
  k = np.einsum('ble,ehd->blhd', x_kv, wk)
  return np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(wq.shape[-1])


def cosine_logits(params, x_q, x_kv, heads):
  """s_h cos(q, k), s_h = exp(min(log_scale_h, log 100))."""
  q = project(x_q, params['query']['kernel'], heads)
  k = project(x_kv, params['key']['kernel'], heads)
  q = q / np.linalg.norm(q, axis=-1, keepdims=True)
  k = k / np.linalg.norm(k, axis=-1, keepdims=True)
  scale = np.exp(np.minimum(np.asarray(params['logit_scale'], np.float64), np.log(100.0)))
  return np.einsum('bqhd,bkhd->bhqk', q, k) * scale[None, :, None, None]


def neg_l2_logits(params, x_q, x_kv, heads):
  """-|q - k|^2 / (2 sqrt(d)), from the difference itself."""
  q = project(x_q, params['query']['kernel'], heads)
  k = project(x_kv, params['key']['kernel'], heads)
  diff = q[:, :, None] - k[:, None, :]  # [b, q, k, h, d]
  return -np.transpose(np.sum(diff ** 2, -1), (0, 3, 1, 2)) / (2 * np.sqrt(q.shape[-1]))


def softplus(x):
  return np.log1p(np.exp(x))


def mobius_add(x, y, c):
  """x (+)_c y on the Poincare ball of curvature -c (Ganea et al. 2018, eq. 3)."""
  xy = np.sum(x * y, -1, keepdims=True)
  xx = np.sum(x * x, -1, keepdims=True)
  yy = np.sum(y * y, -1, keepdims=True)
  return ((1 + 2 * c * xy + c * yy) * x + (1 - c * xx) * y) / (1 + 2 * c * xy + c ** 2 * xx * yy)


def hyperbolic_logits(params, x_q, x_kv, heads):
  """-d_c(exp_0(q), exp_0(k)) / tau with d_c = 2/sqrt(c) artanh(sqrt(c) |(-x) (+)_c y|)."""
  c = softplus(np.asarray(params['curvature'], np.float64)) + 1e-6
  tau = softplus(np.asarray(params['temperature'], np.float64)) + 1e-6
  q = project(x_q, params['query']['kernel'], heads)
  k = project(x_kv, params['key']['kernel'], heads)
  ch = c[None, None, :, None]

  def exp0(v):
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return np.tanh(np.sqrt(ch) * norm) * v / (np.sqrt(ch) * norm)

  x, y = exp0(q)[:, :, None], exp0(k)[:, None, :]  # [b, q, 1, h, d], [b, 1, k, h, d]
  c5 = c[None, None, None, :, None]
  gap = np.linalg.norm(mobius_add(-x, y, c5), axis=-1)  # [b, q, k, h]
  distance = 2 / np.sqrt(c) * np.arctanh(np.sqrt(c) * gap)
  return -np.transpose(distance / tau, (0, 3, 1, 2))


def rotate(x, positions, base=10000.0):
  """RoPE on `[b, l, h, d]`: pairs (i, i + d/2) rotated by position * base^(-2i/d)."""
  half = x.shape[-1] // 2
  angle = positions[:, None] * base ** (-np.arange(half) / half)  # [l, half]
  cos, sin = np.cos(angle)[None, :, None], np.sin(angle)[None, :, None]
  a, b = x[..., :half], x[..., half:]
  return np.concatenate([a * cos - b * sin, b * cos + a * sin], -1)


def rotary_logits(params, x_q, x_kv, heads):
  q = rotate(project(x_q, params['query']['kernel'], heads), np.arange(x_q.shape[1]))
  k = rotate(project(x_kv, params['key']['kernel'], heads), np.arange(x_kv.shape[1]))
  return np.einsum('bqhd,bkhd->bhqk', q, k)


def topk_logits(params, x_q, x_kv, heads, mask, top_k):
  """q.k where k is among the top_k visible keys by q.k (ties: lower index), else -inf."""
  logits = vanilla_logits(params, x_q, x_kv, heads)
  visible = np.broadcast_to(np.asarray(mask) > 0, logits.shape)
  kept = np.zeros(logits.shape, bool)
  for index in np.ndindex(*logits.shape[:3]):
    order = sorted(range(logits.shape[-1]),
                   key=lambda j: (not visible[index][j], -logits[index][j], j))
    kept[index][order[:top_k]] = True
  return np.where(kept, logits, -np.inf)


def linear_features(x, frozen):
  """phi(x) `[b, l, h, m]`: FAVOR+ exp(W x' - |x'|^2 / 2) / sqrt(m), x' = x / d^(1/4), when
  `frozen` holds the random features W `[h, m, d]`; else elu(x) + 1."""
  if 'random_features' not in frozen:
    return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))
  w = np.asarray(frozen['random_features'], np.float64)
  x = x / x.shape[-1] ** 0.25
  projected = np.einsum('blhd,hmd->blhm', x, w)
  return np.exp(projected - 0.5 * np.sum(x ** 2, -1, keepdims=True)) / np.sqrt(w.shape[1])


def linear_logits(params, frozen, x_q, x_kv, heads):
  """log(phi(q) . phi(k)): their softmax is the normalized kernel, computed quadratically."""
  q = linear_features(project(x_q, params['query']['kernel'], heads), frozen)
  k = linear_features(project(x_kv, params['key']['kernel'], heads), frozen)
  return np.log(np.einsum('bqhm,bkhm->bhqk', q, k))


# Variants whose logits read their trainable query/key projections of both inputs.
PROJECTED_LOGITS = {'vanilla': vanilla_logits, 'cosine': cosine_logits, 'neg_l2': neg_l2_logits,
                    'hyperbolic': hyperbolic_logits, 'rotary': rotary_logits}

# Variants that do without the T5 relative-position bias.
NO_POSITION_BIAS = ('rotary', 'linear')


def member_probabilities(name, params, frozen, x_q, x_kv, heads, mask, bias, top_k=8):
  """Attention probabilities of a single (non-mixture) variant."""
  q_len, k_len = x_q.shape[1], x_kv.shape[1]
  if name in PROJECTED_LOGITS:
    logits = PROJECTED_LOGITS[name](params, x_q, x_kv, heads)
  elif name == 'dense':
    logits = dense_logits(params, x_q, k_len, heads)
  elif name == 'factorized_dense':
    logits = factorized_dense_logits(params, x_q, k_len, heads)
  elif name in ('random', 'fixed_random'):
    table = (params if name == 'random' else frozen)['random_logits']
    logits = random_logits(table, q_len, k_len)
  elif name == 'factorized_random':
    logits = factorized_random_logits(params, q_len, k_len)
  elif name in ('orthogonal', 'frozen_gaussian'):
    logits = orthogonal_logits(frozen, x_q, x_kv)
  elif name == 'linear':
    logits = linear_logits(params, frozen, x_q, x_kv, heads)
  elif name == 'topk':
    logits = topk_logits(params, x_q, x_kv, heads, mask, top_k)
  else:
    raise ValueError(name)
  return probabilities(logits, mask, None if name in NO_POSITION_BIAS else bias)


def attention(name, variables, x_q, x_kv, heads, mask=None, bias=None):
  """The reference output `[b, q, e]` of registry type `name` given its Flax variables."""
  params = variables['params']
  frozen = variables.get('frozen', {})
  x_q, x_kv = np.asarray(x_q, np.float64), np.asarray(x_kv, np.float64)
  members = name.split('+')
  if len(members) == 1:
    probs = member_probabilities(name, params, frozen, x_q, x_kv, heads, mask, bias)
  else:
    weights = softmax(np.asarray(params['mixture_logits'], np.float64))
    probs = sum(w * member_probabilities(m, params.get(m, {}), frozen.get(m, {}), x_q, x_kv, heads, mask,
                                         bias)
                for w, m in zip(weights, members))
  return output(params, probs, x_kv, heads)
