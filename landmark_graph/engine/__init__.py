"""The applications built on the layers: the training engine and its checkpoints, the
``landmark-graph`` command, checkpoint export, inference on photos with face detectors, drawings,
and the backbones' third-party glue.

Nothing in the core (:mod:`landmark_graph` without ``engine``) imports these modules; import the
one you need, e.g. ``from landmark_graph.engine.training import TrainConfig, train``.
"""
