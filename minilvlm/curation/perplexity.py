"""Perplexity filtering ("choose the lowest-perplexity samples"): score every record with a
reference LM as the mean negative log-likelihood of its target (assistant) tokens, then keep the
lowest-scoring fraction, or every record under a threshold."""
import math

import torch
import torch.nn.functional as F

from minilvlm.data.batching import Collator
from minilvlm.data.dataset import SFTDataset
from minilvlm.data.errors import SkipCounter
from minilvlm.data.loader import to_device
from minilvlm.data.templates import chat_template
from minilvlm.device import autocast
from minilvlm.models.multimodal import attention_inputs


@torch.no_grad()
def score_records(loaded, records, batch=16, skips=None):
    """[mean target NLL, or None for a record that cannot be encoded or whose image cannot be read
    (counted in `skips` by reason)] in the order of `records`."""
    cfg, model, tokenizer = loaded.cfg, loaded.model, loaded.tokenizer
    skips = skips if skips is not None else SkipCounter()
    images = loaded.images
    dataset = SFTDataset(records, tokenizer, chat_template(cfg.data.template), model.config.image_tokens,
                         cfg.data.max_len, image=images, on_error="skip", skips=skips)
    position = {id(r): i for i, r in enumerate(records)}
    scores = [None] * len(records)
    collate = Collator(tokenizer.pad_id, images.size)
    for samples in dataset.readable_batches(batch):
        b = to_device(collate(samples), loaded.device)
        mask, segments = attention_inputs(b)
        with autocast(loaded.device, cfg.train.precision):
            logits = model(b["input_ids"], b["images"], mask, position_ids=b["position_ids"], segment_ids=segments)
        # A model may put positions of its own in front (the mma recipe's modality token): the last
        # T positions are the ones aligned with input_ids.
        logits = logits[:, -b["input_ids"].shape[1]:]
        targets = b["labels"][:, 1:]
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="none")
        counts = (targets != -100).sum(1)
        for row, sample in enumerate(samples):
            scores[position[id(dataset.records[sample.index])]] = float(nll[row].sum() / counts[row])
    return scores


def select(scores, keep=None, threshold=None):
    """(kept flags, cut): with `keep`, the round(keep x n) lowest scores (ties by order); with
    `threshold`, scores <= threshold. Unscored records (None) are never kept. The cut is the
    largest kept score (keep) or the threshold."""
    if (keep is None) == (threshold is None):
        raise ValueError("give exactly one of keep (a fraction) and threshold (a score)")
    scored = [(s, i) for i, s in enumerate(scores) if s is not None]
    flags = [False] * len(scores)
    if keep is not None:
        if not 0 < keep <= 1:
            raise ValueError(f"keep must be a fraction in (0, 1], got {keep}")
        chosen = sorted(scored)[:round(keep * len(scored))]
        for _, i in chosen:
            flags[i] = True
        return flags, (chosen[-1][0] if chosen else -math.inf)
    for s, i in scored:
        flags[i] = s <= threshold
    return flags, threshold


def _quantile(sorted_values, q):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def stats(scores, flags, cut):
    values = sorted(s for s in scores if s is not None)
    kept = [s for s, f in zip(scores, flags) if f]
    dropped = [s for s, f in zip(scores, flags) if s is not None and not f]
    mean = lambda v: sum(v) / len(v) if v else None   # noqa: E731
    return {"records": len(scores), "scored": len(values), "kept": len(kept), "dropped": len(dropped),
            "cut": cut, "mean": mean(values), "min": values[0] if values else None,
            "max": values[-1] if values else None, "median": _quantile(values, 0.5),
            "p10": _quantile(values, 0.1), "p90": _quantile(values, 0.9),
            "kept_mean": mean(kept), "dropped_mean": mean(dropped),
            "perplexity_of_mean_nll": math.exp(mean(values)) if values else None}
