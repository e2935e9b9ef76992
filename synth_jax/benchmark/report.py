"""What the benchmark prints, and the source digests its JSON keeps."""
import glob
import hashlib
import os
import textwrap
from typing import Optional


def _gib(n):
  return f'{n / 2**30:.1f}' if n is not None else '-'


def short_part(part: str) -> str:
  """A column header for a network part: 'decoder/encoder_decoder_attention' -> 'dec/eda'."""
  def short(name):
    words = name.split('_')
    return ''.join(w[:1] for w in words) if len(words) > 1 else name[:3]
  return '/'.join(short(name) for name in part.split('/'))


FLOP_UNITS = {'TFLOP': 1e12, 'GFLOP': 1e9, 'MFLOP': 1e6, 'FLOP': 1}


def flop_unit(flops: float) -> str:
  """The largest of `FLOP_UNITS` that `flops` holds at least once ('FLOP' below 1)."""
  return next((u for u, scale in FLOP_UNITS.items() if flops >= scale), 'FLOP')


def flops_table(rows) -> str:
  """Model FLOPs per step by part of the network, one line per row, then the headers' legend."""
  rows = [r for r in rows if 'model_flops_by_part' in r]
  parts = list(dict.fromkeys(p for r in rows for p in r['model_flops_by_part']))
  unit = flop_unit(max((r['model_flops_per_step'] for r in rows), default=1))
  scale = FLOP_UNITS[unit]
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


def results_header(unit: str = 'TFLOP') -> str:
  """The headline table's header, FLOPs in `unit` (of `FLOP_UNITS`)."""
  return (f'{"attention type":<22}{"batch":>6}{"enc len":>8}{"step ms":>10}{"tokens/s":>12}'
          f'{unit + "/step":>11}{unit + "/s":>9}{"MFU":>7}{"peak GiB":>9}  note')


def results_line(row, unit: str = 'TFLOP') -> str:
  """One row of the headline table; a type's name says a non-default execution."""
  from synth_jax import network  # pylint: disable=g-import-not-at-top (imports gin)
  default = network.Transformer.attention_execution
  execution = row.get('attention_execution') or default
  name = row['attention_type'] + (f' [{execution}]' if execution != default else '')
  head = f'{name:<22}{row["batch_size"]:>6}{row["inputs_length"]:>8}'
  if row.get('error'):
    note = 'OOM' if row.get('out_of_memory') else row['error'][:60]
    return head + f'{"-":>10}{"-":>12}{"-":>11}{"-":>9}{"-":>7}{"-":>9}  {note}'
  mfu = f'{100 * row["mfu"]:.1f}%' if row.get('mfu') is not None else '-'
  oom = row.get('out_of_memory_batch_sizes')
  note = ' '.join(filter(None, [f'OOM at batch {",".join(map(str, oom))}' if oom else '',
                                row.get('xla_flags', '')]))
  per_step = row['model_flops_per_step'] / FLOP_UNITS[unit]
  per_second = row['achieved_tflops'] * FLOP_UNITS['TFLOP'] / FLOP_UNITS[unit]
  return (head + f'{1e3 * row["step_time_s"]:>10.1f}{row["tokens_per_s"]:>12,.0f}'
          f'{per_step:>11.2f}{per_second:>9.1f}{mfu:>7}{_gib(row.get("peak_memory_bytes")):>9}'
          f'  {note}')


def mfu_footnote(rows) -> str:
  """Why a measured row's MFU is "-" (no known peak for its device), or '' when none is."""
  kinds = sorted({str(r.get('device_kind')) for r in rows
                  if not r.get('error') and r.get('mfu') is None})
  if not kinds:
    return ''
  return (f'MFU "-": no dense bf16 peak is known for {", ".join(kinds)} (flops.PEAK_TFLOPS lists '
          'GPUs and TPUs, not CPUs); --peak_tflops gives one.')


def results_table(rows, unit: Optional[str] = None) -> str:
  """The headline table: its header, one line per row, then why any MFU is missing. FLOPs in
  `unit` (default: the largest unit the largest row's step holds)."""
  unit = unit or flop_unit(max((r.get('model_flops_per_step') or 0 for r in rows), default=1e12))
  lines = [results_header(unit)] + [results_line(row, unit) for row in rows]
  return '\n'.join(lines + list(filter(None, [mfu_footnote(rows)])))


def profile_table(row) -> str:
  """The `--profile` summary of one row: time by kind of kernel, then the costliest kernels."""
  profile = row['profile']
  kinds = ', '.join(f'{kind} {ms:.1f}' for kind, ms in profile['by_category'].items())
  lines = [f'{row["attention_type"]}: {profile["total_ms"]:.1f} ms of kernels per step '
           f'({profile["span_ms"]:.1f} ms first to last): {kinds}']
  if profile.get('by_part'):
    lines.append('by model part: ' + ', '.join(f'{part} {ms:.1f}'
                                               for part, ms in profile['by_part'].items()))
  lines += [f'{t["ms"]:>9.2f} ms {t["calls"]:>6g} calls  {t["kernel"]}'
            + (f'  <- {t["op_name"]}' if t.get('op_name') else '') for t in profile['top']]
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
