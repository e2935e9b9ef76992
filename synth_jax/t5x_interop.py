"""T5X interop: checkpoint conversion, and what `t5x.train` needs to run synth-jax's network.

Checkpoints (pure functions on nested dicts; no T5X import):
  params_from_t5x(t5x_tree, fresh_params) -> (params, ConversionReport)
      Starts any synth-jax model from a T5X checkpoint: every parameter whose path (and shape)
      T5X has is copied, the rest keep their fresh init.
  params_to_t5x(params, config) -> T5X param tree, for vanilla models (refuses others).
  vanilla_checkpoint_assignment_map(attention_type)
      That start inside `t5x.train`, as T5X restore rules (gin/t5x/from_vanilla_checkpoint.gin);
      there a mixture's vanilla member starts fresh too.

Training with T5X (`gin/t5x/*.gin`):
  T5XTransformer           the network with T5X's variable conventions
  EncoderDecoderModel      T5X's model that also passes the 'frozen' collection (needs t5x)
  additional_logical_axis_rules()   our new axes, appended to T5X's partitioning rules
  adafactor_factor_rules()          T5X's Adafactor factor rules plus ours (needs t5x)

Why a wrapper and a model subclass: T5X reads logical axes from `params_axes` / `<collection>_axes`
collections of `flax.linen.partitioning.AxisMetadata`, not from `nn.Partitioned` boxes; its
EncoderDecoderModel applies the module with `{'params': ...}` (plus 'cache') only, while its
trainer hands non-param collections (`flax_mutables`) to `loss_fn` / `eval_fn` / `predict_batch*`
only if the model accepts them; and its beam search expands and gathers every cache leaf but
`cache_index` along a leading batch axis.
"""
import copy
import dataclasses
import functools
from typing import Any, Mapping, Optional

from flax import traverse_util
from flax.core import meta
import flax.linen as nn
from flax.linen import partitioning as flax_partitioning
import jax
import jax.numpy as jnp
import numpy as np

from synth_jax import attention
from synth_jax import network
from synth_jax import partitioning
from synth_jax.attention import core

Path = tuple[str, ...]

# A mixture keeps each member's own parameters under the member's registry name
# (`attention/vanilla/query/kernel`) next to its `mixture_logits`; the vanilla member's are T5X's.
VANILLA_MEMBER = 'vanilla'
MIXTURE_LOGITS = 'mixture_logits'
T5X_ATTENTION_PARAMS = frozenset({'query', 'key', 'value', 'out'})

# The logical axes `t5x.partitioning.standard_logical_axis_rules()` already maps (names only; a
# test checks them against T5X when it is installed).
T5X_STANDARD_AXES = frozenset({
    'batch', 'vocab', 'embed', 'mlp', 'heads', 'kv', 'joined_kv', 'relpos_buckets',
    'abspos_buckets', 'length', 'layers', 'stack', 'mlp_activations'})


# ------------------------------------------------------------------------------ nested dicts
def _flatten(tree: Mapping) -> dict[Path, Any]:
  """Nested dicts -> {path: leaf}; boxed values (`nn.Partitioned`) are leaves."""
  return traverse_util.flatten_dict(dict(tree))


def _unflatten(flat: Mapping[Path, Any]) -> dict:
  return traverse_util.unflatten_dict(dict(flat))


def _unbox(leaf):
  return leaf.unbox() if isinstance(leaf, meta.AxisMetadata) else leaf


def _shape(leaf) -> tuple:
  value = _unbox(leaf)
  return tuple(value.shape) if hasattr(value, 'shape') else np.shape(value)


def _name(path: Path) -> str:
  return '/'.join(path)


# ------------------------------------------------------------------------------ checkpoints
@dataclasses.dataclass(frozen=True)
class ConversionReport:
  """What `params_from_t5x` did, by '/'-joined parameter path.

  Attributes:
    copied: our path -> the T5X path its value came from (equal except for mixture members,
      e.g. `.../attention/vanilla/query/kernel` <- `.../attention/query/kernel`).
    kept_fresh: our paths T5X has no counterpart for (synthesizer parameters), left at init.
    unused: T5X paths nothing was copied from (e.g. query/key of an orthogonal or random model).
  """
  copied: dict[str, str]
  kept_fresh: tuple[str, ...]
  unused: tuple[str, ...]

  def __str__(self):
    lines = [f'copied from T5X: {len(self.copied)}, kept fresh: {len(self.kept_fresh)}, '
             f'unused T5X parameters: {len(self.unused)}']
    lines += [f'  fresh   {p}' for p in self.kept_fresh]
    lines += [f'  unused  {p}' for p in self.unused]
    return '\n'.join(lines)


def _sources(path: Path, ours: Mapping[Path, Any]):
  """T5X paths that may hold `path`'s value, best first."""
  yield path
  for i, key in enumerate(path):
    if key == VANILLA_MEMBER and path[:i] + (MIXTURE_LOGITS,) in ours:
      yield path[:i] + path[i + 1:]


def _shape_hint(path: Path) -> str:
  if path[-1] == 'embedding' or 'logits_dense' in path:
    return ('the vocabulary sizes differ: set gin VOCAB_SIZE / `T5Config.vocab_size` to the '
            "checkpoint's (32128 for T5's public checkpoints)")
  return ("the model's widths differ from the checkpoint's: match `T5Config` emb_dim, num_heads, "
          'head_dim and mlp_dim (e.g. include the same gin/models/t5_1_1_*.gin size)')


def params_from_t5x(t5x_tree: Mapping, fresh_params: Mapping) -> tuple[dict, ConversionReport]:
  """`fresh_params` with every parameter T5X's checkpoint also has replaced by T5X's value.

  Identity for each path present in both trees with equal shapes. A vanilla member of a mixture
  (`attention/vanilla/query/kernel`) takes T5X's `attention/query/kernel`. Everything T5X lacks
  (random/dense maps, mixture logits, factor matrices) keeps its fresh value, so a synthesizer
  model starts from T5X's embeddings, MLPs, layer norms, relative position biases, value/out
  projections and logits layer. Frozen variables are not parameters and are not touched.

  Args:
    t5x_tree: T5X parameters as nested dicts of arrays, or a whole T5X state dict, whose
      'target' entry is then used (optimizer state and flax_mutables are ignored). Read T5X's
      current (Orbax) checkpoints with `orbax.checkpoint.PyTreeCheckpointer().restore(
      f'{step_dir}/state')`, older msgpack ones with `t5x.checkpoints.load_t5x_checkpoint`.
    fresh_params: this model's freshly initialized 'params' (`model.init(...)['params']`), boxed
      (`nn.Partitioned`) or not; boxes are kept, with the copied values inside.

  Returns:
    (params, report): params with `fresh_params`' structure and dtypes; see `ConversionReport`.

  Raises:
    ValueError: a shared path has different shapes (all such paths are listed), or the trees
      share no path at all (not a T5X parameter tree, or not T5's network).
  """
  source_tree = t5x_tree['target'] if 'target' in t5x_tree else t5x_tree
  theirs = {p: _unbox(v) for p, v in _flatten(source_tree).items()}
  ours = _flatten(fresh_params)
  merged, copied, fresh, mismatches = {}, {}, [], []
  for path, leaf in ours.items():
    source = next((s for s in _sources(path, ours) if s in theirs), None)
    if source is None:
      merged[path] = leaf
      fresh.append(_name(path))
      continue
    value = theirs[source]
    if _shape(value) != _shape(leaf):
      mismatches.append(f'  {_name(source)}: T5X shape {_shape(value)}, synth-jax '
                        f'{_name(path)} shape {_shape(leaf)} ({_shape_hint(path)})')
      continue
    dtype = _unbox(leaf).dtype
    value = value if value.dtype == dtype else value.astype(dtype)
    merged[path] = leaf.replace_boxed(value) if isinstance(leaf, meta.AxisMetadata) else value
    copied[_name(path)] = _name(source)
  if mismatches:
    raise ValueError('T5X checkpoint and synth-jax model disagree on parameter shapes:\n'
                     + '\n'.join(mismatches))
  if not copied:
    raise ValueError(
        'No parameter path of the T5X tree matches the synth-jax model (T5X paths look like '
        f'{_name(next(iter(theirs), ("?",)))!r}, ours like {_name(next(iter(ours), ("?",)))!r}). '
        "Pass a T5X state dict (its 'target' entry is used) or T5X's parameter tree, and this "
        "model's `init(...)['params']`.")
  used = set(copied.values())
  unused = tuple(sorted(_name(p) for p in theirs if _name(p) not in used))
  return _unflatten(merged), ConversionReport(copied, tuple(fresh), unused)


def _check_t5x_computes(config: network.T5Config):
  """Raises unless T5X's stock network computes `config`'s attention at every location.

  T5X's network is T5's: dot-product attention with the 1/sqrt(d) scale folded into the query
  kernel and the relative position bias. Other types may share vanilla's tree (neg_l2, topk: T5X
  would silently compute another function) or lack its `relpos_bias` (rotary, linear: T5X would
  fail to restore), so the type is checked by name, not by tree.
  """
  for field in ('encoder_attention', 'decoder_attention', 'cross_attention'):
    name = getattr(config, field)
    if name == 'vanilla':
      continue
    cross = field == 'cross_attention'
    why = ('so T5X would silently compute another function from these parameters'
           if cross or attention.uses_position_bias(name) else
           f"and a {name!r} model has no relpos_bias table for T5X's network to restore")
    knob = "T5Config.cross_attention='vanilla'" if cross else "ATTENTION_TYPE='vanilla'"
    raise ValueError(
        f'params_to_t5x converts vanilla models only: T5Config.{field}={name!r}, but T5X\'s '
        'stock network computes only dot-product attention with the T5 relative position bias, '
        f'{why}. Keep synth-jax checkpoints for this model, or train one with {knob} to export.')
  if not dict(config.self_attention_options).get('fold_query_scale', True):
    raise ValueError(
        'params_to_t5x converts vanilla models only with the 1/sqrt(head_dim) scale folded into '
        'the query kernel, as T5X has it; this model has self_attention_options '
        'fold_query_scale=False (the scale in the logits), which T5X does not apply. Keep '
        'synth-jax checkpoints, or train without fold_query_scale=False.')


def params_to_t5x(params: Mapping, config: network.T5Config) -> dict:
  """A vanilla model's params as T5X's parameter tree (T5X keeps it under 'target').

  The trees are identical (same paths, shapes and 2-D kernels); boxes are removed.

  Args:
    params: the model's 'params', boxed or not.
    config: the model's `T5Config` (`model.config`); its attention types decide, since some
      types T5X cannot compute have exactly vanilla's parameters.

  Raises:
    ValueError: `config` names an attention type other than 'vanilla' (T5X's stock network
      computes only dot-product attention with the T5 bias), or an attention module of `params`
      is not T5X's query/key/value/out (`params` are not `config`'s).
  """
  _check_t5x_computes(config)
  flat = _flatten(params)
  attention_modules = {p[:-2] for p in flat if p[-2:] == ('value', 'kernel')}
  for module in sorted(attention_modules):
    children = {p[len(module)] for p in flat if p[:len(module)] == module}
    if children != T5X_ATTENTION_PARAMS:
      raise ValueError(
          f'params_to_t5x converts vanilla models only: {_name(module)} has parameters '
          f'{sorted(children)}, T5X attention has {sorted(T5X_ATTENTION_PARAMS)}. Pass the '
          "model's own T5Config; use ATTENTION_TYPE='vanilla' (every T5Config.*_attention), or "
          'keep synth-jax checkpoints.')
  return _unflatten({p: _unbox(v) for p, v in flat.items()})


def _probe_variables(attention_type: str) -> dict:
  """Abstract variables (shapes only) of one `attention_type` self-attention module.

  Built at the default network's widths (`network.T5Config`: 8 heads of 64 on a 512 embedding),
  which every variant accepts; a made-up width may not (rotary needs an even head_dim,
  orthogonal head_dim <= embed). Which variables exist does not depend on the widths.
  """
  widths = network.T5Config(vocab_size=1)
  module = attention.build(attention_type, num_heads=widths.num_heads, head_dim=widths.head_dim,
                           max_query_length=widths.max_encoder_length,
                           max_key_length=widths.max_encoder_length)
  x = jnp.zeros((1, 1, widths.emb_dim))
  return jax.eval_shape(module.init, jax.random.key(0), x, x)


def vanilla_checkpoint_assignment_map(attention_type: str) -> tuple[tuple[str, None], ...]:
  """T5X restore rules (`RestoreCheckpointConfig.assignment_map`) to start from a vanilla model.

  T5X's own restore then does what `params_from_t5x` does, inside `t5x.train` (with
  `fallback_to_scratch = True`): every self-attention variable that is not T5X's
  query/key/value/out, and the 'frozen' collection, start fresh; all else is restored. One
  difference: T5X cannot rename on restore from its (Orbax) checkpoints, so a mixture's vanilla
  member also starts fresh. T5X rejects rules that match nothing, so only those that apply are
  returned; none for 'vanilla'.
  """
  abstract = _probe_variables(attention_type)
  rules = []
  if set(abstract['params']) - T5X_ATTENTION_PARAMS:
    rules.append((r'(target|state/param_states)/(encoder/layers_\d+/attention|'
                  r'decoder/layers_\d+/self_attention)/(?!(query|key|value|out)/).*', None))
  if core.FROZEN in abstract:
    rules.append((rf'flax_mutables/{core.FROZEN}/.*', None))
  return tuple(rules)


# ------------------------------------------------------------------------------ rules
def additional_logical_axis_rules(
    standard_axes=T5X_STANDARD_AXES) -> tuple[tuple[str, Optional[str]], ...]:
  """`(logical axis, mesh axis)` for our axes T5X's standard rules do not name.

  For `t5x.partitioning.standard_logical_axis_rules(additional_rules=...)`: T5X's rules keep
  deciding the axes both share (ours agree with its 1-D defaults), so its
  activation/parameter_partitioning_dims options still work.
  """
  return tuple((name, rule.mesh_axis) for name, rule in partitioning.axis_rules().items()
               if name not in standard_axes)


def adafactor_factor_rules(standard_rules: Optional[Mapping] = None,
                           factor_dim: Any = None) -> dict:
  """T5X's `adafactor.Adafactor.logical_factor_rules`: T5X's standard rules updated with ours.

  Ours win where both name an axis. The one difference is 'heads': ours treat it as BATCH (a
  stack of per-head matrices), T5X's as COLUMN. With COLUMN, T5X's Adafactor rejects
  `factorized_random`'s `query_factor` (heads, synth_query_length, synth_rank) as an incomplete
  ROW/COLUMN/NONE spec and would share row statistics of random maps across heads; with BATCH
  the only vanilla parameter using 'heads', the relative position bias (never factored), takes
  its parameter scale per head.

  Args:
    standard_rules: rules to extend; default `t5x.adafactor.standard_logical_factor_rules()`.
    factor_dim: the enum with NONE/BATCH/ROW/COLUMN; default `t5x.adafactor.FactorDim`.
  """
  if standard_rules is None or factor_dim is None:
    from t5x import adafactor  # pylint: disable=g-import-not-at-top
    standard_rules = adafactor.standard_logical_factor_rules() if standard_rules is None else (
        standard_rules)
    factor_dim = factor_dim or adafactor.FactorDim
  roles = {'row': factor_dim.ROW, 'column': factor_dim.COLUMN, 'batch': factor_dim.BATCH,
           'none': factor_dim.NONE}
  ours = {name: roles[rule.factor] for name, rule in partitioning.axis_rules().items()}
  return {**standard_rules, **ours}


# ------------------------------------------------------------------------------ the T5X module
def _axes_collection(boxed: Mapping, collection: str) -> dict:
  """`<collection>_axes`: each leaf `name` -> `name_axes`: AxisMetadata(logical axis names)."""
  axes = {}
  for path, leaf in _flatten(boxed).items():
    if not isinstance(leaf, nn.Partitioned):
      raise ValueError(f"{collection}/{_name(path)} has no logical axes; T5X needs them for every "
                       'variable: create it with nn.with_logical_partitioning.')
    axes[path[:-1] + (path[-1] + '_axes',)] = flax_partitioning.AxisMetadata(names=leaf.names)
  return _unflatten(axes)


class T5XTransformer(network.Transformer):
  """`network.Transformer` with T5X's variable conventions: `models.EncoderDecoderModel.module`.

  * `init` returns unboxed 'params' plus 'params_axes' (and 'frozen' plus 'frozen_axes'), the
    `AxisMetadata` collections T5X reads logical axes from.
  * `apply` adds `flax_mutables` (T5X's name for the non-param collections a train state keeps,
    here 'frozen') to the variables it is given; `EncoderDecoderModel` sets it per call.

  Attributes:
    flax_mutables: collections merged into every `apply` (those passed explicitly win).
  """
  flax_mutables: Any = None

  def init(self, rngs, *args, **kwargs):
    variables = dict(super().init(rngs, *args, **kwargs))
    for collection in ('params', core.FROZEN):
      if collection in variables:
        boxed = variables[collection]
        variables[collection] = nn.unbox(boxed)
        variables[collection + '_axes'] = _axes_collection(boxed, collection)
    return variables

  def apply(self, variables, *args, mutable=False, **kwargs):
    variables = {**(self.flax_mutables or {}), **variables}
    return super().apply(variables, *args, mutable=mutable, **kwargs)


# ------------------------------------------------------------------------------ the T5X model
def __getattr__(name):
  # `EncoderDecoderModel` subclasses T5X's, which is imported only when the name is first used
  # (gin's `@t5x_interop.EncoderDecoderModel()`), so this module never needs T5X otherwise.
  if name == 'EncoderDecoderModel':
    return _encoder_decoder_model_class()
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


@functools.cache
def _encoder_decoder_model_class():
  try:
    from t5x import models  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError('synth_jax.t5x_interop.EncoderDecoderModel subclasses T5X\'s model: install '
                      'T5X (github.com/google-research/t5x) next to synth-jax.') from error

  class EncoderDecoderModel(models.EncoderDecoderModel):
    """T5X's EncoderDecoderModel, also passing the train state's `flax_mutables` to the module.

    T5X's trainer calls `loss_fn` / `eval_fn` / `predict_batch*` / `score_batch` with
    `flax_mutables` (e.g. our 'frozen' collection) only when the train state has some; each call
    then runs T5X's own method on a copy whose module (`T5XTransformer`) carries them. The
    collection is returned unchanged, so frozen variables stay frozen.
    """

    def _with(self, flax_mutables):
      model = copy.copy(self)
      model.module = self.module.clone(flax_mutables=flax_mutables)
      return model

    def loss_fn(self, params, batch, dropout_rng, flax_mutables=None):
      if not flax_mutables:
        return super().loss_fn(params, batch, dropout_rng)
      loss, metrics = self._with(flax_mutables).loss_fn(params, batch, dropout_rng)
      return loss, (metrics, flax_mutables)

    def eval_fn(self, params, batch, flax_mutables=None):
      if not flax_mutables:
        return super().eval_fn(params, batch)
      return self._with(flax_mutables).eval_fn(params, batch)

    def predict_batch(self, params, batch, rng=None, flax_mutables=None):
      if not flax_mutables:
        return super().predict_batch(params, batch, rng)
      return self._with(flax_mutables).predict_batch(params, batch, rng)

    def predict_batch_with_aux(self, params, batch, rng=None, flax_mutables=None, **kwargs):
      if not flax_mutables:
        return super().predict_batch_with_aux(params, batch, rng, **kwargs)
      return self._with(flax_mutables).predict_batch_with_aux(params, batch, rng, **kwargs)

    def score_batch(self, params, batch, return_intermediates=False, flax_mutables=None):
      if not flax_mutables:
        return super().score_batch(params, batch, return_intermediates)
      return self._with(flax_mutables).score_batch(params, batch, return_intermediates)

  EncoderDecoderModel.__module__ = __name__
  EncoderDecoderModel.__qualname__ = 'EncoderDecoderModel'
  return EncoderDecoderModel
