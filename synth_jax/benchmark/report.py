"""What the benchmark prints, and the source digests its JSON keeps."""
import glob
import hashlib
import os
import textwrap


def _gib(n):
  return f'{n / 2**30:.1f}' if n is not None else '-'


def short_part(part: str) -> str:
  """A column header for a network part: 'decoder/encoder_decoder_attention' -> 'dec/eda'."""
  def short(name):
    words = name.split('_')
    return ''.join(w[:1] for w in words) if len(words) > 1 else name[:3]
  return '/'.join(short(name) for name in part.split('/'))


def flops_table(rows) -> str:
  """Model FLOPs per step by part of the network, one line per row, then the headers' legend."""
  rows = [r for r in rows if 'model_flops_by_part' in r]
  parts = list(dict.fromkeys(p for r in rows for p in r['model_flops_by_part']))
  largest = max((r['model_flops_per_step'] for r in rows), default=1)
  units = (('TFLOP', 1e12), ('GFLOP', 1e9), ('MFLOP', 1e6), ('FLOP', 1))
  unit, scale = next((u, s) for u, s in units if largest >= s)
  lines = [f'{"attention type":<22}{"batch":>6}{"enc len":>8}'
           + ''.join(f'{short_part(p):>10}' for p in parts)
           + f'{"total":>10}{"traced":>10}   ({unit})']
  for row in rows:
    by_part = row['model_flops_by_part']
    traced = row.get('traced_matmul_flops')
    lines.append(f'{row["attention_type"]:<22}{row["batch_size"]:>6}{row["inputs_length"]:>8}'
                 + ''.join(f'{by_part.get(p, 0) / scale:>10.3f}' for p in parts)
                 + f'{row["model_flops_per_step"] / scale:>10.3f}'
                 + (f'{traced / scale:>10.3f}' if traced is not None else f'{"-":>10}'))
  lines.append(textwrap.fill(', '.join(f'{short_part(p)}: {p}' for p in parts), 100))
  return '\n'.join(lines)


def results_table(rows) -> str:
  """The headline table: one line per row; a type's name says a non-default execution."""
  from synth_jax import network  # pylint: disable=g-import-not-at-top (imports gin)
  default = network.Transformer.attention_execution
  lines = [f'{"attention type":<22}{"batch":>6}{"enc len":>8}{"step ms":>10}{"tokens/s":>12}'
           f'{"TFLOP/step":>11}{"TFLOP/s":>9}{"MFU":>7}{"peak GiB":>9}  note']
  for row in rows:
    execution = row.get('attention_execution') or default
    name = row['attention_type'] + (f' [{execution}]' if execution != default else '')
    head = f'{name:<22}{row["batch_size"]:>6}{row["inputs_length"]:>8}'
    if row.get('error'):
      note = 'OOM' if row.get('out_of_memory') else row['error'][:60]
      lines.append(head + f'{"-":>10}{"-":>12}{"-":>11}{"-":>9}{"-":>7}{"-":>9}  {note}')
      continue
    mfu = f'{100 * row["mfu"]:.1f}%' if row.get('mfu') is not None else '-'
    oom = row.get('out_of_memory_batch_sizes')
    note = ' '.join(filter(None, [f'OOM at batch {",".join(map(str, oom))}' if oom else '',
                                  row.get('xla_flags', '')]))
    lines.append(head + f'{1e3 * row["step_time_s"]:>10.1f}{row["tokens_per_s"]:>12,.0f}'
                 f'{row["model_flops_per_step"] / 1e12:>11.2f}{row["achieved_tflops"]:>9.1f}'
                 f'{mfu:>7}{_gib(row.get("peak_memory_bytes")):>9}  {note}')
  return '\n'.join(lines)


def profile_table(row) -> str:
  """The `--profile` summary of one row: time by kind of kernel, then the costliest kernels."""
  profile = row['profile']
  kinds = ', '.join(f'{kind} {ms:.1f}' for kind, ms in profile['by_category'].items())
  lines = [f'{row["attention_type"]}: {profile["total_ms"]:.1f} ms of kernels per step '
           f'({profile["span_ms"]:.1f} ms first to last): {kinds}']
  lines += [f'{t["ms"]:>9.2f} ms {t["calls"]:>6g} calls  {t["kernel"]}' for t in profile['top']]
  return '\n'.join(lines)


def source_digests() -> dict[str, str]:
  """Short sha256 of each package source file, so a result names the code it measured."""
  package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # synth_jax/
  digests = {}
  for path in sorted(glob.glob(os.path.join(package, '**', '*.py'), recursive=True)):
    with open(path, 'rb') as f:
      name = os.path.relpath(path, os.path.dirname(package))
      digests[name] = hashlib.sha256(f.read()).hexdigest()[:12]
  return digests
