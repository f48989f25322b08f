"""Training methods: AdAutoMix and the paper's baselines, one module each.

Every model derives from :class:`~adautomix_fast.methods.base.MixModel` and offers the same
interface to the engine, the trainer and the evaluation tools:

* ``sample_plan(batch_size, generator=None, n=None)`` and ``step_losses(x, y, plan)`` (a dict with
  ``loss`` and every logged term), ``fused_losses`` for the fused arrangement;
* ``HEADS`` (evaluation heads, "<network>_<head>"), ``HEADLINE`` (the head the paper reports),
  ``eval_logits(x, heads=None) -> {head: logits}`` and ``head_network(head) -> (network, attr)``;
* ``trainable_parameters()``, and ``ema_pairs()`` / ``update_teacher(m)`` when ``has_teacher``;
* ``visualize(x, y, plan)``: the mixed samples of a step, for the training pictures;
* its self-description (``name``, ``title``, ``options``, ``defaults``: methods/options.py).

Adding a method is adding one module here: ``adautomix_fast.registry`` finds every method class
in this package, and the config fields, flags, validation and presets follow from its
declaration. Nothing is imported here, so that a method module can import its siblings freely.
"""
