"""Development tools: offline stand-ins for real models and the benchmarks.

- :mod:`~darkroom.devtools.tiny_model`: tiny random-weight pipelines (SD, SDXL, SD3, Flux)
  built offline, which tests and the embedded demo load through the real code;
- :mod:`~darkroom.devtools.tiny_adapters`, :mod:`~darkroom.devtools.tiny_upscaler`: tiny
  LoRAs, IP-Adapters and an x4 upscaler for them;
- :mod:`~darkroom.devtools.full_size`: SD 1.5 / SDXL with random weights, for GPU benchmarks;
- :mod:`~darkroom.devtools.bench` (generate), ``bench_qa``, ``bench_planning``, ``lineage_bench``:
  the benchmarks behind docs/benchmarks.md.

Nothing in the product imports this package (the CLI does, for ``models build-tiny`` and
``bench``).
"""
