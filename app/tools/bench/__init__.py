"""``gridwatch bench``: how fast GridWatch scores and serves, measured on the machine it runs on.

Three parts, all against the same model artifact:

1. **Scorer**: median time per call of scikit-learn's ``decision_function`` and of the compiled forest (numba and
   NumPy paths) for several batch sizes, in the same process.
2. **HTTP**, side by side in one run: the real service exactly as a user starts it (``gridwatch serve``: default
   log level with the access log, tracing as configured by default, metrics on; one worker) and the plain baseline
   (``app.tools.bench.baseline``: FastAPI + pydantic + scikit-learn), each started here on a free localhost port, pinned
   to the first CPU while the load, the probes and py-spy run on the others. Per server: the ready time (median of
   a few starts; for GridWatch also with an empty numba cache, as a fresh pod), the most rows/s with 32
   connections sending batches of 64 back to back and their p50/p99, one connection's p50/p99 (``wrk``, or this
   package's load generator without it), the resident memory after serving, and the latency at the workshop's
   load (150 requests/s, open loop, ``app.tools.loadgen``).
3. **Where the time goes**: the live GridWatch worker sampled with py-spy under the same load, stage by stage
   (``app.tools.bench.live_profile``), and the application profiled in process with cProfile
   (``app.tools.bench.request_profile``).

Results are printed and, with ``--write``, rendered as Markdown (docs/benchmarks.md) with the machine they came from,
both by one renderer (``render``). The package, by job: ``results`` (the configuration and the rows),
``scorer`` (part 1), ``servers`` (starting, pinning and timing a server), ``http`` (part 2), ``live_profile``,
``request_profile``, ``wrk``, ``server_probes`` and ``baseline`` (part 3 and their tools), ``run`` (all of it).
Importing the package imports nothing.
"""
