"""The quality estimators. Take a candidate; give its accuracy (or perplexity): brief distilled
fine-tuning with Lightning (nas.quality.finetune, also the base's own fine-tune), the slimmable
supernet trained once over the space (nas.quality.supernet), language-model losses and the base LM
(nas.quality.lm), and the metrics themselves (nas.quality.metrics)."""
