"""Names the metrics accept, in a module without heavy imports (the command line builds its
choices from them and must start fast)."""

#: regions over which the multi-rater metrics are computed (see :mod:`.multirater`)
REGIONS: tuple[str, ...] = ("whole", "body", "dilated")

#: ways of combining ensemble members' probabilities (see :class:`.uncertainty.UncertaintyAccumulator`)
COMBINE_METHODS: tuple[str, ...] = ("mean", "logit-mean", "weighted")
