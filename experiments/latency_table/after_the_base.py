"""What a forward costs right after something else ran (issue 38): two cuts of the embedded MiniLM in onnxruntime int8
(dynamic, per-channel; 1 thread, batch 1, the 8 real validation reviews of the latency sample), each timed back to back
and right after each of: the base in int8, the base in fp32, a sum over 64 MB (evicts the caches), a 5 ms sleep, a
5 ms busy Python loop. Median ms per input over 12 rounds of the 8 inputs.

    python experiments/latency_table/after_the_base.py [hydra overrides]
    # e.g. base.max_steps=1 importance.max_batches=1: a barely trained base

Prints one line per cut; run it alone on the machine. Timing does not depend on the weights' values.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))


def main() -> None:
    import numpy as np
    from omegaconf import OmegaConf

    from nas.config import compose
    from nas.cost.latency import LatencySettings, PairedTimer, num_threads, onnx_file
    from nas.deploy.onnx import onnx_session
    from nas.models.registry import family_for
    from nas.spec import SubnetSpec
    from nas.study.prepare import prepare
    from nas.util import cpu_features, describe_cpu, quiet_libraries

    quiet_libraries()
    cfg = compose(["+space=triple", *sys.argv[1:]])
    c = OmegaConf.to_container(cfg, resolve=True)
    prep = prepare(cfg)
    settings = LatencySettings.from_cfg({**c["latency"], "runtime": "onnxruntime", "precision": "int8",
                                         "model": "measured"})
    timer = PairedTimer.for_prepared(prep, settings, max_length=c["max_length"])
    print(f"machine: {describe_cpu(cpu_features())}; {settings.describe()}", flush=True)
    cuts = {"L1 H2 F128 D128 C32": SubnetSpec(layers=(0,), heads=(2,), ffn=(128,), hidden=128, context=32),
            "L3 H8 F896 D256 C128": SubnetSpec(layers=(0, 1, 2), heads=(8,) * 3, ffn=(896,) * 3, hidden=256,
                                               context=128)}
    tmp = Path(tempfile.mkdtemp(prefix="after_base_"))

    def feeds(session, batches):
        wanted = {i.name for i in session.get_inputs()}
        return [{k: v for k, v in b.items() if k in wanted} for b in batches]

    with num_threads(1):
        int8 = onnx_file(prep.base, workdir=tmp, name="base", cap=timer.base_cap, precision="int8",
                         quant=settings.quant, fast_export=True)
        base8, base32 = onnx_session(int8, threads=1), onnx_session(tmp / "base.onnx", threads=1)
        base_feeds = feeds(base8, timer.sample.batches(timer.base_cap))
        junk = np.ones(64 * 2 ** 20 // 8)

        def busy(seconds: float) -> None:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                pass

        between = {"back to back": lambda i: None, "after the base int8": lambda i: base8.run(None, base_feeds[i]),
                   "after the base fp32": lambda i: base32.run(None, base_feeds[i]),
                   "after a 64 MB sum": lambda i: junk.sum(), "after a 5 ms sleep": lambda i: time.sleep(0.005),
                   "after 5 ms of Python": lambda i: busy(0.005)}
        for name, spec in cuts.items():
            model = family_for(prep.base).prune(prep.base, spec, None)
            path = onnx_file(model, workdir=tmp, name=name.replace(" ", "_"), cap=spec.context, precision="int8",
                             quant=settings.quant, fast_export=True)
            session = onnx_session(path, threads=1)
            own = feeds(session, timer.sample.batches(spec.context))

            def run(i: int) -> float:
                t0 = time.perf_counter()
                session.run(None, own[i])
                return (time.perf_counter() - t0) * 1000.0

            times: dict[str, list[float]] = {k: [] for k in between}
            for _ in range(12):
                for what, before in between.items():
                    for i in range(len(own)):
                        before(i)
                        times[what].append(run(i))
            print(f"{name}: " + " | ".join(f"{k} {statistics.median(v):.3f}" for k, v in times.items()), flush=True)
    timer.close()


if __name__ == "__main__":
    main()
