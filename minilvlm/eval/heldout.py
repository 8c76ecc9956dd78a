"""The held-out loss: the teacher-forced negative log-likelihood of the replies of held-out records,
per reply token, computed with the model's own training loss (`batch_loss`) on batches built as in
training, so that it reads on the same scale as the training loss. Records that cannot be encoded
or whose images cannot be read are counted in `skips` and left out."""
import torch

from minilvlm.data.batching import Collator
from minilvlm.data.dataset import SFTDataset
from minilvlm.data.errors import SkipCounter
from minilvlm.data.loader import to_device
from minilvlm.data.templates import chat_template
from minilvlm.device import autocast


@torch.no_grad()
def heldout_loss_sums(model, records, tokenizer, template, images, max_len, *, batch=32, precision="fp32",
                      skips=None):
    """(summed reply-token NLL, number of reply tokens) of `records`; divide for the mean (sums, so
    that ranks holding parts of the records can add them up)."""
    skips = skips if skips is not None else SkipCounter()
    dataset = SFTDataset(records, tokenizer, chat_template(template), model.config.image_tokens, max_len,
                         image=images, on_error="skip", skips=skips)
    collate = Collator(tokenizer.pad_id, images.size)
    device = model.lm.embed.weight.device
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for samples in dataset.readable_batches(batch):
        collated = collate(samples)
        with autocast(device, precision):
            loss, n, _ = model.batch_loss(to_device(collated, device))
        total += loss.detach().double()
        count += collated["n_targets"]
    model.train(was_training)
    return float(total), count
