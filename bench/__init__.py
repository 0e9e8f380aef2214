"""``make bench``: the whole stack under wrk, every figure a ratio to a hello-world baseline.

``python -m bench`` (see ``bench/__main__.py`` for the options) starts its own stack on free
ports, seeds it, drives it through nginx and prints and saves a table under
``bench/results/``. The modules: ``runner`` (the sequence), ``scenarios`` (what is measured;
add rows there), ``loadgen`` (wrk), ``wrk/*.lua`` (the requests), ``seed`` (data over SQL),
``procstat`` (CPU and memory from /proc), ``probes`` (database and metrics readings taken
during a run), ``report`` (markdown and JSON), ``hello`` (the baseline server).
"""
