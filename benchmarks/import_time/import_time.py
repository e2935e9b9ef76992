"""Start-up of a synth-jax training process: its imports with the garbage collector on and
paused (`synth_jax/collector.py`, what `synth-jax train|eval|infer` do).

  python benchmarks/import_time/import_time.py [REPEATS]

Each measurement is a fresh process (CPU only) importing TensorFlow quietly and then
`synth_jax.train` (jax, flax, optax, orbax, seqio); its wall and CPU seconds are printed.
"""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROGRAM = """
import os, resource, sys, time
started = time.perf_counter()
from synth_jax import collector, quiet_tensorflow
if sys.argv[1] == 'paused':
  with collector.paused():
    quiet_tensorflow.load()
    import synth_jax.train
else:
  quiet_tensorflow.load()
  import synth_jax.train
usage = resource.getrusage(resource.RUSAGE_SELF)
print(f'{time.perf_counter() - started:.2f} {usage.ru_utime + usage.ru_stime:.2f}')
"""


def measure(mode: str) -> tuple[float, float]:
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
  result = subprocess.run([sys.executable, '-c', PROGRAM, mode], cwd=REPO, env=env,
                          capture_output=True, text=True, check=True)
  wall, cpu = result.stdout.split()
  return float(wall), float(cpu)


def main():
  repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
  print(f'{os.cpu_count()} CPUs; python {sys.version.split()[0]}; {repeats} processes each')
  print('collector  wall s (each)            CPU s (each)')
  for mode in ('on', 'paused', 'on', 'paused'):
    runs = [measure(mode) for _ in range(repeats)]
    print(f'{mode:9}  {" ".join(f"{w:5.2f}" for w, _ in runs):24}  '
          f'{" ".join(f"{c:5.2f}" for _, c in runs)}')


if __name__ == '__main__':
  main()
