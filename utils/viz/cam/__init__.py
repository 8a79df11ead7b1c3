"""Class activation maps: what a classifier (or our grounder) looks at, for any layer of a CNN or a ViT.

- :func:`class_activation_map` and :class:`CAM`: the original CAM of Zhou et al., "Learning Deep Features for
  Discriminative Localization", CVPR 2016. For a network that ends in global average pooling (GAP) and a linear
  classifier, ``CAM_c(x, y) = sum_k w_k^c f_k(x, y)`` and the class score is ``mean_xy CAM_c(x, y) + b_c``. Our
  grounder's ``ego_pred`` is exactly this map for ``aff_fc``.
- :func:`explain` and :data:`METHODS`: gradient and perturbation CAMs (Grad-CAM, Grad-CAM++, Score-CAM, XGrad-CAM,
  Eigen-CAM, Layer-CAM, HiResCAM) from the ``grad-cam`` package (``pytorch_grad_cam``); they are not re-implemented
  here. :func:`vit_reshape_transform` turns ViT tokens into a grid for them without hard-coding 14x14: it strips
  ``num_prefix_tokens`` (class and register tokens) and reads the grid from the actual input size.
- :class:`AffordanceTarget` ("what to explain") and :class:`GrounderForCAM` (our model as an image classifier).
- :func:`feature_heatmap` and :func:`capture_features`: heatmaps of the features at any named module.
- :func:`cam_to_boxes` and :func:`box_iou`: weakly supervised localisation boxes from a map.
- ``python -m utils.viz.cam``: a side-by-side picture of several methods for one image (utils/viz/cam/cli.py).
"""

from utils.viz.cam.boxes import box_iou, cam_to_boxes
from utils.viz.cam.features import capture_features, feature_heatmap
from utils.viz.cam.methods import CAM, METHODS, class_activation_map, explain, gap_scores, method_class
from utils.viz.cam.targets import AffordanceTarget, GrounderForCAM
from utils.viz.cam.vit import ViTReshapeTransform, vit_reshape_transform

__all__ = [
    "CAM",
    "METHODS",
    "AffordanceTarget",
    "GrounderForCAM",
    "ViTReshapeTransform",
    "box_iou",
    "cam_to_boxes",
    "capture_features",
    "class_activation_map",
    "explain",
    "feature_heatmap",
    "gap_scores",
    "method_class",
    "vit_reshape_transform",
]
