"""Matmul FLOPs of a T5 v1.1 training step written out by hand, for the benchmark's tests."""
from synth_jax.benchmark import runner

RANK = 8  # factorized_random's default rank
RELPOS_BUCKETS = 32  # layers.RelativePositionBiases' default


def closed_form_training_flops(attention_type, batch, inputs, targets, d_model, heads, head_dim,
                               d_ff, vocab, encoder_layers, decoder_layers):
  """Matmul FLOPs of a T5 v1.1 training step, written out for a few single attention types.

  Every matmul costs 3x its forward FLOPs in training (forward, dX, dW), except orthogonal's
  frozen W_Q / W_K, whose dW is never computed (2x). Score maps are as long as the features.
  """
  hd = heads * head_dim

  def projection(length, width=hd):  # [length, d_model] x [d_model, width], forward
    return 2 * batch * length * d_model * width

  def scores(q_len, k_len):  # q.k^T or probabilities.v, forward
    return 2 * batch * heads * q_len * k_len * head_dim

  def self_attention(length):
    shared = 3 * (projection(length) * 2 + scores(length, length))  # value, out; probs.value
    if attention_type == 'vanilla':
      return shared + 3 * (projection(length) * 2 + scores(length, length))
    if attention_type == 'orthogonal':
      return shared + 2 * projection(length) * 2 + 3 * scores(length, length)
    if attention_type == 'dense':  # W1 [d_model, hd], W2 [hd, max_key] per head
      return shared + 3 * (projection(length) + 2 * batch * length * hd * length)
    if attention_type == 'factorized_random':  # R1 R2^T once per step, whatever the batch
      return shared + 3 * 2 * heads * length * length * RANK
    assert attention_type == 'random'
    return shared  # logits are rows of R, read, not multiplied

  cross = 3 * (2 * projection(targets) + 2 * projection(inputs) + 2 * scores(targets, inputs))
  mlp = lambda length: 3 * 3 * 2 * batch * length * d_model * d_ff  # wi_0, wi_1, wo
  logits = 3 * 2 * batch * targets * d_model * vocab
  # Relative-position bias per stack: table . one_hot, forward and the table's gradient only.
  relpos = 2 * 2 * heads * RELPOS_BUCKETS * (inputs ** 2 + targets ** 2)
  return relpos + (encoder_layers * (self_attention(inputs) + mlp(inputs))
                   + decoder_layers * (self_attention(targets) + cross + mlp(targets)) + logits)


def closed_form(attention_type, preset):
  shapes, model = runner.PRESETS[preset], runner.model_arguments(preset)
  return closed_form_training_flops(
      attention_type, shapes['batch_size'], shapes['inputs_length'], shapes['targets_length'],
      model['emb_dim'], model['num_heads'], model['head_dim'], model['mlp_dim'],
      model['vocab_size'], model['num_encoder_layers'], model['num_decoder_layers'])
