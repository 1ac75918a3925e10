"""The bench's library; `python search/bench.py` is its command.

core (the `Bench` record, sizes, Ray start/stop), runner (sections in order, table, JSON),
overhead (sections overhead + packing), pipelines (data), precision (precision + mfu, and the
time-boxed compile child), memory (memory), stream (stream: the streaming data path), and
their helpers: trials (timed runs through the search's tuner), timing (step timers), probes
(host, GPU, CPU, bf16 and memory probes), ondisk (datasets on disk, the page cache).
"""
