"""The command lines of `synth-jax diagnose`, `diagnose-compare` and `attention-maps`, built
without importing jax: `synth_jax.cli` parses with them first, so help and flag mistakes answer
at once, and each command's `main` parses with them again before its work.
"""
import argparse
import ast
import importlib.util

from synth_jax import gin_flags
from synth_jax import names


def _docstring(module: str) -> str:
  """`module`'s docstring, read from its source without running it (it imports jax)."""
  with open(importlib.util.find_spec(module).origin, encoding='utf-8') as source:
    return ast.get_docstring(ast.parse(source.read()))


def _summary(module: str) -> str:
  return _docstring(module).split('\n')[0]


def diagnose() -> argparse.ArgumentParser:
  """`synth-jax diagnose` (`run.py`)."""
  parser = argparse.ArgumentParser(prog='synth-jax diagnose',
                                   description=_summary('synth_jax.diagnostics.run'))
  parser.add_argument('--tasks', default=None,
                      help=f'comma-separated, of: {", ".join(names.DIAGNOSTIC_TASKS)} '
                           "(default: all; a grid's own tasks for a grid).")
  parser.add_argument('--attention', required=True,
                      help='comma-separated registry names, e.g. vanilla,random,random+vanilla.')
  parser.add_argument('--preset', default='tiny',
                      choices=sorted(names.DIAGNOSTIC_PRESETS) + sorted(names.GRIDS),
                      help='a preset (one setting, one seed) or a robustness grid over one '
                           '(robust: the full preset, robust_tiny: the tiny one; grid.py).')
  parser.add_argument('--part', type=int, default=None, help='run only part N (1-based).')
  parser.add_argument('--plan', action='store_true', help='list the parts and exit.')
  parser.add_argument('--report_only', action='store_true',
                      help='redraw report.md and the plots from DIR/results.json; train nothing.')
  parser.add_argument('--out', required=True, help='directory of results.json, report.md, PNGs.')
  parser.add_argument('--draw', action=argparse.BooleanOptionalAction, default=True,
                      help='write report.md and the plots when done (--no-draw: many small parts '
                           'at once leave them to one --report_only at the end).')
  parser.add_argument('--skip_done', action='store_true',
                      help='keep runs already in DIR/results.json for the same tables (finish a '
                      'part cut short); a recorded run also serves a sweep point equal to it.')
  parser.add_argument('--seed', type=int, default=None, help='the seed of every run (default 0).')
  parser.add_argument('--positions', default=None, choices=names.POSITIONS,
                      help="position scheme (default: the preset's).")
  parser.add_argument('--conv_kernel', type=int, default=None,
                      help="short convolution taps, 0 for none (default: the preset's).")
  parser.add_argument('--fold_query_scale', action=argparse.BooleanOptionalAction, default=None,
                      help="T5's 1/sqrt(head_dim) in the query kernel's init instead of the "
                           "logits, for dot-product variants (default: the preset's, off).")
  parser.add_argument('--learning_rate', type=float, default=None,
                      help="peak learning rate of every run (default: the preset's).")
  parser.add_argument('--steps', type=int, default=None,
                      help="training steps of every run (default: the preset's).")
  parser.add_argument('--batch_size', type=int, default=None,
                      help="training examples per step of every run (default: the preset's; a "
                           "divisor of its eval_examples, which stay as they are).")
  parser.add_argument('--sweeps', action=argparse.BooleanOptionalAction, default=True,
                      help="MQAR's kv-pair and width sweeps (--no-sweeps: base settings only).")
  parser.add_argument('--jobs_per_part', type=int, default=None,
                      help="runs per --part (default: the preset's); for a grid, groups of "
                           "runs per --part.")
  parser.add_argument('--attention_execution', default='fast', choices=names.EXECUTIONS,
                      help='how attention runs, as network.Transformer.attention_execution.')
  return parser


def compare() -> argparse.ArgumentParser:
  """`synth-jax diagnose-compare` (`compare.py`)."""
  parser = argparse.ArgumentParser(prog='synth-jax diagnose-compare',
                                   description=_docstring('synth_jax.diagnostics.compare'),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('directories', nargs='+', help='`synth-jax diagnose --out` directories.')
  parser.add_argument('--tasks', help='comma-separated tasks to keep (default: all).')
  parser.add_argument('--all_runs', action='store_true',
                      help='also the runs only one file holds (default: those in two or more).')
  parser.add_argument('--out', help='write the table here (default: print it).')
  return parser


def attention_maps() -> argparse.ArgumentParser:
  """`synth-jax attention-maps` (`attention_maps.py`); it parses what `gin_flags.split` leaves."""
  parser = argparse.ArgumentParser(prog='synth-jax attention-maps',
                                   description=_summary('synth_jax.diagnostics.attention_maps'),
                                   epilog=gin_flags.HELP,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  gin_flags.add_flags(parser, 'a gin file (repeatable); not needed when MODEL_DIR has config.gin')
  parser.add_argument('--out', required=True, help='directory for the PNGs and maps.json.')
  parser.add_argument('--examples', type=int, default=2, help='eval examples to draw.')
  parser.add_argument('--max_length', type=int, default=64,
                      help='tokens per feature (inputs, targets) at most.')
  parser.add_argument('--split', default=None,
                      help='default: gin train.eval_split, else validation.')
  parser.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest).')
  parser.add_argument('--tfds_data_dir', default=None, help='TFDS data directory (C4/GLUE).')
  return parser
