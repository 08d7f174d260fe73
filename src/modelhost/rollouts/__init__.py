"""The control plane of serving: rollouts, shadows and promotion (docs/rollouts.md).

* :mod:`~modelhost.rollouts.monitor`: canary guards that roll a bad canary back, and ramps
  that step a good one up and promote it;
* :mod:`~modelhost.rollouts.promotion`: promotion and rollback of production versions
  through the promotion gates, blue-green;
* :mod:`~modelhost.rollouts.shadow`: shadow versions run on copies of live requests, off the
  hot path, and compared with production;
* :mod:`~modelhost.rollouts.stats`: what canaries and shadows count in memory (one latency
  histogram for both) and how it is summed up;
* :mod:`~modelhost.rollouts.store`: the tables every replica writes those counts to.

The hot path (:mod:`modelhost.serving`) never imports this package: where it hands work to
the control plane it names a small interface of its own (``serving.router.ShadowSink``),
which :class:`~modelhost.rollouts.shadow.ShadowRunner` implements; the composition root
(``app.py``) wires the two together.
"""
