"""Frame, segmentation and CNN-LSTM models (Roy et al. 2020; Barros et al. 2021).

Every frame model returns a `FrameOutput`, so the training loop has one forward line and
one loss line (`lus_dist.training.losses.frame_loss`) whatever the model: the loss reads what the
model put in `aux` (crop-2 logits, scales and their prior) and which loss it was built for.
"""
from __future__ import annotations

from .output import FrameOutput
from .weights import check_and_load, load_weights_file, read_state_dict
from .registry import FRAME_MODELS, build_frame_model
from .localization import stn_boxes
from .seg import SEG_ARCHS, build_seg_model
from .cnnlstm import CNNLSTM, CNNLSTMConfig, extract_features
from .input_norm import restore_input_norms
from .encoder import (ENCODER_FILE, ContrastiveModel, build_encoder, encoder_slot, export_encoder,
                      load_encoder)
from .imagenet import IMAGENET

__all__ = ["FrameOutput", "load_weights_file", "FRAME_MODELS", "build_frame_model",
           "stn_boxes", "SEG_ARCHS", "build_seg_model", "CNNLSTM",
           "CNNLSTMConfig", "extract_features", "read_state_dict", "check_and_load",
           "ENCODER_FILE", "ContrastiveModel", "build_encoder", "encoder_slot", "export_encoder", "load_encoder",
           "restore_input_norms", "IMAGENET"]
