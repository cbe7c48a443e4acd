"""The cut. Takes the fine-tuned base and a SubnetSpec; gives the pruned model: importance scores
rank the units (nas.cut.importance, cached), the model's family slices them away physically
(nas.cut.prune), and closed-form recovery corrects what was cut (nas.cut.recovery)."""
