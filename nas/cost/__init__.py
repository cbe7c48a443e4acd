"""The cost. Takes a candidate and the base; gives its latency and speedup, timed in alternating
rounds with the base on the task's own inputs in a named runtime (nas.cost.latency; generation
latency of LMs: nas.cost.generation), FLOPs per input and size."""
