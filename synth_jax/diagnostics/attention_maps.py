"""`synth-jax attention-maps`: per-layer, per-head attention maps of a trained T5 run, as PNG.

  synth-jax attention-maps --gin.MODEL_DIR="'/tmp/synth_jax_demo'" --out /tmp/maps
  synth-jax attention-maps --gin_file=configs/demo.gin --gin.MODEL_DIR="'/tmp/demo'" \
      --out /tmp/maps --examples 2 --max_length 64

The run is described as `synth-jax eval` reads it: the run's own `MODEL_DIR/config.gin` (saved
when it started training), under any --gin_file and with `--gin.NAME=VALUE` on top. The model
is the gin-bound `synth_jax.network.Transformer`; its parameters come from the latest checkpoint
of MODEL_DIR (or `--step`), read straight from the checkpoint (params and frozen variables only,
whatever the optimizer); the examples are the first `--examples` of the run's eval split,
unpacked (one example per row) and cut to `--max_length` tokens per feature.

How the maps are captured: `attention/capture.py` (the one capture path, also the diagnostics'):
the network runs once, forward, and every attention call's probabilities are computed by the
module itself with the call's arguments, on the reference path. Each map is checked when
captured: every valid query's row sums to 1.

Writes to `--out`:
  `{encoder_self,decoder_self,cross}_layer{i}.png`: one figure per layer and stack, a grid of
    examples (rows) x heads (columns), each map cropped to the example's tokens (queries down,
    keys across; both axes labelled with their side's decoded tokens, for cross-attention
    decoder queries and encoder keys; past MAX_LABELLED_TOKENS positions every n-th position is
    labelled, as `token@position`), one shared colour scale; the title of a position-only
    variant (`position_only`) says that its map is the same for every example;
  `maps.json`: the run (model dir, step, task, split, lengths, attention types), the examples'
    text, per layer `position_only` and `statistics.attention_statistics` of its maps (entropy,
    normalized entropy, head similarity; over the examples' valid queries and visible keys), and
    `statistics.projection_spectra` of the checkpoint.
"""
import json
import os
import sys
from typing import Any, Optional, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np

from synth_jax import attention
from synth_jax import checkpoints
from synth_jax import decoding
from synth_jax import gin_flags
from synth_jax import quiet_tensorflow
from synth_jax.attention import capture
from synth_jax.attention import core
from synth_jax.diagnostics import flags
from synth_jax.diagnostics import statistics

# The T5 network's attention modules: (stack, module name) -> the stack's label in file names.
STACKS = {('encoder', 'attention'): 'encoder_self', ('decoder', 'self_attention'): 'decoder_self',
          ('decoder', 'encoder_decoder_attention'): 'cross'}
# At most this many labels per axis: longer axes label every n-th position (token@position).
MAX_LABELLED_TOKENS = 48
POSITION_ONLY = 'position-only: the same map for every example'


def capture_probabilities(model: nn.Module, variables, **inputs) -> list[dict[str, Any]]:
  """Runs `model.apply(variables, **inputs)` once; every attention call's maps, in order, as
  `capture.checked` entries (`path`, `probabilities`, `visible`, `query_valid`, NumPy)."""
  return [capture.checked(entry) for entry in capture.capture(model, variables, **inputs)]


def restore_variables(model: nn.Module, model_dir: str, example_inputs: dict,
                      step: Optional[int] = None) -> tuple[dict, int]:
  """(`{'params', 'frozen'}` of the checkpoint at `step` (default: latest), the step), read onto
  one device by `checkpoints.read_variables` after checking their shapes against `model`'s."""
  one_row = jax.tree.map(lambda x: x[:1], example_inputs)
  expected = jax.eval_shape(lambda: nn.unbox(model.init(
      jax.random.key(0), **one_row, enable_dropout=False)))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = {collection: jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), expected[collection])
              for collection in ('params', core.FROZEN) if collection in expected}
  return checkpoints.read_variables(model_dir, abstract, step, command='attention-maps')


def _label(stack_and_name: tuple[str, ...]) -> tuple[str, Optional[int]]:
  """`('encoder', 'layers_1', 'attention')` -> `('encoder_self', 1)`; other paths joined by '_'."""
  if len(stack_and_name) == 3 and (stack_and_name[0], stack_and_name[2]) in STACKS:
    layer = stack_and_name[1]
    if layer.startswith('layers_') and layer[len('layers_'):].isdigit():
      return STACKS[stack_and_name[0], stack_and_name[2]], int(layer[len('layers_'):])
  return '_'.join(stack_and_name), None


def _token_labels(vocabulary, tokens: np.ndarray) -> list[str]:
  """A short readable label per token id (0: the decoder's start token; sentinels by name)."""
  labels = []
  for token in (int(t) for t in tokens):
    if token == 0:
      labels.append('<s>')
    elif token == vocabulary.eos_id:
      labels.append('</s>')
    else:
      text = decoding.render(vocabulary, [token]).replace('<extra_id_', '<X') or f'#{token}'
      labels.append(text.replace(' ', '\u2423').replace('$', r'\$').replace('\n', r'\n'))
  return labels


def position_only(attention_type: str) -> bool:
  """Whether `attention_type`'s maps ignore the input tokens: every member reads a table at the
  token positions (random, fixed_random, factorized_random), so every example has one map, cut
  to its length. A mixture with any token-dependent member (`random+vanilla`) is not."""
  return all(attention.is_position_dependent(m) for m in attention.facts(attention_type).members)


def thinned_ticks(labels: Sequence[str], size: int,
                  cap: int = MAX_LABELLED_TOKENS) -> tuple[list[int], list[str]]:
  """(positions, texts) of the tick labels of an axis of `size` positions: every token when
  `size <= cap`, else every n-th position from the first (at most `cap`), as `token@position`."""
  if size <= cap:
    return list(range(size)), list(labels[:size])
  stride = -(-size // cap)
  positions = list(range(0, size, stride))
  return positions, [f'{labels[i]}@{i}' for i in positions]


def draw(path: str, title: str, maps: Sequence[Sequence[np.ndarray]],
         query_labels: Sequence[Optional[list[str]]], key_labels: Sequence[Optional[list[str]]],
         axis_names: tuple[str, str] = ('query', 'key')):
  """One PNG: `maps[example][head]` (cropped `[q, k]` masked arrays: masked = keys the query
  may not see, drawn grey) as a grid, one colour scale, each panel's queries labelled with
  `query_labels[example]` and keys with `key_labels[example]` (`thinned_ticks`), the axes
  named `axis_names`; returns the Figure."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top  (Agg, no pyplot)
  colours = matplotlib.colormaps['viridis'].with_extremes(bad='0.85')
  rows, cols = len(maps), len(maps[0])
  # Panels grow with the length so token labels stay legible (inches).
  side = min(max(0.1 * max(max(m.shape) for row in maps for m in row), 2.4), 6.0)
  fig = Figure(figsize=(side * cols + 1.2, side * rows + 0.8), layout='constrained')
  axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
  top = max((float(m.max()) for row in maps for m in row if m.count()), default=1.0)
  image = None
  for b, row in enumerate(maps):
    for h, panel in enumerate(row):
      ax = axes[b, h]
      image = ax.imshow(panel, vmin=0.0, vmax=top, cmap=colours, aspect='auto',
                        interpolation='nearest')
      for axis, labels, size, rotation in ((ax.yaxis, query_labels[b], panel.shape[0], 0),
                                           (ax.xaxis, key_labels[b], panel.shape[1], 90)):
        if labels is not None:
          axis.set_ticks(*thinned_ticks(labels, size), fontsize=6, rotation=rotation)
      if b == 0:
        ax.set_title(f'head {h}', fontsize=9)
      if h == 0:
        ax.set_ylabel(f'example {b}\n{axis_names[0]}', fontsize=8)
      if b == rows - 1:
        ax.set_xlabel(axis_names[1], fontsize=8)
  fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label='attention probability')
  fig.suptitle(title, fontsize=10)
  fig.savefig(path, dpi=110)
  return fig


def _run_from_gin(max_length: int, split: Optional[str]) -> dict[str, Any]:
  """The gin-bound model and what `synth_jax.train.train` is bound to read: model dir, task,
  feature lengths (cut to `max_length`) and eval split (`split` wins)."""
  def bound(name, *default):
    return gin_flags.train_binding(name, *default, command='attention-maps')
  model_dir = bound('model_dir', None)
  if not model_dir:
    raise SystemExit('MODEL_DIR is not set: pass --gin.MODEL_DIR="\'/path/to/run\'".')
  lengths = dict(bound('task_feature_lengths'))
  return {'model': gin.get_configurable('synth_jax.network.Transformer')(),
          'model_dir': model_dir, 'task': bound('mixture_or_task_name'),
          'lengths': {k: min(int(v), max_length) for k, v in lengths.items()},
          'split': split or bound('eval_split', 'validation')}


def draw_layer(entry: dict[str, Any], batch: dict[str, np.ndarray], vocabulary,
               attention_types: dict[str, str], step: int, out: str) -> dict[str, Any]:
  """Draws one captured layer (`capture_probabilities` entry) of a T5 batch; returns its
  `maps.json` entry: where it is, its PNG, `position_only` and
  `statistics.attention_statistics`."""
  stack, layer = _label(entry['path'])
  query_side, key_side = {'encoder_self': ('encoder', 'encoder'),
                          'cross': ('decoder', 'encoder')}.get(stack, ('decoder', 'decoder'))
  # Queries and keys by side: the tokens at each position, and each row's unpadded length.
  tokens = {'encoder': batch['encoder_input_tokens'], 'decoder': batch['decoder_input_tokens']}
  lengths = {'encoder': (batch['encoder_input_tokens'] > 0).sum(1),
             'decoder': (batch['decoder_target_tokens'] > 0).sum(1)}
  p = entry['probabilities']
  hidden = ~np.broadcast_to(entry['visible'], p.shape)
  crop = lambda x, b, h: x[b, h, :lengths[query_side][b], :lengths[key_side][b]]
  maps = [[np.ma.masked_array(crop(p, b, h), crop(hidden, b, h)) for h in range(p.shape[1])]
          for b in range(p.shape[0])]
  name = f'{stack}_layer{layer}.png' if layer is not None else f'{stack}.png'
  attention_type = attention_types.get(stack, '?')
  fixed = stack in attention_types and position_only(attention_type)
  kind = f'{attention_type}, {POSITION_ONLY}' if fixed else attention_type
  draw(os.path.join(out, name), f'{stack} layer {layer} ({kind}), step {step}', maps,
       [_token_labels(vocabulary, row) for row in tokens[query_side]],
       [_token_labels(vocabulary, row) for row in tokens[key_side]],
       (f'{query_side} query', f'{key_side} key'))
  return {'module': '/'.join(entry['path']), 'stack': stack, 'layer': layer,
          'attention': attention_type, 'position_only': fixed, 'png': name,
          'shape': list(p.shape),
          **statistics.attention_statistics(p, entry['query_valid'], entry['visible'])}


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`synth-jax attention-maps` with `argv` the arguments after the command; returns 0."""
  argv = list(sys.argv[1:] if argv is None else argv)
  bindings, argv = gin_flags.split(argv)
  parser = flags.attention_maps()
  args = parser.parse_args(argv)
  if not args.gin_file and not gin_flags.names_model_dir(bindings):
    parser.error('give the run\'s --gin.MODEL_DIR (its config.gin is read), or its gin files.')
  if args.examples < 1 or args.max_length < 1:
    parser.error('--examples and --max_length must be at least 1.')
  quiet_tensorflow.load()  # after the flags: help and flag errors come without it
  import seqio  # pylint: disable=g-import-not-at-top
  from synth_jax import data  # pylint: disable=g-import-not-at-top
  if args.tfds_data_dir:
    seqio.set_tfds_data_dir_override(args.tfds_data_dir)
  gin_flags.parse_run_config(args.gin_file, bindings, args.gin_search_paths)
  run = _run_from_gin(args.max_length, args.split)
  model, task, split = run['model'], run['task'], run['split']

  dataset = data.Dataset(task, run['lengths'], args.examples, pack=False)
  batch = next(dataset.eval_batches(split, 1), None)
  if batch is None:
    raise SystemExit(f'{task} split {split!r} has fewer than {args.examples} examples; lower '
                     '--examples or pick another --split.')
  inputs = {k: batch[k] for k in ('encoder_input_tokens', 'decoder_input_tokens',
                                  'decoder_target_tokens')}
  variables, step = restore_variables(model, run['model_dir'], inputs, args.step)
  captured = capture_probabilities(model, variables, **inputs, enable_dropout=False)

  config = model.config
  vocabulary = seqio.get_mixture_or_task(task).output_features['targets'].vocabulary
  attention_types = {'encoder_self': config.encoder_attention,
                     'decoder_self': config.decoder_attention, 'cross': config.cross_attention}
  os.makedirs(args.out, exist_ok=True)
  report = {
      'model_dir': run['model_dir'], 'step': step, 'task': task, 'split': split,
      'lengths': run['lengths'], 'attention': attention_types, 'num_heads': config.num_heads,
      'head_dim': config.head_dim,
      'examples': [{'inputs': decoding.render(vocabulary, batch['encoder_input_tokens'][b]),
                    'targets': decoding.render(vocabulary, batch['decoder_target_tokens'][b]),
                    'input_length': int(np.sum(batch['encoder_input_tokens'][b] > 0)),
                    'target_length': int(np.sum(batch['decoder_target_tokens'][b] > 0))}
                   for b in range(args.examples)],
      'layers': [draw_layer(entry, batch, vocabulary, attention_types, step, args.out)
                 for entry in captured],
      'projection_spectra': statistics.projection_spectra(
          variables['params'], variables.get(core.FROZEN), config.num_heads),
  }
  with open(os.path.join(args.out, 'maps.json'), 'w') as f:
    json.dump(statistics.as_json(report), f, indent=1)
  print(f'attention-maps: {len(captured)} maps of {args.examples} {split} examples (checkpoint '
        f'step {step}) written to {args.out}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
