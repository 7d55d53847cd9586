"""Knowledge distillation from frozen teachers (grafting+, SPEC §4).

loss = CE(student, y) + τ²·CE(p̄_teacher(τ), p_student(τ)), with p(τ) = softmax(logits / τ) and p̄ the
average of the teachers' probabilities (one soft target, not one loss per teacher).
"""
import os

import torch
import torch.nn.functional as F

from .checkpoint import check_compatible, load_checkpoint, state_dict_of
from .errors import UserError
from .models import create_model


def soft_cross_entropy(target_probs, logits):
    """Mean over the batch of CE(p, q) = −Σ_k p_k log q_k, with q = softmax(logits)."""
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def mean_teacher_probs(teacher_logits, temperature):
    """p̄(τ) = (1/M) Σ_m softmax(z_m / τ) over the M teachers' logits."""
    return torch.stack([F.softmax(z.float() / temperature, dim=1) for z in teacher_logits]).mean(dim=0)


def distillation_loss(student_logits, targets, teacher_logits, temperature=2.0):
    """(total, ce, kd): ce = CE(student, y), kd = τ²·CE(p̄_teacher(τ), p_student(τ)), total = ce + kd."""
    student_logits = student_logits.float()
    ce = F.cross_entropy(student_logits, targets)
    soft = mean_teacher_probs(teacher_logits, temperature)
    kd = temperature ** 2 * soft_cross_entropy(soft, student_logits / temperature)
    return ce + kd, ce, kd


class DistillationLoss:
    """A Trainer loss_fn: the teachers (frozen, eval mode) see the student's batch; the metrics line gets
    train_ce and train_kd, whose sum is train_loss."""

    def __init__(self, teachers, temperature=2.0):
        if not teachers:
            raise ValueError("distillation needs at least one teacher")
        if temperature <= 0:
            raise ValueError(f"the temperature must be positive, not {temperature}")
        self.teachers = list(teachers)
        self.temperature = temperature

    def __call__(self, logits, targets, inputs):
        with torch.no_grad():
            teacher_logits = [teacher(inputs) for teacher in self.teachers]
        total, ce, kd = distillation_loss(logits, targets, teacher_logits, self.temperature)
        return total, {"ce": ce, "kd": kd}


def freeze(model):
    """Eval mode and no gradients: a teacher's weights and BatchNorm statistics never change."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def load_teacher(arch, path, num_classes):
    """A frozen `arch` teacher for `num_classes` classes with the weights of checkpoint `path` (a best_<i>.t7
    or last_<i>.t7 of this project, or a bare state dict); returns (model, recorded test accuracy or None)."""
    if os.path.isdir(path):
        raise UserError(f"teacher checkpoint {path} is a directory; pass the checkpoint file, "
                        f"e.g. {os.path.join(path, 'best_1.t7')}")
    checkpoint = load_checkpoint(path, "teacher checkpoint")
    if isinstance(checkpoint, dict):
        recorded = {"arch": arch, "num_classes": num_classes}
        for key, wanted in recorded.items():
            if key in checkpoint and checkpoint[key] != wanted:
                raise UserError(f"teacher checkpoint {path} holds {key}={checkpoint[key]!r}, but the teacher "
                                f"is given as {key}={wanted!r}; fix --teacher_arch/--num_classes or the path")
    model = create_model(arch, num_classes)
    state = state_dict_of(checkpoint, f"teacher checkpoint {path}")
    check_compatible(state, model.state_dict(), f"teacher checkpoint {path} (given as {arch}, "
                                                 f"{num_classes} classes)")
    model.load_state_dict(state)
    acc = checkpoint.get("acc") if isinstance(checkpoint, dict) else None
    return freeze(model), acc


def load_teachers(archs, paths, num_classes):
    """[(model, acc)] for the (arch, path) pairs in order; unequal counts are a UserError."""
    archs, paths = list(archs or []), list(paths or [])
    if len(archs) != len(paths):
        raise UserError(f"--teacher_arch names {len(archs)} teacher(s) but --teacher_dir gives {len(paths)} "
                        f"checkpoint(s); give one checkpoint per teacher, in the same order")
    return [load_teacher(arch, path, num_classes) for arch, path in zip(archs, paths)]
