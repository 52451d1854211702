"""Dataclass schemas for every config group; a typo in a key or a wrong type fails at start-up.

Each key is defined once here with its default and a one-line comment. The YAML files in
``conf/`` only choose between presets; the paper's values are the defaults below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from unrealnas.config.experiment import ExperimentConfig


class Choice(str, Enum):
    """A setting with a fixed set of values: composition refuses any other, listing the choices.

    A member compares equal to its text and prints as it (``search.amp == "bf16"``, ``f"{amp}"``).
    """

    def __str__(self) -> str:
        return str(self.value)


def _choice(name: str, *values: str) -> type[Choice]:
    """A :class:`Choice` named ``name`` whose members are ``values`` (member name = value)."""
    return Choice(name, [(v, v) for v in values], module=__name__, qualname=name)


Label = _choice("Label", "random", "true", "rotation")
SearchAmp = _choice("SearchAmp", "auto", "bf16", "off")
TrainAmp = _choice("TrainAmp", "auto", "bf16", "fp16", "off")
Switch = _choice("Switch", "auto", "on", "off")  # channels_last, cuda_graph: auto decides by device (and method)
Supernet = _choice("Supernet", "fused", "per_edge")
Split = _choice("Split", "same_flipped", "other_half")
AlphaInit = _choice("AlphaInit", "zeros", "randn")
NormalizeOver = _choice("NormalizeOver", "all", "undecided")
NoiseDtype = _choice("NoiseDtype", "float16", "float32")
RealSource = _choice("RealSource", "cifar10", "cifar100", "digits")
NetStem = _choice("NetStem", "auto", "cifar", "imagenet")
Optimizer = _choice("Optimizer", "sgd", "adam")
Schedule = _choice("Schedule", "cosine", "exp", "constant")
Uncertainty = _choice("Uncertainty", "u_ones", "u_zeros", "ignore")
Loader = _choice("Loader", "torch", "ffcv")
LauncherName = _choice("LauncherName", "local", "slurm")
OutputFormat = _choice("OutputFormat", "text", "json")
Augment = _choice("Augment", "crop_flip", "none")
Recompute = _choice("Recompute", "none", "cell")  # search.recompute: what backward recomputes instead of keeping
RECOMPUTE = tuple(str(m) for m in Recompute)  # its values, for the engine and the bench


@dataclass
class PathsConfig:
    data: str = "./datasets"  # folder that holds generated datasets (one sub-folder each)
    runs: str = "./runs"  # folder that holds run directories (runs/search/<id>, runs/train/<id>)


@dataclass
class FractalConfig:
    num_categories: int = 100  # FracDB-100: fractal categories (IFS systems)
    min_maps: int = 2  # affine maps per IFS system: uniform in [min_maps, max_maps]
    max_maps: int = 7
    filling_rate: float = 0.2  # accept a system when lit pixels / all pixels >= this
    search_points: int = 100_000  # chaos-game points used to measure the filling rate
    search_canvas: int = 512  # canvas (px) on which the filling rate is measured (reference)
    search_pad: int = 6  # border (px) left when the point cloud is rescaled into a canvas
    render_resolution: int = 362  # canvas (px) each image is rendered on, then area-downsampled (FractalDB: 362); 0 = data.resolution
    render_points: int = 0  # points per render; 0 = reference density, 200k * (render_resolution / 362)^2 (200k at 362)
    weight_step: float = 0.4  # k of the weight rows (1-2k, 1-k, 1+k, 1+2k); the reference default is 0.1
    patch: bool = True  # draw each point as a 3x3 patch with a random non-empty mask (FractalDB)
    color: bool = False  # False: gray 127 (FractalDB's patch_gray default); True: hue wheel over the points
    flips: bool = True  # every weight row with each of the 4 flips (none, h, v, both), balanced, as the reference
    max_tries: int = 200_000  # give up the category search after this many rejected systems


@dataclass
class DataConfig:
    name: str = "rlrn"  # generator: rlrn | rlgd | rlrd | cifar10 | cifar100 | digits (true labels)
    label: Label = Label.random  # random (uniform, drawn once per dataset and seed) | true | rotation (UnNAS: every image at 0/90/180/270 degrees, labelled by the rotation; searches only, not noise)
    num_classes: int = 5000  # random-label classes (2..100000); ignored for true labels
    num_images: Optional[int] = 50_000  # images in the train split; null = all of the source
    resolution: int = 32  # image height = width (px)
    channels: int = 3  # image channels
    shard_size: int = 10_000  # images per HDF5 shard (does not change any byte of the data)
    workers: int = 0  # processes rendering RLGD images (0 = one per available core; does not change any byte)
    noise_dtype: NoiseDtype = NoiseDtype.float16  # RLRN storage dtype: float16 | float32
    root: Optional[str] = None  # folder holding cifar-10-batches-py / cifar-100-python (torchvision's convention)
    source: RealSource = RealSource.cifar10  # real-image source of rlrd: cifar10 | cifar100 | digits (ships with scikit-learn)
    seed: Optional[int] = None  # seed of the dataset (images and labels); null = the master seed (which seeds the search)
    id: Optional[str] = None  # dataset folder name under paths.data; null = derived from the parameters
    verify_on_load: bool = True  # check every shard's size and sha256 before training on it
    fractal: FractalConfig = field(default_factory=FractalConfig)


@dataclass
class SGASConfig:
    criterion: int = 1  # 1 = importance x certainty; 2 = also x stability
    warmup_dec_epoch: int = 9  # first decision at this epoch
    decision_freq: int = 5  # then one decision every this many epochs
    history_size: int = 4  # epochs of history for the stability criterion
    batch_increase: int = 8  # batch size grows by this after each decision
    normalize_over: NormalizeOver = NormalizeOver.all  # min-max of the scores over all 14 edges (reference) | undecided (edges not yet fixed)


@dataclass
class RLNASConfig:
    """search=rlnas (megvii-model/RLNAS, darts_search_space/cifar10): the supernet's augmentation and the evolution."""

    augment: Augment = Augment.crop_flip  # supernet images: crop_flip (RLNAS train_supernet/utils.py: pad-4 crop + flip) | none
    population: int = 50  # candidates per generation (RLNAS evolution_search/config.py population_num)
    parents: int = 10  # best candidates kept as parents (config.py select_num)
    mutations: int = 25  # mutants per generation (config.py mutation_num)
    crossovers: int = 25  # crossover children per generation (config.py crossover_num); the rest are random
    mutation_prob: float = 0.1  # each code redrawn with this probability (config.py m_prob)
    generations: int = 20  # generations evaluated (config.py max_epochs)
    mutate_reduce: bool = False  # also mutate the reduction cell (RLNAS search.py mutates the normal cell's 14 codes only)


@dataclass
class SearchConfig:
    method: str = "darts"  # darts (first order) | darts2 (second order) | sgas_c1 | sgas_c2 | pcdarts (partial channels + edge normalisation, first order) | rlnas (single-path supernet + angle evolution) | random (a sampled cell, no search)
    layers: int = 8  # cells in the supernet
    init_channels: int = 16  # channels of the first cell
    nodes: int = 4  # intermediate nodes per cell
    stem_multiplier: int = 3
    batch_size: int = 64
    resolution: Optional[int] = None  # resize the stored images to this size for the search (null = as stored)
    warmup_epochs: int = 5  # epochs with frozen alphas (weights only)
    epochs: int = 50  # search epochs after the warm-up
    lr: float = 0.025  # SGD learning rate of the weights, cosine-annealed
    lr_min: float = 0.0  # end of the cosine schedule (paper 0; reference 0.001)
    momentum: float = 0.9
    weight_decay: Optional[float] = None  # null = 0 for random labels, 3e-4 for true labels
    grad_clip: float = 5.0
    arch_lr: float = 3e-4  # Adam learning rate of the alphas
    arch_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])  # paper text: (0.5, 0.99)
    arch_weight_decay: Optional[float] = None  # null = 0 for random labels, 1e-3 for true labels
    alpha_init: AlphaInit = AlphaInit.zeros  # zeros (UnrealNAS) | randn (reference: 1e-3 * randn)
    split: Optional[Split] = None  # same_flipped | other_half; null = same_flipped for random labels
    num_train: int = 25_000  # images of the weight step (paper Fig. 3: 25k for every dataset); 0 = use train_portion
    train_portion: float = 0.5  # fraction of the train split used for the weight step when num_train is 0
    sgas: SGASConfig = field(default_factory=SGASConfig)
    rlnas: RLNASConfig = field(default_factory=RLNASConfig)
    amp: SearchAmp = SearchAmp.off  # off (fp32; TF32 matmuls on CUDA) | bf16 | auto (bf16 on CUDA): bf16 until a GPU check shows equal genotypes
    channels_last: Switch = Switch.auto  # auto (on CUDA) | on | off
    compile: bool = False  # torch.compile the supernet
    supernet: Supernet = Supernet.fused  # fused (edges of one state stacked into one set of kernels) | per_edge (reference)
    cuda_graph: Switch = Switch.auto  # auto (on CUDA, first order) | on | off: replay the whole iteration as one CUDA graph
    pc_k: int = 4  # search=pcdarts: 1/K of each edge's channels go through its ops, the rest bypass them (PC-DARTS model_search.py MixedOp k=4, CIFAR)
    recompute: Recompute = Recompute.none  # none (keep every activation) | cell (keep cell inputs, recompute each cell in backward: same results, a fraction of the memory)
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0 = once per epoch)
    eval_every: int = 1  # full pass over the architecture split every N epochs (0 = last epoch only)
    deterministic: bool = False  # torch deterministic algorithms (bitwise-reproducible resume on CPU)


@dataclass
class TrainConfig:
    target: str = "cifar10"  # cifar10 | cifar100 | imagenet | chexpert
    net: NetStem = NetStem.auto  # cifar | imagenet stem; auto = cifar for CIFAR targets, imagenet otherwise
    layers: int = 20  # cells (reductions at layers//3 and 2*layers//3)
    init_channels: int = 36  # channels of the first cell
    epochs: int = 500  # paper 500 (reference 600)
    batch_size: int = 96  # GLOBAL batch, split evenly over the DDP ranks
    optimizer: Optimizer = Optimizer.sgd  # sgd (momentum, nesterov off) | adam (CheXpert transfer protocol)
    lr: float = 0.025  # learning rate at lr_ref_batch (or as is when lr_ref_batch is null)
    lr_ref_batch: Optional[int] = None  # linear scaling: lr_used = lr * global_batch / lr_ref_batch
    lr_min: float = 0.0  # end of the cosine schedule
    schedule: Schedule = Schedule.cosine  # cosine (to lr_min) | exp (x lr_gamma per epoch) | constant
    lr_gamma: float = 0.97  # per-epoch decay of the exp schedule
    warmup_epochs: int = 0  # linear warm-up epochs before the schedule (ImageNet reference: 5)
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0  # max global grad norm; 0 disables
    auxiliary_weight: float = 0.4  # weight of the auxiliary head's loss; 0 removes the head
    drop_path: float = 0.2  # final drop-path probability, ramped linearly from 0 over the epochs
    cutout: int = 16  # cutout length (px); 0 disables
    label_smoothing: float = 0.0
    resolution: int = 32  # input side (px): CIFAR keeps 32; ImageNet crop; CheXpert resize
    root: Optional[str] = None  # dataset root of the target (CIFAR falls back to data.root)
    max_images: Optional[int] = None  # use only the first N training images (smoke runs, benchmarks)
    max_eval_images: Optional[int] = None  # evaluate on the first N validation images only
    eval_every: int = 1  # evaluate every N epochs (the last epoch always)
    uncertainty: Uncertainty = Uncertainty.u_ones  # CheXpert -1 labels: u_ones | u_zeros | ignore (masked out of the loss)
    frontal_only: bool = False  # CheXpert: keep frontal views only
    pretrained: Optional[str] = None  # CheXpert: ImageNet retrain run dir / checkpoint of the same genotype
    run_id: Optional[str] = None  # run directory name under paths.runs/train; null = derived
    amp: TrainAmp = TrainAmp.auto  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 (with grad scaler) | off
    channels_last: Switch = Switch.auto  # auto (on CUDA) | on | off
    deterministic: bool = False  # torch deterministic algorithms
    cuda_graph: Switch = Switch.off  # off | auto (on CUDA with SGD, no fp16, no DDP) | on: replay the train step as a CUDA graph
    num_workers: int = 4  # DataLoader workers per rank (ImageNet, CheXpert)
    loader: Loader = Loader.torch  # ImageNet input pipeline: torch (ImageFolder + DataLoader) | ffcv (.beton, written once)
    ffcv_max_resolution: int = 256  # longest side stored in the ImageNet .beton (the FFCV ImageNet recipe)
    extra: dict[str, Any] = field(default_factory=dict)  # target-specific options


@dataclass
class LauncherConfig:
    name: LauncherName = LauncherName.local  # local | slurm
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time_min: int = 24 * 60
    nodes: int = 1
    gpus_per_node: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: Optional[int] = None
    array_parallelism: int = 64
    # tasks per job array at most; null = the cluster's MaxArraySize (scontrol show config). A stage
    # with more tasks is submitted as several arrays, and the next stage depends on all of them
    max_array_size: Optional[int] = None
    local_workers: int = 1  # launcher=local: tasks of an array run this many at a time (CPU cores split evenly)
    pack_seeds: Optional[str] = None  # seeds per search task (packed, seeds=[...]): N | auto (as many as the card's memory holds) | null = 5 with a GPU, 1 on CPU
    gpu_mem_gb: Optional[float] = None  # pack_seeds=auto or a pack check where no GPU is visible (a login node): GB of the search jobs' card; null = the visible GPU's free memory
    folder: str = "${paths.runs}/slurm"
    max_num_timeout: int = 30  # requeues after hitting the time limit (submitit's default 3; dinov2 30); preemption: unlimited
    signal_delay_s: int = 120  # USR2 this many seconds before the time limit, so the job checkpoints and requeues
    constraint: Optional[str] = None  # sbatch --constraint (node features, e.g. volta32gb)
    exclude: Optional[str] = None  # sbatch --exclude (nodes to avoid, e.g. node[01-03])
    comment: Optional[str] = None  # sbatch --comment
    mail_type: Optional[str] = None  # sbatch --mail-type (e.g. END,FAIL)
    mail_user: Optional[str] = None  # sbatch --mail-user
    extra: dict[str, Any] = field(default_factory=dict)  # passed to submitit as slurm_additional_parameters


@dataclass
class RuntimeConfig:
    """How CPU work runs in every process a stage starts, whatever the launcher (issue 22)."""

    # torch intra-op threads of searches and retrainings: the CPU kernels' reduction order follows
    # the thread count, so a fixed count gives the same bytes locally and on SLURM; 0 = follow the
    # launcher (the local launcher's core share, OMP_NUM_THREADS = the job's cpus_per_task on SLURM)
    threads: int = 1


@dataclass
class AnalysisConfig:
    """The paper's Fig. 1 analyses (``unrealnas analyze difficulty|distinguishability``)."""

    name: str = "default"  # output folder <paths.runs>/analysis/<kind>-<name>
    datasets: list[str] = field(default_factory=lambda: ["cifar10", "rlrd", "rlgd", "rlrn"])  # data group names
    num_classes: dict[str, int] = field(default_factory=dict)  # per dataset; absent = the data group's default
    arch_seed: int = 0  # architecture k (0-based) is sampled with seed arch_seed + k (difficulty's probe: k = 0)
    num_archs: int = 20  # distinguishability: architectures sampled (the same ones fitted on every dataset)
    target: str = "cifar100"  # distinguishability: train group of the real task that ranks the architectures
    epochs: int = 100  # epochs of every fit on a dataset (train=dataset); the curves' length
    probe_epoch: int = 50  # distinguishability: training accuracy read at this epoch (1-based)
    convergence_fraction: float = 0.95  # difficulty: converged from the first epoch that stays >= this x the best
    silhouette_samples: int = 2000  # images per dataset in the silhouette score (seeded sample)
    silhouette_dims: int = 50  # principal components of the pixels the silhouette is measured in
    dataset_overrides: list[str] = field(default_factory=list)  # extra Hydra overrides of the dataset fits
    target_overrides: list[str] = field(default_factory=list)  # extra Hydra overrides of the target trainings


@dataclass
class Config:
    preset: str = "paper"  # paper (the paper's sizes) | smoke (seconds to minutes on 2 CPU cores)
    seed: int = 0  # master seed; every random stream is derived from it
    seeds: Optional[list[int]] = None  # search only: these seeds packed into one process and network (unrealnas.search.engine)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    genotype: Optional[str] = None  # genotype.json or a search run directory (retrain, describe)
    format: OutputFormat = OutputFormat.text  # output format of inspection commands: text | json
    log_level: str = "INFO"  # DEBUG | INFO | WARNING | ERROR: timestamped progress lines on stderr
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    experiment: Optional[ExperimentConfig] = None  # set by +experiment=<name> (conf/experiment/); read by `pipeline`


def register_schemas() -> None:
    """Register the root schema in Hydra's ConfigStore (idempotent)."""
    ConfigStore.instance().store(name="config_schema", node=Config)
