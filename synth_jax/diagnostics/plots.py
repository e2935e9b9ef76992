"""PNG figures from `results.json` (matplotlib, headless).

  curves_<task>.png       held-out accuracy vs step per variant, chance dashed
  grad_norms_<task>.png   per-step gradient global norm per variant (log scale)
  final_accuracy.png      final accuracy, tasks x variants, grouped bars (extrapolation runs
                          are drawn with the task they train)
  extrapolation.png       accuracy vs evaluation length; "cannot run" lengths have no point
  mqar_kv_pairs.png       accuracy vs number of kv pairs (Zoology's Figure 2 axis), when swept
  mqar_width.png          accuracy vs model width (Zoology's Figure 2), when swept
"""
import os

from synth_jax.diagnostics import claims
from synth_jax.diagnostics import report


def new_figure(figsize: tuple[float, float]):
  """`(figure, axis)`: a headless matplotlib Figure (no pyplot, nothing to close) with one axis.
  matplotlib loads here, on first use, so commands that only parse their flags stay fast."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  figure = Figure(figsize=figsize)
  return figure, figure.subplots()


def _save(figure, path: str) -> str:
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  return path


def curves(results: dict, task: str, out_dir: str) -> str:
  figure, axis = new_figure(figsize=(6, 4))
  runs = claims.base_runs(results, task)
  for variant, run in runs.items():
    axis.plot(run['curve']['steps'], run['curve']['accuracy'], marker='.', label=variant)
  axis.axhline(next(iter(runs.values()))['chance'], color='gray', linestyle='--', label='chance')
  axis.set(title=f'{task}: held-out answer accuracy', xlabel='step', ylabel='accuracy',
           ylim=(-0.02, 1.02))
  axis.legend(fontsize='small')
  return _save(figure, os.path.join(out_dir, f'curves_{task}.png'))


def grad_norms(results: dict, task: str, out_dir: str) -> str:
  figure, axis = new_figure(figsize=(6, 4))
  for variant, run in claims.base_runs(results, task).items():
    axis.plot(range(1, len(run['grad_norm']) + 1), run['grad_norm'], linewidth=0.8,
              label=variant)
  axis.set(title=f'{task}: gradient global norm', xlabel='step', ylabel='norm', yscale='log')
  axis.legend(fontsize='small')
  return _save(figure, os.path.join(out_dir, f'grad_norms_{task}.png'))


def final_accuracy(results: dict, tasks: list[str], out_dir: str) -> str:
  trained = list(tasks)
  variants = list(dict.fromkeys(v for t in trained for v in claims.base_runs(results, t)))
  figure, axis = new_figure(figsize=(max(6, 1.5 * len(trained) * max(1, len(variants)) / 2), 4))
  width = 0.8 / max(len(variants), 1)
  for i, variant in enumerate(variants):
    heights = [claims.base_runs(results, t).get(variant, {}).get('final_accuracy', 0.0) or 0.0
               for t in trained]
    axis.bar([x + i * width for x in range(len(trained))], heights, width, label=variant)
  axis.set_xticks([x + width * (len(variants) - 1) / 2 for x in range(len(trained))], trained)
  axis.set(title='final held-out answer accuracy', ylabel='accuracy', ylim=(0, 1.05))
  axis.legend(fontsize='small')
  return _save(figure, os.path.join(out_dir, 'final_accuracy.png'))


def _label_points_on_log_axis(axis, values):
  """Ticks at exactly the measured values, written plainly (4, 8, 16), not as powers of ten."""
  values = sorted(set(values))
  axis.set_xticks(values, [str(v) for v in values])
  axis.minorticks_off()


def extrapolation(results: dict, out_dir: str) -> str:
  figure, axis = new_figure(figsize=(6, 4))
  lengths = []
  for variant, run in claims.base_runs(results, 'extrapolation').items():
    lengths += [r['length'] for r in run['extrapolation']]
    rows = [r for r in run['extrapolation'] if r['accuracy'] is not None]
    refused = [r['length'] for r in run['extrapolation'] if r['accuracy'] is None]
    label = variant + (f' (cannot run at {", ".join(map(str, refused))})' if refused else '')
    axis.plot([r['length'] for r in rows], [r['accuracy'] for r in rows], marker='o', label=label)
  axis.set(title='extrapolation: accuracy by evaluation length', xlabel='length',
           ylabel='accuracy', xscale='log', ylim=(-0.02, 1.02))
  _label_points_on_log_axis(axis, lengths)
  axis.legend(fontsize='small')
  return _save(figure, os.path.join(out_dir, 'extrapolation.png'))


def sweep(results: dict, group: str, out_dir: str) -> str:
  runs = [r for r in results['runs'].values() if group in r['job']['groups']]
  value = ((lambda r: r['job']['options']['num_kv_pairs']) if group == 'kv_pairs'
           else (lambda r: r['job']['width']))
  figure, axis = new_figure(figsize=(6, 4))
  for variant in dict.fromkeys(r['job']['variant'] for r in runs):
    points = sorted((value(r), r['final_accuracy']) for r in runs
                    if r['job']['variant'] == variant)
    axis.plot(*zip(*points), marker='o', label=variant)
  xlabel = 'number of kv pairs' if group == 'kv_pairs' else 'model width'
  axis.set(title=f'MQAR accuracy by {xlabel}', xlabel=xlabel, ylabel='accuracy', xscale='log',
           ylim=(-0.02, 1.02))
  _label_points_on_log_axis(axis, [value(r) for r in runs])
  axis.legend(fontsize='small')
  return _save(figure, os.path.join(out_dir, f'mqar_{group}.png'))


def write(results: dict, out_dir: str) -> list[str]:
  """Draws every figure the results support; returns their paths."""
  tasks = report.task_names(results)
  paths = []
  trained = [t for t in tasks if t != 'extrapolation']  # its training is its task's
  for task in trained:
    paths += [curves(results, task, out_dir), grad_norms(results, task, out_dir)]
  if trained:
    paths.append(final_accuracy(results, trained, out_dir))
  if 'extrapolation' in tasks:
    paths.append(extrapolation(results, out_dir))
  for group in ('kv_pairs', 'width'):
    if any(group in r['job']['groups'] for r in results['runs'].values()):
      paths.append(sweep(results, group, out_dir))
  return paths
