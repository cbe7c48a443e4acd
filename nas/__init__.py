"""nas-prune: structured-pruning architecture search for pretrained transformers.

The packages, in the order a run goes through them (each depends only on those above it):

    nas.util, nas.redact, nas.spec, nas.config   shared vocabulary: helpers, password redaction,
                                                 the SubnetSpec, composing the Hydra config
    nas.data      the task: labelled texts or plain text, split three ways, tokenized and batched
    nas.models    model families (encoder, decoder) behind one interface, and loading them
    nas.cut       the cut: importance scores, physical pruning, training-free recovery
    nas.quality   how good a candidate is: fine-tuning, distillation, the supernet, metrics
    nas.deploy    export formats: HF folder, ONNX, the exported bundle
    nas.cost      how fast it is: latency paired with the base on real inputs, FLOPs, size
    nas.study     the study: spaces, preparation, one trial, the loop, the final stage, storage, reports
    nas.search, nas.export, nas.train    the three commands (python -m nas.search | export | train)
"""
