"""Pretraining a from-scratch vision tower before the llava recipe trains through it.

LLaVA starts from a pretrained CLIP tower. A run with no tower weights (the demo) has none, and
the gradient that reaches a random tower through the projector and the language model teaches it
colour but hardly shape or count (docs/benchmarks.md, "The embedded demo"). So such a run first
trains the tower for `train.vision_pretrain_steps` steps as an image classifier: a linear head
over the mean of the features the projector will read, predicting each image record's answer
among its task's answers. The labels come from the evaluator metadata every image record of the
demo or ScienceQA carries (task, answer, choices), or, for records without it, from the question
text and the expected reply (`answer_label`). The head is thrown away afterwards.
"""
import math
import time

import torch
import torch.nn.functional as F

from minilvlm.config import ConfigError
from minilvlm.data.errors import DataError
from minilvlm.data.records import IMAGE_TAG
from minilvlm.data.scienceqa import LETTERS
from minilvlm.eval.score import expected_answer, normalize

# Decoded images kept in memory between steps, in bytes; past it they are decoded per batch.
CACHE_BYTES = 512 << 20


def answer_label(record):
    """(task, answer text) for a one-image record, else None. The task is the metadata's (the demo's
    question kinds) or else the question's text, so that images asked the same question learn to tell
    their answers apart (ScienceQA, a data set of your own); the answer is the metadata's, or the reply
    the scorer expects (minilvlm.eval.score). A multiple-choice letter becomes the option it names."""
    meta = record.meta
    if not record.has_image or len(record.images) != 1:
        return None
    question = record.turns[-2].text.replace(IMAGE_TAG, "").strip() if len(record.turns) >= 2 else ""
    task = meta.get("task") or question
    answer = meta.get("answer") if "answer" in meta else normalize(expected_answer(record))
    if not task or not isinstance(answer, str) or not answer:
        return None
    choices = meta.get("choices") or []
    if meta.get("question_type") == "multiple_choice":
        index = LETTERS.find(answer) if len(answer) == 1 else -1
        return (task, choices[index]) if 0 <= index < len(choices) else None
    return task, answer


class AnswerLabels:
    """The labelled image records of a split: per record its task's class range and class index."""

    def __init__(self, records, classes=None):
        pairs = [(r, answer_label(r)) for r in records]
        self.skipped = sum(label is None for _, label in pairs)
        pairs = [(r, label) for r, label in pairs if label is not None]
        if classes is None:   # every (task, answer) seen, grouped by task
            classes = sorted({label for _, label in pairs})
        self.classes = classes
        index = {label: i for i, label in enumerate(classes)}
        self.unknown = sum(label not in index for _, label in pairs)
        pairs = [(r, label) for r, label in pairs if label in index]
        self.paths = [r.images[0] for r, _ in pairs]
        self.targets = torch.tensor([index[label] for _, label in pairs], dtype=torch.long)
        self.tasks = [label[0] for _, label in pairs]
        # Each task's answers only compete with each other: a mask of its classes per record.
        task_of_class = [task for task, _ in classes]
        self.allowed = torch.tensor([[t == task for t in task_of_class] for task in self.tasks], dtype=torch.bool) \
            if pairs else torch.zeros(0, len(classes), dtype=torch.bool)

    def __len__(self):
        return len(self.paths)


class _Images:
    """uint8 images of the labelled records (decoded by the run's ImageConfig), kept once decoded
    while they fit in CACHE_BYTES."""

    def __init__(self, paths, images):
        self.paths, self.images = paths, images
        self.keep = len(paths) * 3 * images.size * images.size <= CACHE_BYTES
        self.cache = {}
        self.bad = set()

    def batch(self, indices):
        """(images [n, 3, S, S], the indices that decoded)."""
        images, good = [], []
        for i in indices:
            if i in self.bad:
                continue
            image = self.cache.get(i)
            if image is None:
                try:
                    image = self.images.load(self.paths[i])
                except DataError:
                    self.bad.add(i)
                    continue
                if self.keep:
                    self.cache[i] = image
            images.append(image)
            good.append(i)
        if not images:
            return None, []
        return torch.stack(images), good


def _logits(model, head, images, allowed):
    """The head over the mean of the features the projector will read (LLaVA.tower_features), on
    the head's device."""
    device = head.weight.device
    features = model.tower_features(images.to(device, non_blocking=True))
    return head(features.mean(1)).masked_fill(~allowed.to(device), float("-inf"))


def _accuracy(model, head, labels, images, batch=256):
    """{task: accuracy} on the labelled records."""
    right, seen = {}, {}
    with torch.no_grad():
        for start in range(0, len(labels), batch):
            pics, good = images.batch(range(start, min(start + batch, len(labels))))
            if not good:
                continue
            predicted = _logits(model, head, pics, labels.allowed[good]).argmax(1)
            for i, p in zip(good, predicted.tolist()):
                task = labels.tasks[i]
                seen[task] = seen.get(task, 0) + 1
                right[task] = right.get(task, 0) + int(p == int(labels.targets[i]))
    return {task: right[task] / seen[task] for task in sorted(seen)}


def pretrain_vision(model, train_records, val_records, cfg, image_config, stream):
    """Train model.vision (a llava model's tower) as an answer classifier, in place. Returns the
    summary: steps, labelled and skipped record counts, the final loss and the val accuracy per task;
    None (with a note) when no training record has an image."""
    t = cfg.train
    steps, batch = t.vision_pretrain_steps, t.vision_pretrain_batch
    labels = AnswerLabels(train_records)
    if not any(r.has_image for r in train_records):   # text-only data: nothing to pretrain the tower on
        print(f"vision pretraining skipped: none of the {len(train_records)} training records has an image",
              file=stream)
        return None
    if len(labels) == 0:
        raise ConfigError(f"train.vision_pretrain_steps = {steps}: none of the {len(train_records)} training records "
                          "is an image question with task/answer metadata to pretrain the tower on; set "
                          "train.vision_pretrain_steps = 0 or give the tower weights (model.vision_weights)")
    images = _Images(labels.paths, image_config)
    generator = torch.Generator().manual_seed(t.seed)
    # skip_init: the head's init draws from its own generator, not the global RNG the run continues with
    head = torch.nn.utils.skip_init(torch.nn.Linear, model.config.vision.dim, len(labels.classes))
    bound = model.config.vision.dim ** -0.5
    with torch.no_grad():   # torch's own Linear init: a 0.02-normal head starves the tower of gradient (shape 79% vs 91%)
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.uniform_(-bound, bound, generator=generator)
    device = model.vision.patch_weight.device
    head = head.to(device)
    targets = labels.targets.to(device)
    params = list(model.vision.parameters()) + list(head.parameters())
    lr = cfg.optim.vision_lr if cfg.optim.vision_lr is not None else cfg.optim.lr
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    print(f"pretraining the vision tower: {steps} steps of {batch} on {len(labels)} labelled images "
          f"({len(labels.classes)} answers over {len(set(labels.tasks))} tasks; {labels.skipped} records "
          f"without an image answer skipped)", file=stream)
    started, last_loss = time.perf_counter(), torch.tensor(float("nan"))
    was_training = model.vision.training
    model.vision.train()
    for step in range(1, steps + 1):
        picks = torch.randint(0, len(labels), (batch,), generator=generator).tolist()
        pics, good = images.batch(picks)
        if not good:
            continue
        loss = F.cross_entropy(_logits(model, head, pics, labels.allowed[good]), targets[good])
        for group in optimizer.param_groups:   # cosine to zero: the tower ends settled, not mid-stride
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / steps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip if cfg.optim.clip > 0 else float("inf"))
        optimizer.step()
        last_loss = loss.detach()   # read back only when printed: no wait on the device per step
        if step % max(steps // 5, 1) == 0 or step == steps:
            print(f"  vision pretraining step {step}/{steps}: loss {last_loss.item():.4f} "
                  f"({time.perf_counter() - started:.0f} s)", file=stream)
    model.vision.train(was_training)
    val = AnswerLabels(val_records, labels.classes)
    val_images = _Images(val.paths, image_config)
    accuracy = _accuracy(model, head, val, val_images) if len(val) else {}
    bad = len(images.bad) + len(val_images.bad)
    summary = {"steps": steps, "labelled": len(labels), "skipped": labels.skipped, "unreadable_images": bad,
               "loss": float(last_loss), "val_accuracy": accuracy, "time_s": time.perf_counter() - started}
    if accuracy:
        print("  tower probe on val: " + " ".join(f"{k} {100 * v:.0f}%" for k, v in accuracy.items()), file=stream)
    if bad:
        print(f"  {bad} unreadable image(s) skipped", file=stream)
    return summary
