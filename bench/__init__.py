"""Benchmarks of the relay against its ceilings (issue 6, "Measure it"): ``python -m bench``.

- :mod:`bench.deliveries`: pre-signed deliveries, built before the clock starts;
- :mod:`bench.ceiling`: the bare aiohttp app (the HTTP ceiling), optionally with one verify;
- :mod:`bench.loadgen`: the Python load generator, closed-loop or open-loop;
- :mod:`bench.wrk` and ``cycle.lua``: wrk (closed-loop) cycling through the same requests;
- :mod:`bench.kafkaperf`: Kafka's own ``ProducerPerformance``;
- :mod:`bench.bridge` (``bridge-pom.xml``) and :mod:`bench.peer_fastapi`: the two peers, the
  Strimzi Kafka Bridge and a hand-written FastAPI/aiokafka endpoint;
- :mod:`bench.procstat`: CPU and memory of a process, from ``/proc``;
- :mod:`bench.targets`: starting and stopping the servers under test;
- :mod:`bench.report`: the JSON, the Markdown table and the plot;
- :mod:`bench.run`: the entry point.

``baseline/`` keeps the run that ``docs/benchmarks.md`` reports (and, in ``earlier/``, the
two runs before it). Not part of the test suite: it needs a broker, free cores and minutes.
"""
