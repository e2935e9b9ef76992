"""Synthetic diagnostics: what each attention variant can and cannot learn (`synth-jax diagnose`).

  model.py          decoder-only causal LM from the T5 layers and any registry attention
  tasks.py          on-device generators: mqar, induction, selective_copy, overwrite
  train.py          equal-budget training loop: learning curves, steps to 90%, gradient norms
  extrapolation.py  evaluation at multiples of the training length ("cannot run" when refused)
  statistics.py     attention entropy, head similarity, W_Q/W_K spectra, gradient norms
  attention_maps.py `synth-jax attention-maps`: a trained T5 run's per-head maps as PNG
  presets.py        tiny (a laptop CPU in minutes) and full (the one-GPU sweep, in parts)
  run.py            the `diagnose` command: plan, parts, results.json
  claims.py         the claims table: outcomes decided from the numbers by stated thresholds
  report.py         report.md from results.json
  plots.py          PNG figures from results.json
"""
