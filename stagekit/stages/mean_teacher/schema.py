"""Config sections of the semi-supervised annotation pipeline's phases.

A key missing here is an error, never silently ignored.
"""

from __future__ import annotations

from stagekit.config.schema import RUNTIME, TRAINING, Key, Schema

LABELLED_FRACTION = Key("float", 0.01, "fraction of the labelled cells (those with a label, validation cells "
                        "set aside) whose labels training uses, drawn per class, seeded; the rest count as unlabelled",
                        minimum=1e-9)

BACKED = Key("bool", False, "read counts from disk instead of loading them: each step reads its cells, the "
             "principal components come from passes over blocks of cells; the same run as in memory")

MEAN_TEACHER_DATA = {
    "layer": Key("str", "", "layer holding raw counts; empty means X"),
    "label_key": Key("str", "", "obs column of cell labels; a missing value marks an unlabelled cell (required)"),
    "positive_class": Key("str", "", "a binary task: this label against all others; empty for one class per label"),
    "labelled_fraction": LABELLED_FRACTION,
    "backed": BACKED,
}

CLASSIFIER_MODEL = {
    "input": Key("str", "pca", "what the layers read: pca (the principal components of the log-normalised genes, "
                 "fitted on every cell of the file, labelled or not), latent (the posterior mean of the "
                 "`pretrain --preset vae` encoder given with --latent-from, kept fixed) or genes (the log-normalised "
                 "genes; needed with --init-from)", choices=("pca", "latent", "genes")),
    "n_pcs": Key("int", 50, "principal components the layers read with input = pca", minimum=1),
    "n_hidden": Key("list[int]", [128], "width of each hidden layer"),
    "dropout": Key("float", 0.2, "dropout after each hidden layer", minimum=0),
    "norm": Key("str", "layer", "batch (BatchNorm) or layer (LayerNorm, as the VAE encoder: needed with "
                "--init-from)", choices=("batch", "layer")),
}

MEAN_TEACHER = {
    "input_noise": Key("float", 0.2, "std of Gaussian noise added to what the layers read (the scaled principal "
                       "components, or the log-normalised genes) for student and teacher (each its own draw): the "
                       "augmentation that makes consistency informative", minimum=0),
    "input_dropout": Key("float", 0.0, "fraction of input features (components or genes) zeroed at random for "
                         "student and teacher (each its own mask)", minimum=0),
    "ema_decay": Key("float", 0.999, "teacher = EMA of the student with this decay after the ramp-up", minimum=0),
    "ema_decay_rampup": Key("float", 0.99, "EMA decay during the consistency ramp-up", minimum=0),
    "ema_buffers": Key("str", "copy", "BatchNorm running statistics of the teacher: copied from the student, or "
                       "averaged like the weights", choices=("copy", "average")),
    "consistency": Key("str", "pseudo_label", "pseudo_label (the student's cross-entropy on the teacher's class "
                       "where the teacher is sure: pseudo_label_threshold), mse of class probabilities, or kl "
                       "(teacher || student)", choices=("pseudo_label", "mse", "kl")),
    "pseudo_label_threshold": Key("float", 0.9, "pseudo_label: the teacher's probability of its class from which a "
                                  "cell counts", minimum=0, maximum=1),
    "consistency_weight": Key("float", 1.0, "w_max: consistency weight after the ramp-up", minimum=0),
    "rampup_epochs": Key("int", 10, "epochs of the sigmoid ramp-up w(t) = w_max exp(-5 (1 - t/T)^2)", minimum=0),
    "supervised": Key("str", "cross_entropy", "supervised loss on labelled cells: cross_entropy (classes weighted "
                      "as focal_alpha says) or focal_dice", choices=("cross_entropy", "focal_dice")),
    "focal_gamma": Key("float", 2.0, "focal loss gamma", minimum=0),
    "focal_alpha": Key("float", 0.0, "binary: weight of the positive class in the supervised loss (negatives get "
                       "1 - alpha); 0 weighs classes by inverse frequency among the labelled cells, as multi-class "
                       "tasks always do", minimum=0, maximum=1),
    "focal_weight": Key("float", 0.7, "weight of the focal loss in focal_dice", minimum=0),
    "dice_weight": Key("float", 0.3, "weight of the soft Dice loss in focal_dice", minimum=0),
    "labelled_batch_size": Key("int", 64, "labelled cells in each step (drawn again when there are fewer), beside "
                               "training.batch_size cells of the whole training set", minimum=1),
}

COLLAPSE = {
    "min_fraction": Key("float", 0.25, "binary: stop when the predicted positive fraction falls below this times "
                        "the positive share of the labelled cells", minimum=0),
    "max_drift": Key("float", 0.25, "binary: stop when the mean predicted probability moves more than this in one "
                     "epoch", minimum=0),
    "max_share": Key("float", 0.95, "stop when one class (binary: the positive class) takes more than this share "
                     "of predictions", minimum=0),
    "every_steps": Key("int", 0, "also check every N optimizer steps; 0: at epoch ends only", minimum=0),
    "sample_size": Key("int", 10000, "validation and unlabelled cells the checks predict (a seeded sample)",
                       minimum=1),
}


PRETRAIN: Schema = {"data": MEAN_TEACHER_DATA, "model": CLASSIFIER_MODEL, "mean_teacher": MEAN_TEACHER,
                    "collapse": COLLAPSE, "training": TRAINING, "runtime": RUNTIME}
# stage 2 continues stage 1's model, data and validation cells: the labelled fraction and the training change
FINETUNE: Schema = {"data": {"labelled_fraction": LABELLED_FRACTION, "backed": BACKED}, "mean_teacher": MEAN_TEACHER,
                    "collapse": COLLAPSE, "training": {k: v for k, v in TRAINING.items() if k != "val_fraction"},
                    "runtime": RUNTIME}
