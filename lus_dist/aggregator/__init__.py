"""Video-level aggregation of frame predictions (Roy et al. 2020 uninorms).

Frame model -> `write_predictions` (HDF5/Parquet) -> `read_predictions` -> `pad_videos`
-> `UninormAggregator` trained and evaluated by `run_protocol` (and `lus aggregate`).
"""
from lus_dist.aggregator.data import (FramePredictions, PredictionsError, VideoBatch,
                                      import_authors, pad_videos, read_predictions,
                                      write_predictions)
from lus_dist.aggregator.protocols import PROTOCOLS, ProtocolError, make_folds
from lus_dist.aggregator.train import (AggregatorConfig, ProtocolResult, build_model, fit,
                                       fit_all, run_protocol, save_aggregator)
from lus_dist.aggregator.uninorm import (BinaryUninormAggregator, ScoreHierarchyAggregator,
                                         UninormAggregator, argmax_mean, majority_argmax,
                                         max_argmax)

__all__ = ["FramePredictions", "PredictionsError", "VideoBatch", "import_authors",
           "pad_videos", "read_predictions", "write_predictions", "PROTOCOLS",
           "ProtocolError", "make_folds", "AggregatorConfig", "ProtocolResult", "build_model",
           "fit", "fit_all", "run_protocol", "save_aggregator", "UninormAggregator",
           "BinaryUninormAggregator", "ScoreHierarchyAggregator", "argmax_mean", "max_argmax",
           "majority_argmax"]
