"""The command line of `synth-jax bench` (`driver.py`), built without importing jax:
`synth_jax.cli` parses with it first, so help and flag mistakes answer at once."""
import argparse

from synth_jax import names
from synth_jax.benchmark import runner


def parser() -> argparse.ArgumentParser:
  """`synth-jax bench`'s flags; `driver.parse_args` checks the attention types after them."""
  parser = argparse.ArgumentParser(
      prog='synth-jax bench',
      description='Training-step benchmark of every attention type at T5-base v1.1 shapes.')
  parser.add_argument('--types', default=None,
                      help='comma-separated attention types (mixtures like random+vanilla); '
                           'default: every registry type and random+vanilla')
  parser.add_argument('--preset', choices=sorted(runner.PRESETS), default='base')
  parser.add_argument('--batch_size', type=int, help='default: the preset\'s (base: 128)')
  parser.add_argument('--inputs_length', type=int, help='default: the preset\'s (base: 512)')
  parser.add_argument('--targets_length', type=int, help='default: the preset\'s (base: 114)')
  parser.add_argument('--steps', type=int, default=10, help='timed steps (median reported)')
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps after compiling')
  parser.add_argument('--pack', action=argparse.BooleanOptionalAction, default=True,
                      help='packed batches with segment ids (default) or one example per row')
  parser.add_argument('--fused', '--attention_execution', dest='attention_execution',
                      choices=names.EXECUTIONS,
                      help='Transformer.attention_execution of the timed step (default: the '
                           'network\'s, fast): cudnn or auto run query-key forms through '
                           'jax.nn.dot_product_attention and the rest blockwise; blockwise '
                           'runs every variant blockwise; reference times the plain core path')
  parser.add_argument('--logits_matmul_dtype', choices=('float32', 'bfloat16'),
                      help='T5Config.logits_matmul_dtype (default float32, as T5X): bfloat16 '
                           'runs the output projection on bf16 tensor cores, float32 logits')
  parser.add_argument('--init_on_host', action=argparse.BooleanOptionalAction, default=True,
                      help='build the train state on the host CPU, then copy it to the device '
                           '(much faster to compile on GPUs)')
  parser.add_argument('--seq_sweep', action='store_true',
                      help='encoder length x1, x2, x4, x8 (base: 512..4096) at fixed tokens '
                           'per batch; the batch shrinks to match')
  parser.add_argument('--peak_tflops', type=float,
                      help='bf16 peak per device; default: looked up from the device kind')
  parser.add_argument('--halve_on_oom', action='store_true',
                      help='retry an out-of-memory row at half the batch until it fits')
  parser.add_argument('--isolate', action=argparse.BooleanOptionalAction, default=True,
                      help='one process per row (per-row peak memory; an OOM stays contained)')
  parser.add_argument('--jobs', type=int, default=1,
                      help='rows prepared at once (with --isolate); they take turns on the '
                           'device to compile and time, so timings are unaffected, but each '
                           'waiting row holds its train state (a few GiB at base): rows near '
                           'the memory limit then run out of memory')
  parser.add_argument('--xla_flags', action='append',
                      help='repeatable: every row is measured once per value, in a worker whose '
                           'XLA_FLAGS are this value (not added to ours), e.g. --xla_flags= '
                           '--xla_flags=--xla_gpu_triton_gemm_any=true to A/B a compiler '
                           'option (the = keeps a leading -- a value)')
  parser.add_argument('--model_parallelism', type=int, default=1,
                      help="the mesh's 'model' axis; the rest of the devices form 'data'")
  parser.add_argument('--json', help='write the rows and the run\'s setup here')
  parser.add_argument('--profile',
                      help='trace 2 extra steps into this dir; print device time by kernel')
  parser.add_argument('--seed', type=int, default=0)
  return parser
