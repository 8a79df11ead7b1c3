"""The configuration schema: one dataclass per section, every option with its default, help text and choices.

The defaults are the published LOCATE recipe on AGD20K Seen. YAML files in configs/ hold only what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BASELINES",
    "SPLITS",
    "BackboneConfig",
    "BitAlignConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ExtensionsConfig",
    "LossConfig",
    "ModelConfig",
    "OutputConfig",
    "SyntheticConfig",
    "TextConfig",
    "TrainConfig",
    "VizConfig",
]

SPLITS = ("Seen", "Unseen")
BASELINES = ("center", "uniform", "object")


class ConfigError(ValueError):
    """A configuration key, type or value is invalid. The message names the key and what to do."""


def _f(default: Any, help: str, choices: tuple[Any, ...] | None = None) -> Any:
    """A dataclass field with help text (and optional choices), used by --help and validation."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: _copy(d), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(x: Any) -> Any:
    if isinstance(x, list):
        return [_copy(v) for v in x]
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    return x


def _section(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help, "choices": None})


# ---------------------------------------------------------------------------------------------- schema


@dataclass
class SyntheticConfig:
    enabled: bool = _f(
        False,
        "Generate the offline synthetic AGD20K-format world at data.root when it is not there yet (then reuse it). "
        "On for configs/synthetic.yaml; off for real AGD20K.",
    )
    seed: int = _f(0, "Generator seed of the synthetic world. Change it to check that results hold on other worlds.")
    image_size: int = _f(128, "Side of the generated images in pixels (128 keeps the CPU demo fast).")
    exo_per_folder: int = _f(24, "Exocentric training images per <affordance>/<object> folder.")
    ego_per_folder: int = _f(8, "Egocentric training images per <affordance>/<object> folder.")
    test_per_folder: int = _f(6, "Egocentric test images (with GT heatmaps) per <affordance>/<object> folder.")


@dataclass
class DataConfig:
    root: str = _f(
        "data/AGD20K",
        "Dataset root holding Seen/ and Unseen/ in AGD20K's layout (python -m datasets.agd20k ROOT checks it). For "
        "the synthetic world: where it is generated and cached.",
    )
    splits: list[str] = _f(
        ["Seen"],
        "AGD20K splits to run, each trained and evaluated on its own (Unseen test objects never appear in the Unseen "
        "training set). Usual: [Seen] or [Unseen]; the synthetic demo runs [Seen, Unseen].",
    )
    image_size: int = _f(224, "Network input side (random crop in training, resize at test). Multiple of the patch.")
    resize_size: int = _f(256, "Training images are resized so that their shorter side has this length, then cropped.")
    eval_size: int = _f(224, "Resolution at which predictions and GT are compared (the published protocol: 224).")
    num_exo: int = _f(3, "Exocentric images per training sample (anchor + partners from the same folder).")
    num_workers: int = _f(
        -1,
        "DataLoader worker processes: -1 picks one per usable CPU but one (at most 8); 0 loads in the main process "
        "(easiest to debug). More than the usable CPUs are lowered to that, with one warning.",
    )
    views: int = _f(
        0,
        "Augmented views per training image: 0 draws a fresh crop and flip at every use (the published recipe); K > 0 "
        "gives every image K fixed views and each use picks one, which is what train.cache stores.",
    )
    view_seed: int = _f(0, "Seed of the fixed views (independent of the training seed, so runs can share a cache).")
    reduced_decode: bool = _f(
        True,
        "Decode a JPEG at 1/2, 1/4 or 1/8 size (in the DCT domain, like a good downscale) when it stays at least as "
        "large as the transform needs; off decodes every pixel, as the published code does.",
    )
    resize: str = _f(
        "opencv",
        "Resize of the input images: 'opencv' (area averaging when shrinking, bilinear when growing) or 'pil' (PIL's "
        "antialiased bilinear, what torchvision's Resize does to the published code's PIL images; slower). Both keep "
        "the geometry: shorter side to resize_size in training, image_size x image_size at test.",
        ("opencv", "pil"),
    )
    exo_partners: str = _f(
        "distinct",
        "How the num_exo - 1 partner exocentric images come from the anchor's folder: 'distinct' (other images, all "
        "different, whenever the folder holds num_exo images) or 'published' (LOCATE's loader: distinct only when it "
        "holds more than num_exo; a folder of exactly num_exo then repeats images, the anchor included).",
        ("distinct", "published"),
    )
    gt_cache: str = _f("", "Folder for a cache of resized GT maps (.npy, float64); empty disables the cache.")
    depth_root: str = _f(
        "",
        "AGD20K-Depth root for BiT-Align's depth prompt: the layout of data.root with one 8-bit <stem>_depth.png per "
        "image (e.g. <depth_root>/Seen/trainset/exocentric/<aff>/<obj>/<stem>_depth.png). Empty: no depth prompt.",
    )
    synthetic: SyntheticConfig = _section(SyntheticConfig, "The offline synthetic world (datasets/synthetic.py).")


@dataclass
class BackboneConfig:
    name: str = _f(
        "vit_small_patch16_224.dino",
        "timm model name of the ViT. Also vit_base_patch8_224.dino, vit_small_patch14_dinov2.lvd142m, "
        "vit_small_patch14_reg4_dinov2.lvd142m.",
    )
    weights: str = _f(
        "",
        "Pretrained weights: a local file (official DINO .pth, timm .pth or .safetensors), 'hub' to download through "
        "timm (needs network), or empty for random init (tests and the offline world only).",
    )
    descriptor: str = _f(
        "key",
        "Patch descriptors: 'key' (keys of the last attention block, LOCATE) or 'token' (final normed tokens, "
        "BiT-Align).",
        ("key", "token"),
    )
    pos_embed_resize: str = _f(
        "timm",
        "How the position embedding meets the input grid: 'timm' (stored at the input size, resampled once with "
        "antialiased bicubic) or 'dinov2' (kept at the checkpoint's grid and resized on every call as DINOv2 does: "
        "bicubic, no antialias, scale factor (grid + 0.1) / stored grid; BiT-Align's published code).",
        ("timm", "dinov2"),
    )
    kwargs: dict[str, Any] = _f(
        {},
        "Extra keyword arguments for timm.create_model (e.g. {patch_size: 8, embed_dim: 192, depth: 4}) to build a "
        "small ViT for the offline world.",
    )


@dataclass
class TextConfig:
    encoder: str = _f(
        "none",
        "Text encoder for BiT-Align's head selection, gating and contrastive loss: 'none', 'clip' (open_clip text "
        "tower, frozen) or 'learned' (one learned embedding per class; it knows only the class names).",
        ("none", "clip", "learned"),
    )
    clip_model: str = _f("ViT-B-16", "open_clip model name whose text tower is used.")
    clip_weights: str = _f(
        "", "CLIP weights: a local checkpoint file, 'hub' (open_clip pretrained tag, needs network), or empty (random)."
    )
    prompt_tokens: int = _f(0, "Prompt (context) tokens before the class name; 0 uses the plain name.")
    template: str = _f("{}", "Text template for class names, e.g. 'a photo of something to {} with'.")
    prompt_position: str = _f(
        "after_start",
        "Where the prompt tokens go: 'after_start' (between the start token and the words, CoOp) or 'before_start' "
        "(ahead of the start token, BiT-Align's published code).",
        ("after_start", "before_start"),
    )
    train_prompts: bool = _f(
        True, "Train the prompt tokens; false keeps them at their random initial values (BiT-Align's published code)."
    )
    prompt_init_std: float = _f(
        0.02, "Standard deviation of the prompt tokens' random initial values (CoOp: 0.02; BiT-Align: 1)."
    )
    end_token: str = _f(
        "shifted",
        "Which position is read as the text feature: 'shifted' (the end token, wherever the prompts moved it) or "
        "'unshifted' (the end token's index in the text without prompts, BiT-Align's published code: with prompts "
        "before the start token it reads an early word, so names of equal token length share one feature).",
        ("shifted", "unshifted"),
    )
    activation: str = _f(
        "auto",
        "Activation of the text tower: 'auto' (from the weights' origin: QuickGELU for OpenAI's weights, recognised "
        "in a TorchScript archive, a state dict saved from one or the 'openai' hub tag, or for a '-quickgelu' model "
        "name; else the model config's), 'quick_gelu' or 'gelu'. A choice that contradicts the weights is an error.",
        ("auto", "quick_gelu", "gelu"),
    )


@dataclass
class BitAlignConfig:
    gate: str = _f(
        "cosine",
        "Text gating rule: 'cosine' (x * sigmoid(logit scale * cos(token, text)) + x, the paper's description) or "
        "'published' (BiT-Align's code: AttentionPool2d output tokens L2-normalised over the batch axis, dotted with "
        "the text, L2-normalised over space, sigmoid; nearly a flat x1.5, and batch-size dependent).",
        ("cosine", "published"),
    )
    head_choice: str = _f(
        "sample",
        "CLS head fused into each sample's saliency: 'sample' (its own text-selected head) or 'batch' (BiT-Align's "
        "code: the mean of the heads chosen by every sample of the batch, each on the sample's own attention).",
        ("sample", "batch"),
    )
    pool_heads: int = _f(
        0, "Heads of the AttentionPool2d; 0 picks the ViT's head count (BiT-Align's code: 64, i.e. 6 channels each)."
    )
    pool_pos_embed: str = _f(
        "learned",
        "AttentionPool2d position embedding: 'learned' or 'fixed' (kept at its random initial values, as in "
        "BiT-Align's code, where its name keeps it out of the optimiser).",
        ("learned", "fixed"),
    )
    logit_scale: str = _f(
        "learned",
        "Image-text logit scale (starts at 1/0.07): 'learned' or 'fixed' (BiT-Align's code never updates it).",
        ("learned", "fixed"),
    )


@dataclass
class ExtensionsConfig:
    appearance: float = _f(
        0.0,
        "Weight of seven per-patch appearance statistics (mean and standard deviation of each colour, texture energy) "
        "appended to the descriptors; 0 keeps the published descriptors. The offline world's random ViT keeps too "
        "little of a patch's look.",
    )
    center_descriptors: bool = _f(
        False,
        "Subtract the running mean of the descriptors before the part prototypes and the prototype loss compare them "
        "by cosine. A random ViT's descriptors share a large common component.",
    )
    class_contrast: bool = _f(
        False,
        "Choose each sample's part prototype by class contrast (the cluster most visible in recent egocentric images "
        "of its own class and least in those of any other class) instead of LOCATE's PartIoU.",
    )
    contrast_weight: float = _f(0.5, "With class_contrast: how much a cluster's presence in other classes counts.")
    contrast_bank: int = _f(8, "With class_contrast: egocentric training images remembered per class.")
    topk_pool: float = _f(
        0.0,
        "Pool each class map's top fraction of positions into its logit instead of LOCATE's global average "
        "(0 keeps the average). Average pooling can predict a thin object's class from the background's area.",
    )
    object_prior: float = _f(
        0.0,
        "Share of the model's own class-agnostic object map (the min-max of the log-sum-exp of its class maps) mixed "
        "into every predicted heatmap, both scaled to sum 1 on the patch grid; 0 keeps the label's map alone. "
        "Prediction only: training is unchanged.",
    )
    oracle_prototypes: bool = _f(
        False,
        "A diagnostic, not the method: train with the part prototypes of the true affordance-part masks of the "
        "egocentric images (the synthetic world only), to bound what better prototype selection could give.",
    )


@dataclass
class ModelConfig:
    backbone: BackboneConfig = _section(BackboneConfig, "The frozen ViT backbone.")
    text: TextConfig = _section(TextConfig, "The text encoder (BiT-Align).")
    saliency: str = _f(
        "locate",
        "Egocentric saliency: 'locate' (fixed CLS-attention heads) or 'bitalign' (AttentionPool2d mask fused with the "
        "text-selected head; needs a text encoder).",
        ("locate", "bitalign"),
    )
    cls_heads: list[int] = _f([0, 1, 3], "CLS-attention heads averaged by the 'locate' saliency (LOCATE: 0, 1, 3).")
    text_gating: bool = _f(False, "Gate egocentric tokens by their similarity to the label's text feature (BiT-Align).")
    num_parts: int = _f(3, "K, the k-means clusters (candidate parts) per sample (LOCATE: 3).")
    aff_cam_thd: float = _f(0.6, "Exocentric CAM threshold (after min-max) selecting the patches that are clustered.")
    part_iou_thd: float = _f(0.6, "Minimum PartIoU score for a cluster to become the sample's part prototype.")
    kmeans_iters: int = _f(300, "Maximum Lloyd iterations of the k-means (it stops earlier when it converges).")
    kmeans: str = _f(
        "kmeanspp",
        "k-means of the part prototypes: 'kmeanspp' (seeded k-means++ start, stops when the assignment is stable, an "
        "empty cluster keeps its centroid) or 'locate' (LOCATE's fast-pytorch-kmeans: random data points of the "
        "global torch RNG as the start, stops when the summed squared centroid shift is <= 1e-4, an empty cluster "
        "becomes a zero centroid, and a part with an empty mask wins as its published NaN score does, so such a "
        "sample gets no prototype). The reference configs use 'locate' (docs/deviations.md).",
        ("kmeanspp", "locate"),
    )
    proj_kernels: list[int] = _f(
        [3, 3],
        "Kernel size of each convolution in aff_exo_proj and aff_ego_proj (LOCATE: [3, 3]); [1, 1] scores each patch "
        "by its own descriptor only.",
    )
    adapter_ratio: int = _f(4, "Hidden width of the aff_proj adapter MLP, as a multiple of the descriptor width.")
    adapter_residual: bool = _f(
        True, "The aff_proj adapter adds its input back, x + MLP(x) (LOCATE); false gives MLP(x) (BiT-Align's code)."
    )
    bitalign: BitAlignConfig = _section(
        BitAlignConfig,
        "BiT-Align's text-guided parts (with model.saliency=bitalign / model.text_gating): the defaults follow the "
        "paper's description; configs/reference/bitalign_*.yaml switch each to what the published code does.",
    )
    extensions: ExtensionsConfig = _section(
        ExtensionsConfig,
        "Our additions to the published method (models/extensions/), developed on the offline world; all off in the "
        "AGD20K configs.",
    )


@dataclass
class LossConfig:
    proto: float = _f(1.0, "Weight of the part-prototype hinge loss (0 disables it; an ablation).")
    conc: float = _f(0.07, "Weight of the concentration loss on the egocentric class maps.")
    contra: float = _f(1.0, "Weight of the image-text contrastive loss (used only with a text encoder).")
    sep: float = _f(
        0.0,
        "Weight of the class-map separation loss (ours, 0 in the published recipe): the maps of the affordances an "
        "egocentric image is predicted to have must not overlap.",
    )
    border: float = _f(
        0.0,
        "Weight of the border loss (ours, 0 in the published recipe): the share of the egocentric label map on the "
        "outermost ring of patches, a boundary prior for object-centred images.",
    )
    proto_warmup_epochs: int = _f(1, "Epochs before the prototype loss starts (LOCATE: it starts at the second).")
    proto_margin: float = _f(
        0.5,
        "Hinge margin of the prototype loss, max(0, 1 - cos - margin) (LOCATE: 0.5). The loss is silent once the "
        "cosine exceeds 1 - margin; lower it when descriptors are less spread out than DINO's.",
    )


@dataclass
class TrainConfig:
    epochs: int = _f(15, "Training epochs (the published schedule: 15).")
    batch_size: int = _f(16, "Samples per step, each 1 egocentric + num_exo exocentric images.")
    lr: float = _f(1e-3, "Base learning rate (weights x1, biases x2, the 'fc' layers x10, their biases x20).")
    head_lr_mult: float = _f(
        10.0,
        "Learning-rate multiplier of the parameters whose name contains 'fc': the adapter's fc1/fc2 and aff_fc, not "
        "the adapter's LayerNorm (published: 10; 1 suits AdamW).",
    )
    bias_lr_mult: float = _f(2.0, "Learning-rate multiplier of biases (published: 2; their heads get both).")
    momentum: float = _f(0.9, "SGD momentum (Nesterov).")
    nesterov: bool = _f(True, "Use Nesterov momentum.")
    weight_decay: float = _f(5e-4, "Weight decay.")
    optimizer: str = _f("sgd", "Optimiser: 'sgd' (published recipe) or 'adamw'.", ("sgd", "adamw"))
    param_groups: str = _f(
        "ours",
        "Trainable parameters that are neither weights nor biases (prompt tokens, a logit scale, a positional "
        "embedding): 'ours' trains them with the weights; 'published' leaves them out of the optimiser, as LOCATE's "
        "and BiT-Align's get_optimizer do (they never change). Same groups for LOCATE's model.",
        ("ours", "published"),
    )
    compile: bool = _f(
        False,
        "torch.compile the backbone and the heads (the fixed-shape parts; the part selection stays eager). Pays on "
        "GPUs; on CPUs the first steps spend minutes compiling. docs/benchmarks.md measures it.",
    )
    cudnn_deterministic: bool = _f(
        False,
        "Use deterministic cuDNN convolution algorithms (as LOCATE's set_seed does); slower, and it only changes "
        "GPU rounding from run to run.",
    )
    drop_last: bool = _f(
        True,
        "Drop the last incomplete training batch of an epoch (BatchNorm and the per-batch k-means want full "
        "batches); the published code trains on it (false).",
    )
    lr_step: int = _f(5, "StepLR: multiply the learning rate by lr_gamma every lr_step epochs (0: constant rate).")
    lr_gamma: float = _f(0.1, "StepLR decay factor.")
    amp: str = _f(
        "auto",
        "Mixed precision: 'auto' (bf16 autocast on CUDA and on CPUs with native bf16 units, fp32 elsewhere), "
        "'bf16' (force), 'off'. k-means, losses and metrics always run in fp32.",
        ("auto", "bf16", "off"),
    )
    grad_clip: float = _f(0.0, "Clip the gradient norm to this value; 0 disables clipping.")
    cache: bool = _f(
        False,
        "Compute the frozen backbone's features of every training image's data.views views once, store them on disk "
        "(train.cache_dir, memory-mapped) and train the heads on them: every epoch after the build skips the backbone. "
        "Reused by later runs with the same backbone, weights, image size and views; rebuilt when any changes.",
    )
    cache_dir: str = _f("cache", "Folder of the feature caches (one sub-folder per dataset split and backbone).")
    cache_dtype: str = _f(
        "float16",
        "Storage precision of the cached features: float16 (half the disk) or float32 (exactly the backbone's "
        "fp32 output).",
        ("float16", "float32"),
    )
    max_steps_per_epoch: int = _f(0, "Stop each epoch after this many steps (0: the whole dataset). For quick checks.")
    log_every: int = _f(20, "Log training scalars every this many steps.")


@dataclass
class EvalConfig:
    every: int = _f(
        1,
        "Evaluate on the test split every this many epochs (0: only after the last). The reported number is always "
        "the last epoch; the test-selected best epoch is reported beside it, labelled.",
    )
    batch_size: int = _f(32, "Test images per batch.")
    baselines: list[str] = _f(
        [],
        "Baselines evaluated through the same code path after training: any of center, uniform, object "
        "(object needs masks, as the synthetic world has).",
    )
    viz: int = _f(8, "Prediction | GT triptychs written after training (0: none).")


@dataclass
class VizConfig:
    every: int = _f(200, "Write TensorBoard pictures every this many training steps (0: never).")
    num: int = _f(4, "Samples shown per TensorBoard picture.")


@dataclass
class OutputConfig:
    dir: str = _f("", "Run folder. Empty: runs/<name>-<timestamp>.")
    name: str = _f("run", "Run name, used in the default run folder.")
    save_backbone: bool = _f(False, "Store the frozen backbone weights in checkpoints too (normally only named).")
    tensorboard: bool = _f(True, "Write TensorBoard event files into the run folder.")


@dataclass
class Config:
    data: DataConfig = _section(DataConfig, "Data.")
    model: ModelConfig = _section(ModelConfig, "Model.")
    loss: LossConfig = _section(LossConfig, "Loss weights.")
    train: TrainConfig = _section(TrainConfig, "Optimisation.")
    eval: EvalConfig = _section(EvalConfig, "Evaluation.")
    viz: VizConfig = _section(VizConfig, "TensorBoard pictures.")
    output: OutputConfig = _section(OutputConfig, "Outputs.")
    device: str = _f("auto", "'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    seed: int = _f(0, "Seed for Python, numpy, torch and the data pairing.")
