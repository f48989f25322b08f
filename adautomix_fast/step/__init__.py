"""The train step: the eager reference and the compiled fused step, what they share, and the
pieces they are made of (segmented BatchNorm, the EMA op, the in-graph optimizers, schedules,
precision)."""
