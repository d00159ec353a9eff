"""LIBERO evaluation through the policy server.

LIBERO pins robosuite 1.4.0 (ours: 1.5.2), so its simulator runs in a virtualenv of its own
(``make libero-env``, scripts/libero_env.sh) and talks to ``actionprior serve`` over the websocket protocol:

* :mod:`~actionprior.evaluation.libero.mapping`: the standard protocol's constants (suites, step limits, warm-up),
  LIBERO observation -> our observation (state, 180-degree rotated cameras) and our action -> LIBERO's; numpy only.
* :mod:`~actionprior.evaluation.libero.episodes`: the episode plan and the resumable record of finished episodes.
* :mod:`~actionprior.evaluation.libero.runner`: runs inside the LIBERO environment (no torch, no Lightning).
* :mod:`~actionprior.evaluation.libero.evaluate`: ``actionprior eval-libero``, in our environment: checks the
  server, starts runner processes in the LIBERO environment, writes the report.
"""
